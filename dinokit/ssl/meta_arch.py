"""The SSL meta-architecture: a batch in, a dict of weighted losses and metrics out (DINOv2 §3; the shape of
DINOv3's `forward_backward`: teacher output → student output → loss terms).

The objective is a list of terms, each `(name, module, weight-or-schedule)`; a term left out of the config is
simply absent (no `do_ibot` flags). A term is a module `term(student_out, teacher_out, batch, values) →
(loss, metrics)` that owns its teacher-target module (centering or Sinkhorn-Knopp); its loss is multiplied by
`values["weight/<name>"]` from the schedules and summed into `loss`. Adding DINOv3's Gram anchoring is one
more term (owning a `GramTeacher`), not a change here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.collate import Batch
from ..models.heads import DINOHead
from .losses import DinoTerm, IbotTerm, KoleoTerm
from .model import SSLModel
from .schedules import Schedules
from .targets import build_target
from .teachers import EMATeacher


class SSLMetaArch(nn.Module):
    def __init__(self, student: SSLModel, teacher: EMATeacher, terms: dict[str, nn.Module], schedules: Schedules):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.terms = nn.ModuleDict(terms)
        self.schedules = schedules
        self.student_forward: nn.Module = student  # the DDP wrapper of the student in multi-process runs

    @property
    def teachers(self) -> list[nn.Module]:
        """Every object whose `on_step_end(step)` the loop calls."""
        return [self.teacher] + [t.teacher for t in self.terms.values() if hasattr(t, "teacher")]

    def forward(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.schedules(step)
        teacher_out = self.teacher(batch)
        student_out = self.student_forward(batch)
        loss = torch.zeros((), device=batch.global_crops.device)
        metrics: dict[str, torch.Tensor] = {}
        for name, term in self.terms.items():
            with torch.autocast(batch.global_crops.device.type, enabled=False):  # losses in float32, as released
                value, term_metrics = term(student_out, teacher_out, batch, values)
            loss = loss + values[f"weight/{name}"] * value
            metrics[name] = value.detach()
            metrics.update(term_metrics)
        with torch.no_grad():
            metrics["student_cls_std"] = feature_std(student_out.global_cls.flatten(0, 1))
            metrics["teacher_cls_std"] = feature_std(teacher_out.cls.flatten(0, 1))
        metrics["loss"] = loss.detach()
        return loss, metrics


def feature_std(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels of the batch standard deviation of L2-normalised features `[N, D]` (→ 0 at collapse)."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    return x.std(dim=0).mean() if x.shape[0] > 1 else x.new_zeros(())


# -------------------------------------------------------------------------------------------------- building
def build_terms(losses, teacher_cfg, dino_k: int, ibot_k: int) -> dict[str, nn.Module]:
    """The loss-term modules of the enabled terms (`losses` and `teacher` config sections)."""

    def target(dim: int) -> nn.Module:
        return build_target(teacher_cfg.target, dim, teacher_cfg.center_momentum, teacher_cfg.sinkhorn_iterations)

    table = {
        "dino": lambda c: DinoTerm(target(dino_k), c.student_temp, c.global_ignore_diagonal),
        "ibot": lambda c: IbotTerm(target(ibot_k), c.student_temp),
        "koleo": lambda c: KoleoTerm(),
    }
    return {name: table[name](c) for name, c in losses.enabled().items()}


def build_ssl_model(backbone: nn.Module, model_cfg, losses) -> SSLModel:
    """Backbone + heads for the enabled terms (`model` and `losses` config sections)."""

    def head(c):
        return DINOHead(backbone.embed_dim, c.n_prototypes, c.hidden_dim, c.bottleneck_dim, c.nlayers, c.last_layer)

    need_patches = losses.ibot is not None
    separate = need_patches and model_cfg.ibot_head is not None
    dino_head = head(model_cfg.dino_head) if losses.dino is not None or (need_patches and not separate) else None
    ibot_head = head(model_cfg.ibot_head) if separate else None
    return SSLModel(backbone, dino_head, ibot_head, predict_cls=losses.dino is not None, predict_patches=need_patches)
