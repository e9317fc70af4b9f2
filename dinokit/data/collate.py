"""Collate multi-crop samples into one SSL batch, with the iBOT masks (made here, in the data workers).

Layout (as released): crops are crop-major — `global_crops [G·B, 3, S, S]` holds global crop 0 of every image,
then global crop 1 of every image; likewise `local_crops [L·B, 3, s, s]`. `masks [G·B, h·w]` marks the
student's masked patches; `mask_indices [M]` indexes the masked patches in `masks.flatten()` and
`masks_weight [M]` is 1 / (number of masked patches of that patch's crop), the iBOT loss weights.
`extra_crops` holds further crop sets by name, crop-major like the global crops, e.g. "gram": the global crops'
regions without colour distortion at the Gram teacher's size. Crop sizes may change from batch to batch (the
high-resolution stage); the masks are always over the grid of this batch's global crops.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields

import torch

from .masking import BlockMaskGenerator


@dataclass
class Batch:
    global_crops: torch.Tensor  # [G·B, 3, S, S]
    local_crops: torch.Tensor  # [L·B, 3, s, s] (L may be 0)
    masks: torch.Tensor  # [G·B, h·w] bool
    mask_indices: torch.Tensor  # [M] int64
    masks_weight: torch.Tensor  # [M] float32
    n_global_crops: int = 2
    index: int = -1  # position of this batch in its rank's stream (for resuming)
    skipped: list[str] = field(default_factory=list)  # unreadable files replaced in this batch
    extra_crops: dict[str, torch.Tensor] = field(default_factory=dict)  # name → [G·B, 3, S', S']

    @property
    def batch_size(self) -> int:
        return self.global_crops.shape[0] // self.n_global_crops

    def _map(self, fn) -> Batch:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["extra_crops"] = {k: fn(v) for k, v in self.extra_crops.items()}
        return Batch(**{k: fn(v) if torch.is_tensor(v) else v for k, v in values.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return self._map(lambda t: t.pin_memory())


def make_masks(
    n_crops: int,
    generator: BlockMaskGenerator | None,
    rng: random.Random,
    sample_probability: float = 0.5,
    ratio_min_max: tuple[float, float] = (0.1, 0.5),
    exact_upper: bool = False,
) -> torch.Tensor:
    """Masks `[n_crops, h·w]`: `int(n_crops · p)` crops masked with stratified ratios, the rest empty, shuffled.

    Crop i of the masked ones gets `int(N · U(r_i, r_{i+1}))` patches over `r = linspace(min, max, n + 1)`
    (DINOv2), or exactly `int(N · r_{i+1})` (`exact_upper`, DINOv3)."""
    if generator is None:
        return torch.zeros(n_crops, 0, dtype=torch.bool)
    N = generator.num_patches
    n_masked = int(n_crops * sample_probability)
    bins = torch.linspace(ratio_min_max[0], ratio_min_max[1], n_masked + 1).tolist()
    masks = []
    for i in range(n_masked):
        ratio = bins[i + 1] if exact_upper else rng.uniform(bins[i], bins[i + 1])
        masks.append(generator(int(N * ratio), rng).flatten())
    masks += [torch.zeros(N, dtype=torch.bool)] * (n_crops - n_masked)
    rng.shuffle(masks)
    return torch.stack(masks)  # [n_crops, N]


def collate_views(
    views: list[tuple[list[torch.Tensor], list[torch.Tensor]]], masks: torch.Tensor, index: int = -1, skipped=()
) -> Batch:
    """Stack `(globals, locals)` per image into a crop-major `Batch` with the given masks `[G·B, N]`."""
    n_global, n_local = len(views[0][0]), len(views[0][1])
    global_crops = torch.stack([v[0][i] for i in range(n_global) for v in views])  # [G·B, 3, S, S]
    if n_local:
        local_crops = torch.stack([v[1][i] for i in range(n_local) for v in views])  # [L·B, 3, s, s]
    else:
        local_crops = global_crops.new_zeros(0, *global_crops.shape[1:])
    return collate_crops(global_crops, local_crops, masks, n_global, index, skipped)


def collate_crops(
    global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor, n_global: int = 2, index=-1, skipped=(),
    extra_crops: dict[str, torch.Tensor] | None = None,
) -> Batch:
    """A `Batch` from crop-major crops `[G·B, 3, S, S]`, `[L·B, 3, s, s]` and the masks `[G·B, N]`."""
    if masks.shape[1] == 0:
        masks = torch.zeros(global_crops.shape[0], 0, dtype=torch.bool)
    mask_indices, masks_weight = mask_targets(masks)
    return Batch(global_crops, local_crops, masks, mask_indices, masks_weight, n_global, index, list(skipped),
                 dict(extra_crops or {}))  # fmt: skip


def mask_targets(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For masks `[G·B, N]`: the indices `[M]` of the masked patches in `masks.flatten()` and their iBOT weights
    `[M]`, 1 / (number of masked patches of the patch's crop)."""
    mask_indices = masks.flatten().nonzero().flatten()  # [M]
    per_crop = 1.0 / masks.sum(-1).clamp(min=1.0)  # [G·B]
    return mask_indices, per_crop.unsqueeze(-1).expand_as(masks)[masks]
