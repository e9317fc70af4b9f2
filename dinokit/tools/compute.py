"""Where, in what precision and how many at a time the frozen-feature tools run the backbone.

Every tool verb (`extract`, `viz`, `prototypes`, `head`) takes the same three settings:
- `device`: a torch device name; None means CUDA when available, else the CPU;
- `dtype`: "fp32", or "bf16" / "fp16" autocast (the weights stay fp32, results come back as float32);
- `batch_size`: images per backbone forward. Images of different sizes cannot share a tensor, so a batch is
  split by shape, as `extract` does: a folder of mixed sizes costs one forward per size present in a batch,
  and nothing is resized beyond the tool's own preprocessing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import torch

from ..errors import UserError
from .extract import DTYPES, _forward, features_of_image


def place(model: torch.nn.Module, device: str | torch.device | None, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Move `model` to `device` (default: CUDA when available) and resolve the dtype name `fp32|bf16|fp16`."""
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    return device, DTYPES[dtype]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision in `dtype` on `device` (no-op for float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), read lazily from any iterable."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def same_shape_groups(tensors: Sequence[torch.Tensor]) -> list[list[int]]:
    """Indices of `tensors` grouped by shape, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


def image_features(
    model, inputs: Sequence[torch.Tensor], device: torch.device, dtype: torch.dtype, batch_size: int = 8,
    tile: int | None = None, overlap: int = 0,
) -> list[dict[str, torch.Tensor]]:  # fmt: skip
    """Features of preprocessed images `[3, H, W]` (sides multiples of the patch size; see `extract.Preprocess`)
    in input order: `cls [D]`, `registers [R, D]`, `patches [h, w, D]`, float32 on the CPU — the tokens
    `extract` stores. Images of one shape go through the backbone (already on `device`) `batch_size` at a time;
    with `tile`, one image at a time with its tiles batched."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in inputs]
    for group in same_shape_groups(inputs):
        for part in chunks(group, 1 if tile else batch_size):
            x = torch.stack([inputs[i] for i in part]).to(device)  # [b, 3, H, W]
            if tile is None:
                feats = _forward(model, x, (), dtype)
            else:
                one = features_of_image(model, x[0], tile, overlap, (), batch_size, dtype)
                feats = {k: v[None] for k, v in one.items()}
            for j, i in enumerate(part):
                out[i] = {k: v[j].cpu() for k, v in feats.items()}
    return out
