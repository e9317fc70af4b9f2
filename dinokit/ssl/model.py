"""The network trained by SSL: a backbone with its DINO and iBOT heads, and its two forwards.

- `forward(batch)` (the student): global crops with the iBOT masks and local crops through the backbone; the
  DINO head on every CLS token in one pass; the iBOT head only on the masked patch tokens (`mask_indices`),
  never on the whole grid. With a shared head (DINOv2 default) the masked patches join the CLS tokens in that
  one pass. A distillation student (`mask_inputs=False`) sees its crops unmasked, as released, and the masks only
  choose the patches its iBOT head predicts; with a `projector` (feature distillation) the global crops' CLS
  and patches are also projected to the teacher's width.
- `teacher_forward(batch)`: the unmasked global crops; the DINO head on their CLS tokens, the iBOT head on the
  patch tokens at the student's masked positions. Called under `no_grad` by the teacher objects.

Outputs are dataclasses; crop-major batches are viewed as `[crops, B, …]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.collate import Batch


@dataclass
class StudentOutput:
    global_cls: torch.Tensor  # [G, B, D] final-normed, pre-head
    local_cls: torch.Tensor | None  # [L, B, D]
    global_cls_logits: torch.Tensor | None  # [G, B, K]
    local_cls_logits: torch.Tensor | None  # [L, B, K]
    patch_logits: torch.Tensor | None  # [M, K'] at the masked positions
    global_patches: torch.Tensor  # [G·B, h·w, D]
    grid: tuple[int, int] = (0, 0)  # (h, w) of the global crops' patches
    projected_cls: torch.Tensor | None = None  # [G, B, D_t] (feature distillation)
    projected_patches: torch.Tensor | None = None  # [G·B, h·w, D_t]


@dataclass
class TeacherOutput:
    cls: torch.Tensor  # [G, B, D]
    cls_logits: torch.Tensor | None  # [G, B, K]
    patch_logits: torch.Tensor | None  # [M, K']
    patches: torch.Tensor  # [G·B, h·w, D]


class SSLModel(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        dino_head: nn.Module | None,
        ibot_head: nn.Module | None = None,
        predict_cls: bool = True,
        predict_patches: bool = True,
        projector: nn.Module | None = None,
        mask_inputs: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.mask_inputs = mask_inputs
        self.dino_head = dino_head
        self.ibot_head = ibot_head  # None with predict_patches: the DINO head predicts the patches too
        self.predict_cls = predict_cls and dino_head is not None
        self.predict_patches = predict_patches and (ibot_head is not None or dino_head is not None)

    def _heads(self, cls: torch.Tensor, masked: torch.Tensor | None):
        """DINO head on `cls [N, D]`, iBOT head on `masked [M, D]` (one pass when the head is shared)."""
        cls_logits = patch_logits = None
        if masked is not None and self.ibot_head is None:  # shared head
            if self.predict_cls:
                out = self.dino_head(torch.cat([cls, masked]))  # [N + M, K]
                return out[: cls.shape[0]], out[cls.shape[0] :]
            return None, self.dino_head(masked)
        if self.predict_cls:
            cls_logits = self.dino_head(cls)
        if masked is not None:
            patch_logits = self.ibot_head(masked)
        return cls_logits, patch_logits

    def _masked_patches(self, patches: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        if not self.predict_patches or batch.masks.shape[1] == 0:
            return None
        return torch.index_select(patches.flatten(0, 1), 0, batch.mask_indices)  # [M, D]

    def forward(self, batch: Batch) -> StudentOutput:
        G, B = batch.n_global_crops, batch.batch_size
        masks = batch.masks if self.predict_patches and self.mask_inputs and batch.masks.shape[1] else None
        g = self.backbone.forward_features(batch.global_crops, masks=masks)
        n_local = batch.local_crops.shape[0] // B
        local_cls = None
        cls = g.cls  # [G·B, D]
        if n_local:
            local_cls = self.backbone.forward_features(batch.local_crops, local_crops=True).cls  # [L·B, D]
            cls = torch.cat([cls, local_cls])
        cls_logits, patch_logits = self._heads(cls, self._masked_patches(g.patches, batch))
        g_logits = l_logits = None
        if cls_logits is not None:
            g_logits = cls_logits[: G * B].unflatten(0, (G, B))
            l_logits = cls_logits[G * B :].unflatten(0, (n_local, B)) if n_local else None
        projected_cls = projected_patches = None
        if self.projector is not None:
            projected_cls = self.projector.cls(g.cls).unflatten(0, (G, B))  # [G, B, D_t]
            projected_patches = self.projector.patches(g.patches)  # [G·B, h·w, D_t]
        return StudentOutput(
            global_cls=g.cls.unflatten(0, (G, B)),
            local_cls=None if local_cls is None else local_cls.unflatten(0, (n_local, B)),
            global_cls_logits=g_logits,
            local_cls_logits=l_logits,
            patch_logits=patch_logits,
            global_patches=g.patches,
            grid=tuple(g.grid),
            projected_cls=projected_cls,
            projected_patches=projected_patches,
        )

    def teacher_forward(self, batch: Batch) -> TeacherOutput:
        G, B = batch.n_global_crops, batch.batch_size
        out = self.backbone.forward_features(batch.global_crops)
        cls_logits, patch_logits = self._heads(out.cls, self._masked_patches(out.patches, batch))
        return TeacherOutput(
            cls=out.cls.unflatten(0, (G, B)),
            cls_logits=None if cls_logits is None else cls_logits.unflatten(0, (G, B)),
            patch_logits=patch_logits,
            patches=out.patches,
        )
