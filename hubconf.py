"""torch.hub entry points under the official names, so code written for the official repositories builds dinokit's
models: `torch.hub.load("<dinokit checkout>", "dinov2_vits14", source="local")` (or `"<owner>/dinokit"` from GitHub).

- DINOv2 (`dinov2_vit{s,b,l,g}14`, `dinov2_vit{s,b,l,g}14_reg`): `pretrained=True` (the default) loads the released
  weights, downloaded on first use into torch's hub cache (`create_backbone(..., weights="official")`).
- DINOv3 (`dinov3_vits16` … `dinov3_vit7b16`, `dinov3_convnext_{tiny,small,base,large}`): the released files sit
  behind links signed for each user, so — as in the official hub — `weights=` takes the link or the downloaded
  file; without it a file already in the cache is used, or an error says how to get one. As in the official hub,
  `dinov3_vitl16` with a satellite (`sat493m`) file builds the satellite ViT-L (it has an extra norm).
- `pretrained=False`: random initialisation (`weights` is then ignored, as in the official hub). Other keyword
  arguments override config fields, e.g. `drop_path_rate=0.1`.

Each returns a dinokit `VisionTransformer` or `ConvNeXt`; `forward_features` answers the official dict's keys and
`get_intermediate_layers` has the official semantics.
"""

import os

from dinokit.models.factory import create_backbone as _create_backbone

dependencies = ["torch"]


def _entry(name: str, preset: str):
    def entry(*, pretrained: bool = True, weights: str | os.PathLike | dict | None = None, **overrides):
        if not pretrained:
            return _create_backbone(preset, **overrides)
        chosen = preset
        if preset == "dinov3_vitl16" and isinstance(weights, str | os.PathLike) and "sat493m" in os.fspath(weights):
            chosen = "dinov3_vitl16_sat"
        return _create_backbone(chosen, weights="official" if weights is None else weights, **overrides)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"dinokit's `{preset}` preset: released weights with pretrained=True (or the file or URL in weights=), "
        "random ones with pretrained=False; other keyword arguments override config fields."
    )
    return entry


dinov2_vits14 = _entry("dinov2_vits14", "dinov2_vits14")
dinov2_vitb14 = _entry("dinov2_vitb14", "dinov2_vitb14")
dinov2_vitl14 = _entry("dinov2_vitl14", "dinov2_vitl14")
dinov2_vitg14 = _entry("dinov2_vitg14", "dinov2_vitg14")
dinov2_vits14_reg = _entry("dinov2_vits14_reg", "dinov2_vits14_reg4")
dinov2_vitb14_reg = _entry("dinov2_vitb14_reg", "dinov2_vitb14_reg4")
dinov2_vitl14_reg = _entry("dinov2_vitl14_reg", "dinov2_vitl14_reg4")
dinov2_vitg14_reg = _entry("dinov2_vitg14_reg", "dinov2_vitg14_reg4")
dinov3_vits16 = _entry("dinov3_vits16", "dinov3_vits16")
dinov3_vits16plus = _entry("dinov3_vits16plus", "dinov3_vits16plus")
dinov3_vitb16 = _entry("dinov3_vitb16", "dinov3_vitb16")
dinov3_vitl16 = _entry("dinov3_vitl16", "dinov3_vitl16")
dinov3_vitl16plus = _entry("dinov3_vitl16plus", "dinov3_vitl16plus")
dinov3_vith16plus = _entry("dinov3_vith16plus", "dinov3_vith16plus")
dinov3_vit7b16 = _entry("dinov3_vit7b16", "dinov3_vit7b16")
dinov3_convnext_tiny = _entry("dinov3_convnext_tiny", "dinov3_convnext_tiny")
dinov3_convnext_small = _entry("dinov3_convnext_small", "dinov3_convnext_small")
dinov3_convnext_base = _entry("dinov3_convnext_base", "dinov3_convnext_base")
dinov3_convnext_large = _entry("dinov3_convnext_large", "dinov3_convnext_large")
