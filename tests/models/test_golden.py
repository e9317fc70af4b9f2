"""Golden-tensor parity for the five backbone families, with no network and no transformers.

The files in tests/golden/ hold random weights, inputs and the outputs of the reference implementation
(regenerate with `python -m tests.golden.make_golden`). Outputs must match to 1e-4 (float32 round-off).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dinokit.models import VisionTransformer, ViTConfig
from tests.golden.make_golden import golden_input

GOLDEN = Path(__file__).parents[1] / "golden"
FAMILIES = sorted(p.stem for p in GOLDEN.glob("*.safetensors"))
TOL = 1e-4


def _load(family: str):
    with safe_open(str(GOLDEN / f"{family}.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        config = ViTConfig.from_dict(json.loads(f.metadata()["config"]))
    model = VisionTransformer(config).eval()
    model.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("weights.")}, strict=True)
    return model, tensors


def test_all_families_present():
    assert FAMILIES == ["dinov2_legacy", "dinov2_reg4", "dinov2_swiglu", "dinov3_mlp", "dinov3_swiglu"]


@pytest.mark.parametrize("family", FAMILIES)
def test_golden(family):
    model, t = _load(family)
    R = model.num_registers
    n_inputs = len([k for k in t if k.startswith("image.")])
    assert n_inputs == 2
    for i in range(n_inputs):
        x = golden_input(t[f"image.{i}"])
        with torch.inference_mode():
            out = model.forward_features(x)
            blocks = model.get_intermediate_layers(x, n=model.n_blocks, return_class_token=True)
        ref = {k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"output.{i}.")}.__getitem__
        assert (out.cls - ref("cls")).abs().max() <= TOL
        assert (out.patches - ref("patches")).abs().max() <= TOL
        assert (out.prenorm - ref("prenorm")).abs().max() <= TOL
        if R:
            assert (out.registers - ref("registers")).abs().max() <= TOL
        for j, (patches, cls) in enumerate(blocks):
            assert (patches - ref(f"block{j}")[:, 1 + R :]).abs().max() <= TOL
            assert (cls - ref(f"block{j}")[:, 0]).abs().max() <= TOL
