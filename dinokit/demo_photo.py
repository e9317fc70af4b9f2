"""The photo demo: one image through a backbone → a features file and the PCA picture of its patches.

Without an image it uses a sample photograph shipped with the package (`dinokit/samples/`: astronaut, coffee,
chelsea; sources and licences in samples/SOURCES.md), so it runs offline and needs no extra package.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.images import decode_image
from .data.transforms import EvalTransform
from .models import backbone_from_spec
from .tools.viz import pca_rgb, save_side_by_side

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea")


def sample_photo_path(name: str = "astronaut") -> Path:
    """The file of a shipped sample photo, for code and commands that take paths (`dinokit viz pca …`)."""
    if name not in SAMPLE_PHOTOS:
        raise ValueError(f"no sample photo {name!r}; there are {', '.join(SAMPLE_PHOTOS)}")
    return SAMPLES / f"{name}.png"


def sample_photo(name: str = "astronaut") -> tuple[torch.Tensor, str]:
    """A shipped sample photograph as an RGB uint8 tensor `[3, H, W]` (the astronaut: public domain, NASA),
    and a description of it."""
    return decode_image(sample_photo_path(name)), f"sample photo {name} (samples/SOURCES.md)"


def generated_scene(size: int = 448, seed: int = 0) -> torch.Tensor:
    """A deterministic test picture: a sky gradient, ground, and a few coloured discs and boxes."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([0.4 + 0.3 * yy, 0.6 + 0.2 * yy, 0.9 - 0.2 * yy])  # [3, H, W]
    img[:, yy > 0.65] = torch.tensor([0.35, 0.55, 0.2]).view(3, 1)
    for _ in range(5):
        cy, cx, r = torch.rand(3, generator=g).tolist()
        colour = torch.rand(3, 1, generator=g)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.05 + 0.1 * r) ** 2
        img[:, inside] = colour
    noise = 0.03 * torch.randn(img.shape, generator=g)
    return ((img + noise).clamp(0, 1) * 255).round().to(torch.uint8)


@torch.inference_mode()
def run_photo_demo(out: Path, backbone: str, image_path: str | None, size: int, seed: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    print(f"[1/3] backbone {backbone}")
    model = backbone_from_spec(backbone, seed=seed)
    if image_path:
        image, source = decode_image(image_path), image_path
    else:
        image, source = sample_photo()
    transform = EvalTransform.for_model(model, size=size)
    x = transform(image)[None]  # [1, 3, H, W]
    print(f"[2/3] image: {source}, {tuple(image.shape[-2:])} px → model input {tuple(x.shape[-2:])}")
    feats = model.forward_features(x)
    h, w = feats.grid
    patches = feats.patches[0].reshape(h, w, -1)  # [h, w, D]
    from safetensors.torch import save_file

    save_file(
        {"cls": feats.cls[0].contiguous(), "registers": feats.registers[0].contiguous(), "patches": patches},
        str(out / "features.safetensors"),
        metadata={"backbone": backbone, "image": source, "preprocessing": json.dumps(transform.describe())},
    )
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (transform.mean, transform.std))
    display = ((x[0] * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)  # what the model saw
    save_side_by_side(display, pca_rgb(patches), out / "pca.png")
    summary = {"backbone": backbone, "image": source, "grid": [h, w], "dim": int(patches.shape[-1])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[3/3] wrote {out / 'features.safetensors'} (cls, registers, patches {h}×{w}×{patches.shape[-1]})")
    print(f"      and {out / 'pca.png'} (input | first three principal components of the patch features)")
    return summary
