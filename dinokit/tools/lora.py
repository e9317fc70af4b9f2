"""LoRA (Hu et al., 2021) on the attention projections of a frozen backbone: a small own module.

The backbone's attention computes q, k and v with one fused `qkv` Linear `[3D, D]`. LoRA on "q and v" therefore
adapts two slices of that one matrix: for each target t ∈ {q, k, v}, `W_t ← W_t + (α/r)·B_t A_t` with
`A_t [r, D]` (Kaiming-uniform) and `B_t [D, r]` (zeros, so an adapter starts as the identity). `LoRAQKV`
wraps the original Linear (keeping a key-bias mask if it has one) and adds the low-rank term; `merge` folds
it into the weight (no run-time cost), `unmerge` takes it out again. `remove_lora` merges and puts the plain
Linear back, so `save_backbone` and the ONNX export see an ordinary backbone.

Adapters are saved alone (`save_adapter`: a small safetensors file with rank, α, targets and blocks in its
metadata) and loaded onto any backbone of the same architecture (`load_adapter`).

ViTs only: a ConvNeXt has no attention, hence no q / k / v to adapt, and `add_lora` / `load_adapter` refuse it
with a `UserError` (adapting its pointwise Linears would be another method with other targets, not offered here).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import UserError

SLICES = {"q": 0, "k": 1, "v": 2}
TARGETS = {"qv": ("q", "v"), "qkv": ("q", "k", "v"), "q": ("q",), "v": ("v",)}


class LoRAQKV(nn.Module):
    """A fused qkv Linear plus low-rank updates of some of its q / k / v thirds."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0):
        super().__init__()
        self.base, self.rank, self.alpha, self.targets = base, rank, alpha, tuple(targets)
        self.scale = alpha / rank
        self.dim = base.out_features // 3
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        dd = {"device": base.weight.device, "dtype": base.weight.dtype}
        for t in self.targets:
            a = torch.empty(rank, base.in_features, **dd)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as nn.Linear; B = 0 makes the update start at zero
            self.lora_A[t] = nn.Parameter(a)
            self.lora_B[t] = nn.Parameter(torch.zeros(self.dim, rank, **dd))
        self.dropout = nn.Dropout(dropout)
        self.merged = False

    def delta_weight(self, t: str) -> torch.Tensor:
        return self.scale * self.lora_B[t] @ self.lora_A[t]  # [D, D_in]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # [..., 3D]
        if self.merged:
            return y
        xd = self.dropout(x)
        parts = list(y.split(self.dim, dim=-1))  # q, k, v: [..., D] each
        for t in self.targets:
            parts[SLICES[t]] = parts[SLICES[t]] + self.scale * (xd @ self.lora_A[t].T) @ self.lora_B[t].T
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            for t in self.targets:
                rows = slice(SLICES[t] * self.dim, (SLICES[t] + 1) * self.dim)
                self.base.weight[rows] += self.delta_weight(t).to(self.base.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            for t in self.targets:
                rows = slice(SLICES[t] * self.dim, (SLICES[t] + 1) * self.dim)
                self.base.weight[rows] -= self.delta_weight(t).to(self.base.weight.dtype)
            self.merged = False


def require_attention(model: nn.Module) -> None:
    """LoRA adapts attention projections: refuse, in one clear message, a backbone without attention."""
    if getattr(getattr(model, "config", None), "kind", "vit") != "vit":
        raise UserError(
            "LoRA adapters attach to the attention projections (q, k, v) of a vision transformer; this backbone is "
            "a ConvNeXt, which has no attention. Train a head on its frozen features instead (`dinokit head train` "
            "without --lora)."
        )


def _attention_blocks(model: nn.Module, blocks: Sequence[int] | None):
    indices = range(len(model.blocks)) if blocks is None else blocks
    for i in indices:
        if not 0 <= i < len(model.blocks):
            raise UserError(f"LoRA block index {i} is outside [0, {len(model.blocks)})")
        yield i, model.blocks[i].attn


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    targets: str = "qv",
    blocks: Sequence[int] | None = None,
    dropout: float = 0.0,
    freeze: bool = True,
) -> nn.Module:
    """Attach LoRA adapters of rank `rank` (scale α/r, α defaults to r) to the attention of `blocks` (default
    all); `targets` "qv" | "qkv" (or "q", "v"). With `freeze`, every other parameter stops requiring gradients.
    Modifies and returns `model`."""
    if targets not in TARGETS:
        raise UserError(f"LoRA targets must be one of {sorted(TARGETS)}, got {targets!r}")
    if rank < 1:
        raise UserError(f"LoRA rank must be at least 1, got {rank}")
    require_attention(model)
    if freeze:
        model.requires_grad_(False)
    for _, attn in _attention_blocks(model, blocks):
        if isinstance(attn.qkv, LoRAQKV):
            raise UserError("this model already has LoRA adapters; remove_lora first")
        attn.qkv = LoRAQKV(attn.qkv, rank, float(alpha or rank), TARGETS[targets], dropout)
    return model


def lora_modules(model: nn.Module) -> dict[int, LoRAQKV]:
    """The adapters by block index (none for a backbone without attention, which cannot hold any)."""
    qkv = {i: getattr(getattr(block, "attn", None), "qkv", None) for i, block in enumerate(model.blocks)}
    return {i: m for i, m in qkv.items() if isinstance(m, LoRAQKV)}


def merge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.merge()


def unmerge_lora(model: nn.Module) -> None:
    for m in lora_modules(model).values():
        m.unmerge()


def remove_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Put the plain qkv Linears back, with the adapters merged into them (or dropped, `merge=False`)."""
    for i, m in lora_modules(model).items():
        m.merge() if merge else m.unmerge()
        model.blocks[i].attn.qkv = m.base
    return model


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ files
def save_adapter(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the adapters alone (unmerged values) as safetensors, with their configuration in the metadata."""
    from safetensors.torch import save_file

    modules = lora_modules(model)
    if not modules:
        raise UserError("the model has no LoRA adapters to save")
    first = next(iter(modules.values()))
    tensors = {}
    for i, m in modules.items():
        for t in m.targets:
            tensors[f"blocks.{i}.{t}.A"] = m.lora_A[t].detach().float().cpu().contiguous()
            tensors[f"blocks.{i}.{t}.B"] = m.lora_B[t].detach().float().cpu().contiguous()
    meta = {"rank": first.rank, "alpha": first.alpha, "targets": "".join(first.targets), "blocks": sorted(modules)}
    metadata = {"format": "dinokit-lora", "config": json.dumps(meta)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_adapter(model: nn.Module, path: str | os.PathLike, freeze: bool = True) -> nn.Module:
    """Attach the adapters saved in `path` to `model` (same architecture) and load their values."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("config", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path}: not a dinokit LoRA adapter ({e})") from None
    if not meta:
        raise UserError(f"{path}: not a dinokit LoRA adapter (no configuration in its metadata)")
    require_attention(model)
    if not lora_modules(model):
        add_lora(model, meta["rank"], meta["alpha"], meta["targets"], meta["blocks"], freeze=freeze)
    for i, m in lora_modules(model).items():
        if m.merged:
            raise UserError("the model's adapters are merged; unmerge_lora(model) before loading others")
        for t in m.targets:
            a, b = tensors.get(f"blocks.{i}.{t}.A"), tensors.get(f"blocks.{i}.{t}.B")
            if a is None or b is None:
                raise UserError(f"{path}: no adapter for block {i}, {t} (saved for other blocks or targets)")
            if a.shape != m.lora_A[t].shape or b.shape != m.lora_B[t].shape:
                raise UserError(f"{path}: adapter shapes do not fit this backbone (block {i}, {t})")
            with torch.no_grad():
                m.lora_A[t].copy_(a)
                m.lora_B[t].copy_(b)
    return model
