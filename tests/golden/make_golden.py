"""Regenerate the golden tensors: `python -m tests.golden.make_golden` (needs transformers).

For each family, a random-weight HF reference model (see tests/reference_hf.py) is converted to dinokit's
state dict; the file stores those weights, the inputs, and the reference model's outputs (not dinokit's), so
`test_golden.py` checks dinokit against the reference without network or transformers.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import dinokit
from tests import reference_hf

HERE = Path(__file__).parent
FAMILIES = {  # name → (reference builder, registers, input sizes)
    "dinov2_legacy": (lambda: reference_hf.dinov2(registers=False, seed=10), 0, [(224, 224), (126, 182)]),
    "dinov2_reg4": (lambda: reference_hf.dinov2(registers=True, seed=11), 4, [(224, 224), (126, 182)]),
    "dinov2_swiglu": (lambda: reference_hf.dinov2(registers=True, swiglu=True, seed=12), 4, [(224, 224), (126, 182)]),
    "dinov3_mlp": (lambda: reference_hf.dinov3(gated=False, seed=13), 4, [(224, 224), (256, 320)]),
    "dinov3_swiglu": (lambda: reference_hf.dinov3(gated=True, seed=14), 4, [(224, 224), (256, 320)]),
}


def golden_input(image: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → the normalised float input the outputs were computed on."""
    return (image.float() / 255 - 0.45) / 0.25


def main() -> None:
    for family, (build, n_registers, sizes) in FAMILIES.items():
        ref_model = build()
        with tempfile.TemporaryDirectory() as folder:  # via an HF folder, so the config (heads) comes along
            ref_model.save_pretrained(folder)
            model = dinokit.load_backbone(folder)
        tensors = {f"weights.{k}": v.contiguous() for k, v in model.state_dict().items()}
        for i, size in enumerate(sizes):
            image = torch.randint(0, 256, (1, 3, *size), generator=torch.Generator().manual_seed(100 + i))
            tensors[f"image.{i}"] = image.to(torch.uint8)  # stored as bytes to keep the files small
            x = golden_input(tensors[f"image.{i}"])
            for name, t in reference_hf.reference_outputs(ref_model, x, n_registers).items():
                tensors[f"output.{i}.{name}"] = t.contiguous()
        meta = {"config": json.dumps(model.config.to_dict()), "reference": type(ref_model).__name__}
        save_file(tensors, str(HERE / f"{family}.safetensors"), metadata=meta)
        print(family, sum(t.numel() for t in tensors.values()) * 4 / 1e6, "MB")


if __name__ == "__main__":
    main()
