"""What a run reports: a tqdm progress bar (loss terms, LR, images/s, ETA), `metrics.jsonl` (one JSON object per
logged step with `step` and every loss term and metric) and, when `tensorboard` is installed, TensorBoard
event files in `tensorboard/`. Only rank 0 writes.

Resuming truncates `metrics.jsonl` to the steps the checkpoint had completed, so the file never holds the same
step twice; a line cut short by a kill in the middle of its write is dropped then (and skipped when reading).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from tqdm import tqdm

from ..atomic import atomic_write_text
from ..ssl.losses import TERMS

SHOWN = ("loss", *TERMS)  # in the progress bar (those a run has), besides lr and images/s


class RunLog:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, images_per_step: int, enabled: bool = True):
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
        shown = {k: f"{metrics[k]:.4g}" for k in SHOWN if k in metrics}
        shown.update({k: f"{v:.4g}" for k, v in metrics.items() if k.endswith("/loss")})  # each distilled student
        shown["lr"] = f"{metrics.get('lr', 0.0):.2e}"
        if "images_per_s" in metrics:
            shown["img/s"] = f"{metrics['images_per_s']:.1f}"
        # the latest evaluation stays on the bar until the next one
        self._evaluated.update({k: f"{v:.1f}" for k, v in metrics.items() if k.startswith("knn/") or "/knn/" in k})
        self.bar.set_postfix({**shown, **self._evaluated}, refresh=False)
        return metrics

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()


def _truncate(path: Path, start_step: int) -> None:
    """Drop records of steps after `start_step` (written before a crash, redone after resuming)."""
    if not path.exists():
        return
    kept = [json.dumps(r) for r in _records(path.read_text()) if r["step"] <= start_step]
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
