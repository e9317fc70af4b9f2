"""AdamW with the parameter groups of the released recipes (DINOv2 `param_groups.py`; DINOv3 the same).

Per parameter: layer-wise LR decay `lwd^(L + 1 − id)` with id 0 for the patch embedding, CLS / mask /
position tokens (and, as in DINOv3, the register tokens — DINOv2 gave its registers id L + 1), id i + 1 for
block i and L + 1 for the rest of the backbone; the heads use ×1. The patch embedding's LR is further ×0.2.
No weight decay on biases, norms and LayerScale gammas. The heads' last layers are flagged so the schedule can
freeze them (LR 0) for the first epoch. Groups with equal multipliers are fused, and the optimiser uses the
fused / foreach kernels.

Gradient clipping is per sub-module (backbone, each head), max norm 3.0, as released. With an FSDP-sharded
student the gradients are DTensors: torch's norm is then a DTensor too, reduced over the ranks and returned as
a plain tensor (the global norm, the same on every rank).

`weights_finite` checks the parameters after an update: a finite gradient times a huge learning rate can still
overflow them, and a step that did is no good step.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torch.distributed.tensor import DTensor


def param_groups(
    backbone: nn.Module, heads: dict[str, nn.Module], layerwise_decay: float = 0.9, patch_embed_lr_mult: float = 0.2
) -> list[dict]:
    """Fused groups over the student's backbone (layer ids from its `layer_id`) and its named heads."""
    fused: dict[tuple, dict] = defaultdict(lambda: {"params": []})
    last_id = backbone.num_layers - 1
    for module_name, module in {"backbone": backbone, **heads}.items():
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            lr_mult = layerwise_decay ** (last_id - backbone.layer_id(name)) if module is backbone else 1.0
            if "patch_embed" in name:
                lr_mult *= patch_embed_lr_mult
            wd_mult = 0.0 if name.endswith("bias") or "norm" in name or "gamma" in name else 1.0
            last = "last_layer" in name
            group = fused[(module_name, lr_mult, wd_mult, last)]
            group.update(module=module_name, lr_multiplier=lr_mult, wd_multiplier=wd_mult, is_last_layer=last)
            group["params"].append(p)
    return list(fused.values())


def build_optimizer(groups: list[dict], betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over the groups; LR and weight decay are set every step by `apply_schedules`."""
    for g in groups:
        g.setdefault("lr", 0.0)
        g.setdefault("weight_decay", 0.0)
    try:
        return torch.optim.AdamW(groups, betas=betas, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device / dtype
        return torch.optim.AdamW(groups, betas=betas, foreach=True)


def apply_schedules(optimizer: torch.optim.Optimizer, values: dict[str, float]) -> None:
    for g in optimizer.param_groups:
        g["lr"] = (values["last_layer_lr"] if g["is_last_layer"] else values["lr"]) * g["lr_multiplier"]
        g["weight_decay"] = values["wd"] * g["wd_multiplier"]


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> dict[str, torch.Tensor]:
    """Clip each sub-module's gradients to `max_norm` (None: only measure); return their norms before clipping."""
    per_module: dict[str, list[torch.Tensor]] = defaultdict(list)
    for g in optimizer.param_groups:
        per_module[g["module"]] += [p for p in g["params"] if p.grad is not None]
    norms = {}
    for name, params in per_module.items():
        if max_norm is None:
            norms[name] = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        else:
            norms[name] = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if isinstance(norms[name], DTensor):  # the shards' partial norms, combined over the ranks
            norms[name] = norms[name].full_tensor()
    return norms


def weights_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Whether every parameter this rank holds (its shards, with FSDP) is finite: a boolean tensor, no sync."""
    params = [p.to_local() if isinstance(p, DTensor) else p for g in optimizer.param_groups for p in g["params"]]
    largest = torch.nn.utils.get_total_norm([p.detach() for p in params if p.numel()], float("inf"), foreach=True)
    return torch.isfinite(largest)  # the largest magnitude: NaN or inf when any entry is
