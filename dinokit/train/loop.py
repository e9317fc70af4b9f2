"""`dinokit train`: the self-supervised training loop (DINOv2 recipe; DINOv3 stages are configuration).

Per step: schedules (once) → forward (teacher, student, loss terms; bf16 autocast on GPU) → backward (gradient
accumulation over micro-batches, synchronised on the last; DDP or FSDP: `distributed.py`) → per-module
clipping → optimiser step → `on_step_end(step)` of every teacher → log → evaluation callback → checkpoint. A
non-finite step is skipped (see `monitor.py`); SIGTERM / Ctrl-C save a checkpoint at the next step boundary and
stop.

Where a run starts: its own newest checkpoint (resume), else `init.run` (a stage: an earlier run's models),
else fresh weights (or `init.backbone`). Teachers hear `on_train_start(step)` once the weights are in place.

Run folder: `config.yaml` (resolved), `metrics.jsonl`, `checkpoints/`, `tensorboard/`, and at the end
`teacher_backbone/` (dinokit format) and `teacher_backbone_official.pth` (the released layout).

Evaluation: `eval.knn.*` switches on periodic k-NN (`dinokit/eval/periodic.py`). In Python, `train(cfg,
eval_fn=f)` calls `f(teacher_backbone, step) -> {name: value}` every `eval.every` steps, and at step 0 on the
initial teacher when a run starts afresh (the baseline its curve is read against), on every rank (the
backbone is in eval mode; the function may use torch.distributed) and logs the returned numbers with the step's
metrics (rank 0). It runs before the step's checkpoint, so a resumed run reproduces any use it makes of the
random generators.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import remove_stale_temporaries
from ..config import DinoTxtRunConfig, PretrainConfig, changed_keys, save_config, to_dict
from ..data.stream import SSLStream
from ..errors import UserError
from ..models import save_backbone
from . import distributed as D
from .build import build, data_iterator
from .checkpoint import (
    load_latest,
    restore_training_state,
    save_checkpoint,
    set_rng_state,
    start_from_run,
    training_state,
)  # fmt: skip
from .logging import RunLog
from .monitor import HealthMonitor
from .optim import apply_schedules, clip_gradients, weights_finite
from .run_lock import RunLock

log = logging.getLogger("dinokit.train")
EvalFn = Callable[[nn.Module, int], dict[str, float]]


def train(cfg: PretrainConfig, resume: bool = False, eval_fn: EvalFn | None = None) -> Path:
    """Train (or continue training) as configured; returns the run folder. The run holds its folder's lock
    (`run_lock.py`) from start to end: a second run into the same folder is refused."""
    if isinstance(cfg, DinoTxtRunConfig):  # text alignment on a frozen backbone: `dinotxt.py`
        from .dinotxt import train_dinotxt

        return train_dinotxt(cfg, resume)
    cfg.validate()
    info = D.init_distributed()
    with RunLock(Path(cfg.output_dir), enabled=info.is_main):
        return _train(cfg, resume, eval_fn, info)


def _train(cfg: PretrainConfig, resume: bool, eval_fn: EvalFn | None, info: D.DistInfo) -> Path:
    if eval_fn is None and cfg.eval.knn.train:
        from ..eval.periodic import knn_callback

        eval_fn = knn_callback(cfg.eval.knn, info.device)
    run = Path(cfg.output_dir)
    if info.is_main:
        _remove_stale_temporaries(run)
        save_config(cfg, run / "config.yaml")
    parts = build(cfg, info)
    meta = parts.meta
    monitor = HealthMonitor(cfg.monitor.max_bad_steps, cfg.monitor.min_target_entropy, cfg.monitor.min_feature_std,
                            check_after=cfg.optim.warmup_steps)  # fmt: skip
    start, next_batch = _restore(cfg, run, parts, monitor, info, resume)
    for teacher in meta.teachers.values():
        teacher.on_train_start(start)
    D.wrap_student(meta, parts.optimizer, info, cfg.train.parallel, cfg.train.precision)
    stream = SSLStream(**parts.stream_args, start_batch=next_batch)
    batches = data_iterator(stream, cfg.data.num_workers, pin_memory=info.device.type == "cuda")
    autocast = _autocast(cfg.train.precision, info.device)
    runlog = RunLog(run, cfg.train.steps, start, parts.global_batch, enabled=info.is_main, wandb=cfg.logging.wandb,
                    config=to_dict(cfg))  # fmt: skip
    skipped_files: Counter[str] = Counter()
    meta.train()
    with _graceful_stop() as stop, runlog:  # the bar and the loggers end on errors too
        if eval_fn is not None and cfg.eval.every and start == 0:  # where the curve starts: the initial teacher
            evaluated = _evaluate(eval_fn, meta, 0)
            if evaluated:  # (ranks other than 0 return nothing)
                runlog.write(0, evaluated)
        for step in range(start, cfg.train.steps):
            micro = [next(batches) for _ in range(cfg.train.grad_accumulation)]
            skipped_files.update(name for b in micro for name in b.skipped)
            result = train_step(meta, parts.optimizer, micro, step, cfg.optim.clip_grad, autocast, info.device)
            monitor.step_is_bad(result.bad, step, result.floats, result.weights_broken)
            done = step + 1
            runlog.step_done()
            evaluated = {}
            if eval_fn is not None and cfg.eval.every and done % cfg.eval.every == 0:
                evaluated = _evaluate(eval_fn, meta, done)
            if evaluated or done % cfg.train.log_every == 0 or done == cfg.train.steps:
                logged = runlog.write(done, {**result.reduced(), **evaluated, "skipped_steps": monitor.skipped_steps})
                for warning in monitor.collapse_warnings(done, logged):
                    runlog.message(warning)
            stopping = D.any_rank(torch.tensor(stop.requested, device=info.device))
            if done == cfg.train.steps or stopping or (cfg.checkpoint.every and done % cfg.checkpoint.every == 0):
                monitor.last_checkpoint = _save(cfg, run, parts, monitor, info, done,
                                                next_batch + (done - start) * cfg.train.grad_accumulation)
            if stopping:
                runlog.message(f"stopped at step {done}; run the same command again to resume")
                break
    if skipped_files and info.is_main:
        log.warning("%d unreadable file(s) skipped, %d times in all", len(skipped_files), skipped_files.total())
    if not stop.requested:
        _export(meta, run, info)
    D.barrier()
    if stop.requested:
        raise KeyboardInterrupt
    return run


@dataclass
class StepResult:
    metrics: dict[str, torch.Tensor]  # this rank's losses and metrics
    norms: dict[str, torch.Tensor]  # gradient norm per sub-module, before clipping
    values: dict[str, float]  # the schedules at this step
    bad: bool  # non-finite on some rank: the step was skipped
    weights_broken: bool = False  # the update made some weight non-finite: the run cannot go on

    def floats(self) -> dict[str, float]:
        return {**{k: float(v) for k, v in self.metrics.items()}, **self.values}

    def reduced(self) -> dict[str, float]:
        """Metrics averaged over ranks (a collective: every rank must call it), with the schedule values."""
        grads = {f"grad_norm/{k}": n for k, n in self.norms.items()}
        return {**D.mean_over_ranks({**self.metrics, **grads}), **self.values}


def train_step(meta, optimizer, micro_batches: list, step: int, clip_grad, autocast, device) -> StepResult:
    """One optimiser step over the micro-batches: forward / backward each (gradient sync on the last),
    clip, and — unless a loss or gradient is non-finite on some rank — optimiser step and teacher updates."""
    values = meta.schedules(step)
    apply_schedules(optimizer, values)
    optimizer.zero_grad(set_to_none=True)
    n = len(micro_batches)
    losses, metrics = [], {}
    for i, batch in enumerate(micro_batches):
        with D.gradient_sync(meta.student_forward, i, n):
            with autocast:
                loss, batch_metrics = meta(batch.to(device, non_blocking=True), values)
            (loss / n).backward()
        losses.append(loss.detach())
        for k, v in batch_metrics.items():  # the step's metrics: the mean over its micro-batches
            metrics[k] = metrics.get(k, 0.0) + v.float() / n
    norms = clip_gradients(optimizer, clip_grad)
    checked = torch.stack([*losses, *(x.float().reshape(()) for x in norms.values())])
    bad = D.any_rank(~torch.isfinite(checked).all())  # one synchronisation per step
    weights_broken = False
    if not bad:
        optimizer.step()
        weights_broken = D.any_rank(~weights_finite(optimizer))  # the update itself overflowed (a huge LR)
        if not weights_broken:  # an EMA of broken weights would break the teachers too
            for teacher in meta.teachers.values():
                teacher.on_step_end(step)
    return StepResult(metrics, norms, values, bad or weights_broken, weights_broken)


def _evaluate(eval_fn: EvalFn, meta, step: int) -> dict[str, float]:
    """`eval_fn` on each backbone the run produces (`meta.outputs()`); with several (distillation students) the
    numbers are named `<student>/<metric>`."""
    outputs = meta.outputs()
    if len(outputs) == 1:
        return eval_fn(next(iter(outputs.values())), step)
    return {f"{path.split('/')[-2]}/{k}": v for path, m in outputs.items() for k, v in eval_fn(m, step).items()}


def _export(meta, run: Path, info: D.DistInfo) -> None:
    """Each backbone of `meta.outputs()` as `<path>/` (dinokit) and `<path>_official.pth` (the released layout),
    written by the first rank that holds it; one that cannot be written is reported and the others still are."""
    if not (info.is_main or meta.partitioned and meta.placement.index_in_group == 0):
        return
    failed = []
    for path, backbone in meta.outputs().items():
        try:
            save_backbone(backbone, run / path, format="dinokit")
            save_backbone(backbone, run / f"{path}_official.pth", format="official")
        except (OSError, RuntimeError, ValueError) as e:
            log.error("could not write %s: %s", run / path, e)
            failed.append(path)
    if failed:
        raise UserError(f"{len(failed)} of {len(meta.outputs())} backbone(s) could not be written "
                        f"({', '.join(failed)}); the checkpoints hold them: run the same command again to retry")


def _remove_stale_temporaries(run: Path) -> None:
    """Delete what saves killed mid-way left behind (a partial checkpoint can be gigabytes); safe because this
    run holds the folder's lock, so no other process is writing there."""
    count, freed = remove_stale_temporaries(run)
    if count:
        log.info("removed %d temporary file(s) (%.1f MB) left by an interrupted save", count, freed / 1e6)


def _autocast(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _save(cfg: PretrainConfig, run: Path, parts, monitor, info: D.DistInfo, step: int, next_batch: int) -> Path:
    """A consolidated checkpoint after `step` steps; `next_batch`: the first unseen batch of each rank's stream.
    Returns its path (on every rank)."""
    state = training_state(cfg, parts, monitor, info, step, next_batch)
    path = run / "checkpoints" / f"step_{step:08d}.pt"
    if state is not None:
        path = save_checkpoint(run / "checkpoints", step, state, cfg.checkpoint.keep)
    D.barrier()
    return path


def _restore(cfg, run: Path, parts, monitor: HealthMonitor, info: D.DistInfo, resume: bool) -> tuple[int, int]:
    """Continue from the newest checkpoint of the run folder, or start a stage from `init.run`, or afresh:
    (first step, first batch of the stream)."""
    found = load_latest(run / "checkpoints")
    if found is None:
        if resume:
            raise UserError(f"--resume: no checkpoint in {run / 'checkpoints'}")
        if cfg.init.run is not None:
            used = start_from_run(parts, Path(cfg.init.run), cfg.init.optimizer == "keep")
            if info.is_main:
                log.info("stage starts from %s", used)
        torch.manual_seed(cfg.seed + info.rank)  # training randomness (drop-path, RoPE jitter) differs per rank
        return 0, 0
    path, state = found
    monitor.last_checkpoint = path
    changed = ", ".join(k for k in changed_keys(state["config"], cfg) if k != "output_dir")
    problem = restore_training_state(parts, state)
    if problem:
        raise UserError(
            f"{path} was written for another model than this configuration builds"
            f"{f' (changed settings: {changed})' if changed else ''}: {problem.rstrip('.')}. Train into another "
            f"output_dir (init.run={run} starts a new run from it)"
        )
    monitor.load_state_dict(state["monitor"])
    step = state["step"]
    data = state["data"]
    same_layout = state["world_size"] == info.world_size and data["batch_size"] == cfg.train.batch_size
    if same_layout:
        next_batch = data["next_batch"]
        set_rng_state(state["rng"][info.rank])
    else:  # another world size or batch size: continue after the images already seen (not bit-exact)
        seen = data["next_batch"] * data["batch_size"] * state["world_size"]
        next_batch = math.ceil(seen / (cfg.train.batch_size * info.world_size))
        torch.manual_seed(cfg.seed + info.rank + 7919 * step)
    if info.is_main:
        log.info("resuming from %s (step %d)%s", path, step, f"; changed settings: {changed}" if changed else "")
    return step, next_batch


class _StopFlag:
    requested = False


@contextlib.contextmanager
def _graceful_stop():
    """SIGTERM / SIGINT set a flag the loop checks between steps; a second SIGINT interrupts at once."""
    flag = _StopFlag()
    previous = {}

    def handler(signum, frame):
        flag.requested = True
        signal.signal(signum, previous[signum])

    try:
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no signal handling
        previous.clear()
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
