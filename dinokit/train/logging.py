"""What a run reports: a tqdm progress bar (loss terms, LR, images/s, ETA), `metrics.jsonl` (one JSON object per
logged step with `step` and every loss term and metric), when `tensorboard` is installed TensorBoard event files
in `tensorboard/`, and with `logging.wandb` configured the same records in a Weights & Biases run. Only rank 0
writes.

Resuming truncates `metrics.jsonl` to the steps the checkpoint had completed, so the file never holds the same
step twice; a line cut short by a kill in the middle of its write is dropped then (and skipped when reading).
W&B continues the same run (its id is kept in `wandb_run_id.txt`, `resume="allow"`); W&B ignores steps below
the last it received, so steps logged after the checkpoint and redone after resuming keep their first values,
which resumption reproduces exactly (but for images/s).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..atomic import atomic_write_text
from ..errors import require
from ..ssl.losses import TERMS

if TYPE_CHECKING:
    from ..config.schema import WandbConfig

SHOWN = ("loss", *TERMS)  # in the progress bar (those a run has), besides lr and images/s


class RunLog:
    def __init__(
        self, run_dir: Path, total_steps: int, start_step: int, images_per_step: int, enabled: bool = True,
        wandb: WandbConfig | None = None, config: dict | None = None,
    ):  # fmt: skip
        """`wandb`: the run's `logging.wandb` section (None: off); `config`: the resolved configuration, recorded
        in the W&B run."""
        # checked first, and on every rank, so that none waits forever on a rank 0 stopped by its absence
        module = None if wandb is None else require("wandb", "wandb", "logging to Weights & Biases (logging.wandb)")
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.images_per_step = images_per_step
        self._last = (time.perf_counter(), start_step)
        self._evaluated: dict[str, str] = {}
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not enabled,
                        dynamic_ncols=True, smoothing=0.1)  # fmt: skip
        self.tb = None
        if enabled:
            _truncate(self.path, start_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step)
            except ImportError:
                pass
        self.wandb = _wandb_run(module, wandb, run_dir, config) if enabled and wandb is not None else None

    def step_done(self) -> None:
        self.bar.update(1)

    def write(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Log the metrics of (completed) step `step`; adds throughput. Returns what was written."""
        now = time.perf_counter()
        t0, s0 = self._last
        self._last = (now, step)
        if step > s0:
            metrics = {**metrics, "images_per_s": self.images_per_step * (step - s0) / (now - t0)}
        if not self.enabled:
            return metrics
        record = {"step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k.replace("weight/", "weight_"), v, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        shown = {k: f"{metrics[k]:.4g}" for k in SHOWN if k in metrics}
        shown.update({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith("/loss")})  # each distilled student
        if "lr" in metrics:  # (not in the step-0 evaluation record)
            shown["lr"] = f"{metrics['lr']:.2e}"
        if "images_per_s" in metrics:
            shown["img/s"] = f"{metrics['images_per_s']:.1f}"
        # the latest evaluation stays on the bar until the next one
        self._evaluated.update({k: f"{v:.1f}" for k, v in metrics.items() if k.startswith("knn/") or "/knn/" in k})
        self.bar.set_postfix({**shown, **self._evaluated}, refresh=False)
        return metrics

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self, failed: bool = False) -> None:
        """End the bar and the loggers; `failed`: the run ended by an error (W&B marks the run so)."""
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, error_type, *_) -> None:
        self.close(failed=error_type is not None)


def _wandb_run(wandb, cfg: WandbConfig, run_dir: Path, config: dict | None):
    """Start (or, when the run folder names one, continue) the W&B run of this run folder."""
    id_file = run_dir / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.resolve().name, mode=cfg.mode,
                     dir=str(run_dir), config=config, id=run_id, resume="allow")  # fmt: skip
    if run_id is None:
        atomic_write_text(id_file, run.id + "\n")
    return run


def _truncate(path: Path, start_step: int) -> None:
    """Drop records of steps after `start_step` (written before a crash, redone after resuming); a run that starts
    afresh (`start_step` 0) keeps none, not even the evaluation of the initial model, which it redoes."""
    if not path.exists():
        return
    kept = [json.dumps(r) for r in _records(path.read_text()) if 0 < start_step and r["step"] <= start_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _records(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn line: the process was killed while appending it
            continue
    return records


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a `metrics.jsonl`."""
    return _records(Path(path).read_text())
