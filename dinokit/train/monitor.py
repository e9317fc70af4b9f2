"""Training health: non-finite steps are skipped, and too many in a row abort the run with a diagnostic;
collapse is reported when the teacher targets or the CLS features lose their diversity.

- A step whose loss or gradient norm is NaN / inf (on any rank) changes nothing: no optimiser step, no teacher
  update. After `max_bad_steps` consecutive such steps `TrainingDiverged` is raised with the offending values
  and what usually helps.
- A step whose update made a weight NaN / inf (a finite gradient times a huge learning rate) cannot be undone
  without a second copy of the weights: the run stops at once, before anything is saved (the checkpoint writer
  refuses non-finite weights as well). Both messages name the last checkpoint (`last_checkpoint`, kept up to
  date by the loop), which therefore holds finite weights.
- Collapse warnings: the entropy of the batch-average DINO target below `min_target_entropy` nats (few
  prototypes in use) or the batch standard deviation of the L2-normalised teacher or student CLS below
  `min_feature_std` (every image maps to the same feature). At most one warning per kind every 100 steps, and
  none during the LR warm-up: with LayerScale initialised at 1e-5 a fresh ViT maps every image to almost the
  same CLS token, which is not a collapse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError


class TrainingDiverged(UserError):
    """Too many consecutive non-finite steps."""


class HealthMonitor:
    def __init__(
        self, max_bad_steps: int = 5, min_target_entropy: float = 0.5, min_feature_std: float = 1e-3, check_after=0
    ) -> None:
        self.max_bad_steps = max_bad_steps
        self.check_after = check_after  # no collapse warnings before (features of a fresh ViT hardly vary)
        self.min_target_entropy = min_target_entropy
        self.min_feature_std = min_feature_std
        self.bad_in_a_row = 0
        self.skipped_steps = 0
        self.last_checkpoint: Path | None = None  # this run's newest checkpoint (written or resumed from)
        self._last_warning: dict[str, int] = {}

    def state_dict(self) -> dict:
        return {"bad_in_a_row": self.bad_in_a_row, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.bad_in_a_row, self.skipped_steps = state["bad_in_a_row"], state["skipped_steps"]

    def step_is_bad(
        self, bad: bool, step: int, values: Callable[[], dict[str, float]], weights_broken: bool = False
    ) -> bool:
        """Record whether step `step` was non-finite (`bad`, decided over all ranks); raise after too many, or at
        once when its update broke the weights. `values()` gives the step's losses and settings for the
        diagnostic."""
        if not bad:
            self.bad_in_a_row = 0
            return False
        self.bad_in_a_row += 1
        self.skipped_steps += 1
        shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(values().items()))
        if weights_broken:
            raise TrainingDiverged(
                f"the update of step {step} made the student's weights non-finite ({shown}); the run stops here "
                f"and saves nothing. {self._where_to_resume()} Usual cause: a learning rate far too high (lower "
                "optim.base_lr or lengthen optim.warmup_steps)."
            )
        if self.bad_in_a_row >= self.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_a_row} consecutive steps with a non-finite loss or gradient (last: step {step}; "
                f"{shown}). Each was skipped; the run stops here. {self._where_to_resume()} Usual causes: a "
                "learning rate too high for the batch size (lower optim.base_lr or lengthen optim.warmup_steps), "
                "fp16/bf16 overflow (try train.precision=fp32), or corrupt input data."
            )
        return True

    def _where_to_resume(self) -> str:
        if self.last_checkpoint is None:
            return "No checkpoint was written before it."
        return (f"The last checkpoint, {self.last_checkpoint}, holds finite weights: the same command, with the "
                "setting below changed, resumes from it.")

    def collapse_warnings(self, step: int, metrics: dict[str, float]) -> list[str]:
        out = []
        if step <= self.check_after:
            return out
        checks = [("target_entropy", self.min_target_entropy, "the teacher targets use very few prototypes")]
        checks += [(k, self.min_feature_std, "the CLS features barely vary across images")
                   for k in ("teacher_cls_std", "student_cls_std")]  # fmt: skip
        for key, threshold, meaning in checks:
            value = metrics.get(key)
            if value is None or not math.isfinite(value) or value >= threshold:
                continue
            if step - self._last_warning.get(key, -(10**9)) >= 100:
                self._last_warning[key] = step
                out.append(f"step {step}: possible collapse: {key}={value:.3g} < {threshold:g} ({meaning})")
        return out
