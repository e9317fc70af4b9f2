"""The frozen teacher (distillation, DINOv2 §5 / DINOv3 §5.2): a trained model with its DINO / iBOT heads,
loaded from `teacher.checkpoint` (a dinokit training checkpoint or run folder: its teacher and the architecture
recorded beside it) and never changed. Its outputs are what an EMA teacher's would be: the targets of the same
loss terms.
"""

from __future__ import annotations

from .model_teacher import ModelTeacher


class FrozenTeacher(ModelTeacher):
    """Nothing happens at the end of a step (`ModelTeacher`'s defaults)."""

    @classmethod
    def build(cls, cfg, ctx) -> FrozenTeacher:
        """`cfg`: the `teacher` section; the model comes from `ctx.load_model(cfg.checkpoint)`."""
        return cls(ctx.load_model(cfg.checkpoint))
