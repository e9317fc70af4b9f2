"""Regenerate `tests/golden/dinov3_convnext.pt`: `python -m tests.golden.make_golden_convnext` (needs transformers).

The reference is HF transformers' `DINOv3ConvNextModel` with random weights (every part mattering: γ ≈ 0.5, norms
around 1) at a small width (dims 16…128, depths 1/1/2/1), converted to dinokit through an HF folder. The file
stores those weights (dinokit names), uint8 inputs at a square, a non-square and an odd size, and the reference's
outputs (not dinokit's), so `test_convnext.py` checks dinokit against HF without network or transformers. It is a
`.pt` (tensors and strings only, read with `weights_only=True`) so that the ViT families' `*.safetensors` glob
in `test_golden.py` does not pick it up.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from tests.golden.make_golden import golden_input

HERE = Path(__file__).parent
GOLDEN = HERE / "dinov3_convnext.pt"
SIZES = [(224, 224), (160, 224), (97, 131)]  # square, non-square, odd (the stride-32 floors differ per side)
DEPTHS, DIMS = [1, 1, 2, 1], [16, 32, 64, 128]


def reference_model(seed: int = 20):
    """A random-weight `DINOv3ConvNextModel` in eval mode."""
    from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

    model = DINOv3ConvNextModel(DINOv3ConvNextConfig(depths=DEPTHS, hidden_sizes=DIMS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if name.endswith("gamma") else 0.05))
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    return model.eval()


@torch.inference_mode()
def reference_outputs(hf_model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF's normed pooled token and patches, the pre-norm [pooled, patches] and each stage's raw map."""
    out = hf_model(pixel_values=x, output_hidden_states=True)
    last = out.hidden_states[-1]  # [B, D, h, w], the last stage before the final norm
    pooled = hf_model.pool(last).flatten(2).transpose(1, 2)  # [B, 1, D]
    ref = {
        "cls": out.pooler_output,
        "patches": out.last_hidden_state[:, 1:],
        "prenorm": torch.cat([pooled, last.flatten(2).transpose(1, 2)], dim=1),
    }
    for i, fmap in enumerate(out.hidden_states[1:]):  # hidden_states[0] is the input
        ref[f"stage{i}"] = fmap
    return ref


def main() -> None:
    import dinokit

    ref_model = reference_model()
    with tempfile.TemporaryDirectory() as folder:  # via an HF folder, so the config comes along
        ref_model.save_pretrained(folder)
        model = dinokit.load_backbone(folder)
    tensors: dict[str, object] = {f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for i, size in enumerate(SIZES):
        image = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(200 + i))
        tensors[f"image.{i}"] = image.to(torch.uint8)  # stored as bytes to keep the file small
        for name, t in reference_outputs(ref_model, golden_input(image.to(torch.uint8))).items():
            tensors[f"output.{i}.{name}"] = t.contiguous()
    tensors["config"] = json.dumps(model.config.replace(extra={}).to_dict())
    tensors["reference"] = type(ref_model).__name__
    torch.save(tensors, GOLDEN)
    print(GOLDEN, GOLDEN.stat().st_size / 1e6, "MB")


if __name__ == "__main__":
    main()
