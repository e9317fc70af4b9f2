"""The SSL meta-architecture: a batch in, the weighted loss and metrics out (DINOv2 §3; the shape of DINOv3's
`forward_backward`: teacher output → student output → loss terms).

The objective is a table of terms (`losses/__init__.py`), each a module `term(student_out, teacher_out, batch,
values) → (value, metrics)`; a term left out of the config is simply absent (no `do_ibot` flags). The value
is multiplied by `values["weight/<name>"]` from the schedules (evaluated once per step by the loop) and summed
into the loss; both the value (`<name>`) and the weighted value (`<name>_weighted`) are logged. Teachers are
objects (`teachers/`): the main one is called here, others (the Gram teacher) are consulted by the terms
that need them; the loop calls `on_step_end` on all of `teachers`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.collate import Batch
from ..models.heads import DINOHead, Projector
from .losses import TERMS, BuildContext
from .model import SSLModel
from .schedules import Schedules


class SSLMetaArch(nn.Module):
    def __init__(self, student: SSLModel, teachers: dict[str, nn.Module], terms: dict[str, nn.Module],
                 schedules: Schedules) -> None:  # fmt: skip
        super().__init__()
        self.student = student
        self.teachers = nn.ModuleDict(teachers)  # "main" first: its `on_step_end` runs before the others'
        self.terms = nn.ModuleDict(terms)
        self.schedules = schedules
        self.student_forward: nn.Module = student  # the data-parallel wrapper of the student in multi-process runs

    partitioned = False  # every rank holds the same student (see `distillation.py` for the other case)

    @property
    def teacher(self) -> nn.Module:
        """The main teacher, whose outputs every term receives."""
        return self.teachers["main"]

    def outputs(self) -> dict[str, nn.Module]:
        """What the run exports (`<path>` and `<path>_official.pth` in the run folder) and evaluates."""
        return {"teacher_backbone": self.teacher.backbone}

    def data_parallel_units(self):
        """(name, module, process group) to wrap for data parallelism: the student, over all ranks."""
        return [("student", self.student, None)]

    def set_student_forward(self, name: str, module: nn.Module) -> None:
        self.student_forward = module

    def forward(self, batch: Batch, values: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_out = self.teacher(batch)
        student_out = self.student_forward(batch)
        loss, metrics = weighted_terms(self.terms, student_out, teacher_out, batch, values)
        with torch.no_grad():
            metrics["teacher_cls_std"] = feature_std(teacher_out.cls.flatten(0, 1))
        return loss, metrics


def weighted_terms(terms, student_out, teacher_out, batch: Batch, values: dict[str, float]):
    """Σ weight · term over the loss terms (in float32, as released), with each term's value, weighted value and
    metrics, the student's CLS spread and the total (`loss`) as metrics."""
    loss = torch.zeros((), device=batch.global_crops.device)
    metrics: dict[str, torch.Tensor] = {}
    for name, term in terms.items():
        with torch.autocast(batch.global_crops.device.type, enabled=False):
            value, term_metrics = term(student_out, teacher_out, batch, values)
        weighted = values[f"weight/{name}"] * value
        loss = loss + weighted
        metrics[name] = value.detach()
        metrics[f"{name}_weighted"] = weighted.detach()
        metrics.update(term_metrics)
    with torch.no_grad():
        metrics["student_cls_std"] = feature_std(student_out.global_cls.flatten(0, 1))
    metrics["loss"] = loss.detach()
    return loss, metrics


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the batch standard deviation of L2-normalised features `[N, D]` (→ 0 at collapse)."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return x.std(dim=0).mean() if x.shape[0] > 1 else x.new_zeros(())


# -------------------------------------------------------------------------------------------------- building
def build_terms(terms: dict, ctx: BuildContext) -> dict[str, nn.Module]:
    """The loss-term modules of the enabled terms (name → config section), by the term table."""
    return {name: TERMS[name].build(cfg, ctx) for name, cfg in terms.items()}


def build_ssl_model(backbone: nn.Module, model_cfg, terms: dict, teacher_dim: int | None = None,
                    mask_inputs: bool = True) -> SSLModel:  # fmt: skip
    """Backbone + the heads the enabled terms read (`model` config section; `terms`: name → section). A term that
    reads "projection" (feature distillation) adds a `Projector` to `teacher_dim`; `mask_inputs=False`: a
    distillation student, which sees its crops unmasked."""

    def head(c):
        return DINOHead(backbone.embed_dim, c.n_prototypes, c.hidden_dim, c.bottleneck_dim, c.nlayers, c.last_layer)

    reads = {head for name in terms for head in TERMS[name].heads}
    need_cls, need_patches = "dino" in reads, "ibot" in reads
    separate = need_patches and model_cfg.ibot_head is not None
    dino_head = head(model_cfg.dino_head) if need_cls or (need_patches and not separate) else None
    ibot_head = head(model_cfg.ibot_head) if separate else None
    projector = Projector(backbone.embed_dim, teacher_dim or backbone.embed_dim) if "projection" in reads else None
    return SSLModel(backbone, dino_head, ibot_head, predict_cls=need_cls, predict_patches=need_patches,
                    projector=projector, mask_inputs=mask_inputs)  # fmt: skip
