"""The distillation meta-architecture (DINOv2 §5, DINOv3 §5.2 "multi-student distillation"): one frozen teacher,
several students, one teacher pass per batch.

Per batch: the teacher runs once (`teachers/distill.py`); then each student takes its own view of the batch —
the patches its iBOT head predicts, drawn on its own patch grid — runs on the unmasked crops as released, reads
the teacher's output resampled to its grid, and evaluates its own loss terms (their targets balanced over its own
process group). The students' weighted losses are summed: their parameters are disjoint, so one backward pass
gives each student exactly the gradients of its own loss. A student whose loss is not finite is left out of that
step (no gradients: AdamW skips its parameters; on several ranks zero gradients, which DDP needs; the count is
`<name>/skipped_steps`) so one diverging student never stops or spoils the others. Each student keeps an EMA
(`ema_<name>` among the teachers), its final model.

Several processes (DINOv3's scheme): each student trains on its own sub-group of ranks. Every rank runs the
teacher on its share of the global batch; the crops and the teacher's outputs are gathered from all ranks, and
each rank of a student's group takes an equal slice of the whole global batch — every student sees every image
of the step while the teacher's work is split over all ranks.

Deviation: the predicted patches are random positions (int(G·B·p) global crops, each with a fraction of its
patches drawn uniformly in `masking.ratio_min_max`) rather than BEiT blocks: the student sees no mask, so the
shape of the selection does not change what it sees, only which targets enter the iBOT loss.

Metrics: per student `<name>/<term>`, `<name>/<term>_weighted`, `<name>/loss`; `teacher_forwards` (teacher passes
this step); `loss` (the sum).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from ..data.collate import Batch, mask_targets
from .meta_arch import weighted_terms
from .schedules import Schedules
from .teachers.distill import DistillTeacher, SharedTeacherOutput


class DistillMetaArch(nn.Module):
    def __init__(
        self,
        teacher: DistillTeacher,
        students: dict[str, nn.Module],
        emas: dict[str, nn.Module],
        terms: dict[str, dict[str, nn.Module]],
        schedules: Schedules,
        masking,
        placement=None,
        seeds: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.student = nn.ModuleDict(students)  # this rank's students: name → SSLModel
        self.teachers = nn.ModuleDict({"main": teacher, **{f"ema_{n}": e for n, e in emas.items()}})
        self.terms = nn.ModuleDict({n: nn.ModuleDict(t) for n, t in terms.items()})
        self.schedules = schedules
        self.masking = masking  # sample_probability, ratio_min_max: the patches each student's iBOT head predicts
        self.placement = placement  # multi-process: where this rank's slice of the global batch comes from
        self.student_forward = nn.ModuleDict(students)  # replaced by data-parallel wrappers (`data_parallel_units`)
        self.skipped = dict.fromkeys(students, 0)
        self.seeds = seeds or dict.fromkeys(students, 0)  # per student: its predicted patches (see below)

    @property
    def teacher(self) -> DistillTeacher:
        return self.teachers["main"]

    @property
    def partitioned(self) -> bool:
        """Whether the students live on different ranks (each rank holds only its own)."""
        return self.placement is not None

    def outputs(self) -> dict[str, nn.Module]:
        """What the run exports and evaluates: each student's EMA backbone under `students/<name>/backbone`."""
        return {f"students/{n}/backbone": self.teachers[f"ema_{n}"].backbone for n in self.student}

    def data_parallel_units(self):
        """(name, module, process group) of each student to wrap for data parallelism."""
        return [(n, m, self.placement.group if self.placement else None) for n, m in self.student.items()]

    def set_student_forward(self, name: str, module: nn.Module) -> None:
        self.student_forward[name] = module

    def forward(self, batch: Batch, values: dict[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        before = self.teacher.forwards
        shared = self.teacher(batch)
        if self.placement is not None:
            batch, shared = self.placement.regroup(batch, shared)
        device = batch.global_crops.device
        loss = torch.zeros((), device=device)
        passes = torch.tensor(float(self.teacher.forwards - before), device=device)
        metrics: dict[str, torch.Tensor] = {"teacher_forwards": passes}
        for name, model in self.student_forward.items():
            value, student_metrics = self._student_loss(name, model, batch, shared, values)
            ok = torch.isfinite(value.detach()).float()
            if self.placement is not None:  # the ranks of a student's group skip together
                dist.all_reduce(ok, op=dist.ReduceOp.MIN, group=self.placement.group)
            if bool(ok):
                loss = loss + value
            else:
                self.skipped[name] += 1
                if self.placement is not None:  # DDP waits for every parameter's gradient: give it zeros
                    loss = loss + 0.0 * sum(p.sum() for p in self.student[name].parameters())
            metrics.update({f"{name}/{k}": v for k, v in student_metrics.items()})
            metrics[f"{name}/skipped_steps"] = torch.tensor(float(self.skipped[name]), device=device)
        metrics["loss"] = loss.detach()
        return loss, metrics

    def _student_loss(self, name: str, model: nn.Module, batch: Batch, shared: SharedTeacherOutput, values):
        backbone = self.student[name].backbone
        view = self._predicted_patches(batch, backbone.grid_size(*batch.global_crops.shape[-2:]), self.seeds[name])
        out = model(view)
        predicted = view.mask_indices if self.student[name].predict_patches else view.mask_indices[:0]
        teacher_out = self.teacher.for_student(shared, out.grid, predicted)
        return weighted_terms(self.terms[name], out, teacher_out, view, values)

    def _predicted_patches(self, batch: Batch, grid: tuple[int, int], seed: int) -> Batch:
        """The batch with masks on the student's `grid`: the patches its iBOT head predicts (module docstring).

        Drawn from a generator seeded by the student, the batch's position in the stream and the rank's place in
        the student's group: the same on resuming and wherever the student is placed, and never taken from the
        global generators (which the students' own randomness uses)."""
        n_crops, n = batch.global_crops.shape[0], grid[0] * grid[1]
        rank = self.placement.index_in_group if self.placement is not None else 0
        g = torch.Generator().manual_seed(seed * 1_000_003 + batch.index * 1009 + rank)
        masks = torch.zeros(n_crops, n, dtype=torch.bool)
        lo, hi = self.masking.ratio_min_max
        chosen = torch.randperm(n_crops, generator=g)[: int(n_crops * self.masking.sample_probability)]
        for crop in chosen.tolist():
            count = max(1, int(n * (lo + (hi - lo) * float(torch.rand((), generator=g)))))
            masks[crop, torch.randperm(n, generator=g)[:count]] = True
        indices, weights = mask_targets(masks)
        device = batch.global_crops.device
        return dataclasses.replace(batch, masks=masks.to(device), mask_indices=indices.to(device),
                                   masks_weight=weights.to(device))  # fmt: skip


@dataclasses.dataclass
class Placement:
    """Where this rank's students and data are: its student group (a process group of `group_size` ranks, this
    rank `index_in_group` in it) and the world of `world_size` ranks whose batches are gathered."""

    group: object
    group_size: int
    index_in_group: int
    world_size: int

    def _slice(self, x: torch.Tensor, n_crops: int) -> torch.Tensor:
        """Crop-major `x [n_crops·B, …]` of every rank, gathered; this rank's share `[n_crops·B', …]` of them."""
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        per = self.world_size // self.group_size
        mine = parts[self.index_in_group * per : (self.index_in_group + 1) * per]
        return torch.cat([p.unflatten(0, (n_crops, -1)) for p in mine], dim=1).flatten(0, 1)

    def regroup(self, batch: Batch, shared: SharedTeacherOutput) -> tuple[Batch, SharedTeacherOutput]:
        G = batch.n_global_crops
        L = batch.local_crops.shape[0] // batch.batch_size
        local = self._slice(batch.local_crops, L) if L else batch.local_crops
        new_batch = dataclasses.replace(batch, global_crops=self._slice(batch.global_crops, G), local_crops=local,
                                        extra_crops={})  # fmt: skip
        logits = shared.cls_logits
        new_shared = SharedTeacherOutput(
            self._slice(shared.cls.flatten(0, 1), G).unflatten(0, (G, -1)),
            self._slice(shared.patch_map, G),
            None if logits is None else self._slice(logits.flatten(0, 1), G).unflatten(0, (G, -1)),
        )
        return new_batch, new_shared
