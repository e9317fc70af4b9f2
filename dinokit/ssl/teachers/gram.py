"""The Gram teacher (DINOv3 §4.2–4.3): a frozen copy of an earlier state of the EMA teacher's backbone, whose
patch-to-patch similarities (Gram matrix) the Gram-anchoring loss keeps the student close to.

Schedule (`gram` section): a copy of the main teacher's backbone is taken when `first_update` optimiser steps
are done (0: before the first step, i.e. the teacher the run starts from — in a stage started with
`init.run`, the earlier run's EMA teacher), then every `update_every` steps (0: never again), at most
`max_updates` copies in all, counting the first, as released. Or it starts from `ckpt`, anything
`load_backbone` reads — a released backbone file too, where the released code needs a full training
checkpoint. The number of copies taken and the weights are part of the run's checkpoints, so a resumed run
continues the same schedule.

High resolution: with `teacher_crop_size` the Gram teacher sees the student's global-crop regions, without
colour distortion, at that size (`Batch.extra_crops["gram"]`, made by the data pipeline); its patch map is
resized to the student's grid (`resize`, bicubic without antialias as released). Without it, it sees the
global crops themselves.

Deviation: the released code takes its first copy at the first multiple of `update_frequency` at or after
`it_first_update` and counts iterations from the start of pretraining; here copies are counted from
`first_update` and steps from the start of this run (the released configurations coincide).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("dinokit.train")


@dataclass
class GramConfig:
    """`gram`: the Gram teacher (the Gram loss itself is the term `losses.gram`)."""

    first_update: int | None = 0  # steps done when the first copy is taken (null: never; then `ckpt` is needed)
    update_every: int = 0  # steps between later copies (0: the first copy stays)
    max_updates: int | None = None  # copies at most, the first included (null: no limit)
    ckpt: str | None = None  # initial weights: anything `load_backbone` reads (else: the first copy)
    teacher_crop_size: int | None = None  # its crops' size (the global crops' regions, no colour distortion)
    resize: Literal["bicubic", "bilinear"] = "bicubic"  # of its patch map to the student's grid
    antialias: bool = False

    def problems(self) -> list[str]:
        out = []
        if self.first_update is None and self.ckpt is None:
            out.append("gram needs a ckpt or a first_update (the step at which the EMA teacher is copied)")
        if (self.first_update or 0) < 0 or self.update_every < 0 or (self.max_updates or 0) < 0:
            out.append("gram.first_update, update_every and max_updates must be >= 0")
        if self.teacher_crop_size is not None and self.teacher_crop_size < 1:
            out.append(f"gram.teacher_crop_size must be >= 1, got {self.teacher_crop_size}")
        return out


class GramTeacher(nn.Module):
    def __init__(self, source, cfg: GramConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = copy.deepcopy(source.backbone).requires_grad_(False).eval()
        self._source = [source]  # a plain list: the main teacher is not a sub-module of this one
        self.register_buffer("copies", torch.zeros((), dtype=torch.long))  # copies taken from the source
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))  # weights set (copied or loaded)

    @classmethod
    def build(cls, cfg: GramConfig, ctx) -> GramTeacher:
        teacher = cls(ctx.teachers["main"], cfg)
        if cfg.ckpt is not None:
            loaded = ctx.load_backbone(cfg.ckpt)
            teacher.model.load_state_dict(loaded.state_dict())
            teacher.ready.fill_(True)
        return teacher

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def train(self, mode: bool = True) -> GramTeacher:
        return super().train(False)

    # ------------------------------------------------------------------------------------------ schedule
    def due(self, done: int) -> bool:
        """Whether a copy is taken when `done` optimiser steps are done."""
        c = self.cfg
        if c.first_update is None or done < c.first_update:
            return False
        if c.max_updates is not None and int(self.copies) >= c.max_updates:
            return False
        since = done - c.first_update
        return since == 0 or (c.update_every > 0 and since % c.update_every == 0)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the source teacher's backbone (its current EMA weights) into this one."""
        torch._foreach_copy_(list(self.model.parameters()), list(self._source[0].backbone.parameters()))
        self.copies += 1
        self.ready.fill_(True)
        log.info("Gram teacher: copy %d of the EMA teacher taken", int(self.copies))

    def on_train_start(self, step: int) -> None:
        if step == 0 and self.due(0):  # a resumed run restored its copies with its checkpoint
            self.refresh()

    def on_step_end(self, step: int) -> None:
        if self.due(step + 1):
            self.refresh()

    # ------------------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, batch) -> torch.Tensor:
        """Final-normed patch tokens of the Gram crops on the student's global-crop grid: `[G·B, h·w, D]`."""
        crops = batch.extra_crops.get("gram", batch.global_crops)
        out = self.model.forward_features(crops)
        p = self.model.patch_size
        grid = (batch.global_crops.shape[-2] // p, batch.global_crops.shape[-1] // p)  # the student's
        if tuple(out.grid) == grid:
            return out.patches
        patch_map = out.patch_map().float()  # [G·B, D, H', W']
        resized = F.interpolate(patch_map, size=grid, mode=self.cfg.resize, align_corners=False,
                                antialias=self.cfg.antialias)  # fmt: skip
        return resized.flatten(2).transpose(1, 2).to(out.patches.dtype)  # [G·B, h·w, D]
