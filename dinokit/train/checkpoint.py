"""Training checkpoints: one consolidated file per save, written atomically, the newest `keep` kept.

A checkpoint is a plain dict of tensors, numbers and strings (it loads with `torch.load(weights_only=True)` on
any world size): `step` (optimiser steps done), `student`, `teacher` (the main teacher: backbone + heads;
`load_backbone` reads the teacher backbone from it), `extra_teachers` (e.g. the Gram teacher's weights and
copy count), `terms` (target centres), `optimizer`, `monitor`, `data` (the next batch of each rank's stream),
`rng` (every rank's generators), `config` and `world_size`. `training_state` gathers it (every rank calls it;
rank 0 gets the dict), `restore_training_state` puts it back.

Every world size and `train.parallel` writes and reads this one layout, so a run continues on any number of
ranks. With FSDP the student's parameters and the optimiser's moments are sharded (DTensors):
`training_state` gathers them tensor by tensor (`full_tensor()`, one collective each) into rank 0's CPU
memory — what `torch.distributed.checkpoint`'s `get_state_dict(full_state_dict=True, cpu_offload=True)` does,
but keeping the optimiser's own index-keyed layout that `load_state_dict` of an unsharded optimiser reads
(DCP's is keyed by parameter name). Deviation from a DCP save: no sharded checkpoint directory is written and
consolidated afterwards; the consolidated file is the only output, written atomically by rank 0 as in one
process. Restoring happens before the loop shards the student (`distributed.wrap_student` then shards the
restored weights and optimiser state), so loading is the same plain `load_state_dict` on every world size.

Files are `checkpoints/step_00001000.pt`, each with its SHA-256 in `step_00001000.pt.sha256` (`integrity.py`);
a save goes to a hidden temporary file that is renamed into place, so a crash mid-save never leaves a partial
checkpoint under a real name. Before writing, the free space is checked against the state's size, and weights
that are not finite are refused (they would be resumed as a "good" checkpoint). Resuming takes the newest file
that matches its digest and loads; a damaged one (or a file that is not a training checkpoint) is reported by
name and the next older is used. When checkpoints exist but none loads, resuming stops with an error rather
than silently training from step 0 over them; the files are left as they are.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch.distributed.tensor import DTensor

from ..atomic import DiskFull, atomic_write
from ..config import to_dict
from ..errors import UserError
from ..integrity import check_file, digest_path, file_problem, write_file_digest
from . import distributed as D

log = logging.getLogger("dinokit.train")
_NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED = ("step", "student", "teacher", "terms", "optimizer", "data", "rng", "world_size", "config")


def checkpoint_files(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


class NonFiniteWeights(UserError):
    """A checkpoint would hold NaN or infinite weights."""


def save_checkpoint(directory: Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write `state` as `step_<step>.pt` with its digest, then drop all but the newest `keep` checkpoints."""
    broken = non_finite_tensors({k: state[k] for k in ("student", "teacher", "extra_teachers") if k in state})
    if broken:
        raise NonFiniteWeights(f"the weights after step {step} are not finite ({len(broken)} tensor(s), e.g. "
                               f"{broken[0]}); no checkpoint was written for it")  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"

    def write(tmp: Path) -> None:
        torch.save(state, tmp)
        write_file_digest(path, content=tmp)  # before the rename: every complete checkpoint has its digest

    try:
        atomic_write(path, write, size=int(sum(t.nbytes for t in _tensors(state)) * 1.01) + 2**20)  # + the pickle
    except DiskFull as e:
        kept = checkpoint_files(directory)
        raise DiskFull(f"{e}. {f'The previous checkpoint, {kept[-1].name}, is intact. ' if kept else ''}Free some "
                       "space (or lower checkpoint.keep) and run the same command again to resume") from None
    for old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    return path


def read_checkpoint_file(path: Path) -> dict:
    """A training checkpoint's content, after checking it against its digest (`DamagedFile` otherwise)."""
    check_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_latest(directory: Path, required: tuple[str, ...] = REQUIRED) -> tuple[Path, dict] | None:
    """The newest checkpoint that matches its digest and loads, or None when there is none; a UserError when there
    are some but none loads (starting afresh would overwrite the evidence and the user's expectation of a
    resumed run). `required`: the entries a checkpoint of this kind of run holds."""
    files = checkpoint_files(directory)
    for path in reversed(files):
        damage = file_problem(path)
        if damage:
            log.warning("checkpoint %s is damaged: %s; trying an older one", path, damage)
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: fall back to the previous one
            reason = str(e).split(". ")[0].strip()  # torch's first sentence; the rest is generic advice
            log.warning("checkpoint %s cannot be read (%s); trying an older one", path, reason)
            continue
        missing = [k for k in required if k not in state] if isinstance(state, dict) else list(required)
        if missing:
            log.warning("%s is not a training checkpoint (no %s); trying an older one", path, ", ".join(missing))
            continue
        return path, state
    if files:
        raise UserError(
            f"none of the {len(files)} checkpoint(s) in {directory} can be read (see the warnings above): "
            "move them away to start this run afresh, or train into another output_dir"
        )
    return None


def training_state(cfg, parts, monitor, info, step: int, next_batch: int) -> dict | None:
    """The consolidated state after `step` steps (None on ranks other than 0); `next_batch`: the first unseen
    batch of each rank's stream. A collective: every rank calls it."""
    models = _model_state(parts.meta, parts.optimizer, info)
    rngs = D.gather_objects(rng_state())
    if not info.is_main:
        return None
    return {
        "step": step,
        **models,
        "monitor": monitor.state_dict(),
        "data": {"next_batch": next_batch, "batch_size": cfg.train.batch_size},
        "rng": rngs,
        "world_size": info.world_size,
        "config": to_dict(cfg),
    }


def _model_state(meta, optimizer, info) -> dict:
    """student, teacher, extra_teachers, terms and optimizer of the checkpoint (complete on rank 0).

    Distillation students on disjoint ranks (`meta.partitioned`): the first rank of each student's group sends
    its student (weights, EMA, terms, optimiser state keyed by the student's name) to rank 0, which joins them, so
    the file holds every student as in one process."""
    student = consolidated(meta.student.state_dict(), info.is_main)
    optimizer_state = consolidated(optimizer.state_dict(), info.is_main)
    extra = {name: t.state_dict() for name, t in meta.teachers.items() if name != "main"}
    state = {"student": student, "teacher": meta.teacher.state_dict(), "extra_teachers": extra,
             "terms": meta.terms.state_dict(), "optimizer": optimizer_state}  # fmt: skip
    if not meta.partitioned:
        return state
    mine = None
    if meta.placement.index_in_group == 0:
        mine = _to_cpu({**state, "optimizer": {",".join(meta.student): optimizer_state}, "teacher": {}})
    joined = {"student": {}, "teacher": state["teacher"], "extra_teachers": {}, "terms": {}, "optimizer": {}}
    for part in D.gather_objects(mine):
        for key in ("student", "extra_teachers", "terms", "optimizer"):
            joined[key].update(part[key] if part else {})
    return joined


def _local_part(meta, state: dict) -> dict:
    """The part of a checkpoint that this rank's students read (everything unless `meta.partitioned`)."""
    if not meta.partitioned:
        return state
    names = list(meta.student)

    def mine(d: dict, prefix: str = "", sep: str = ".") -> dict:
        return {k: v for k, v in d.items() if any(k.startswith(f"{prefix}{n}{sep}") or k == f"{prefix}{n}"
                                                  for n in names)}  # fmt: skip

    optimizer = state["optimizer"].get(",".join(names), {"missing": "another placement of the students"})
    return {**state, "student": mine(state["student"]), "extra_teachers": mine(state.get("extra_teachers", {}),
            "ema_"), "terms": mine(state["terms"]), "optimizer": optimizer}  # fmt: skip


def _tensors(state):
    """Every tensor in a nested checkpoint state."""
    if torch.is_tensor(state):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, list | tuple):
        for v in state:
            yield from _tensors(v)


def non_finite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested state dict that hold a NaN or an infinity."""
    out = []
    for k, v in state.items():
        if isinstance(v, dict):
            out += non_finite_tensors(v, f"{prefix}{k}.")
        elif torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            out.append(f"{prefix}{k}")
    return out


def _to_cpu(state):
    if torch.is_tensor(state):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_to_cpu(v) for v in state]
    return state


def consolidated(state, main: bool):
    """`state` (a nested state dict) with each sharded (DTensor) value gathered whole into CPU memory on the
    main rank; the other ranks take part in the gathers and drop the results. Unsharded values are kept as they
    are. A collective when there are DTensors: every rank calls it on the same structure."""
    if isinstance(state, DTensor):
        full = state.full_tensor()
        return full.cpu() if main else None
    if isinstance(state, dict):
        return {k: consolidated(v, main) for k, v in state.items()}
    if isinstance(state, list):  # the optimiser's parameter groups
        return [consolidated(v, main) for v in state]
    return state


def restore_training_state(parts, state: dict) -> str:
    """Load models, teachers, terms and optimiser from a checkpoint; "" on success, else why it does not fit."""
    meta = parts.meta
    state = _local_part(meta, state)
    extra = {name: t for name, t in meta.teachers.items() if name != "main"}
    saved_extra = state.get("extra_teachers", {})
    problem = state_mismatch(meta.student, state["student"]) or state_mismatch(meta.teacher, state["teacher"])
    if not problem and set(saved_extra) != set(extra):
        problem = f"teachers {sorted(saved_extra) or 'none'} saved besides the main one, {sorted(extra) or 'none'} here"
    if problem:
        return problem
    try:
        meta.student.load_state_dict(state["student"])
        meta.teacher.load_state_dict(state["teacher"])
        for name, teacher in extra.items():
            teacher.load_state_dict(saved_extra[name])
        meta.terms.load_state_dict(state["terms"])
        parts.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. the optimiser's parameter groups changed
        return str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
    return ""


def start_from_run(parts, run: Path, keep_optimizer: bool) -> Path:
    """A stage's start (`init.run`): student, main teacher and target centres from the run's newest checkpoint,
    and its optimiser state with `keep_optimizer`; extra teachers start from their own settings. Returns the
    checkpoint used."""
    found = load_latest(run / "checkpoints")
    if found is None:
        raise UserError(f"init.run={run} has no checkpoint to start from (checkpoints/ is empty or missing)")
    path, state = found
    meta = parts.meta
    problem = state_mismatch(meta.student, state["student"]) or state_mismatch(meta.teacher, state["teacher"])
    if problem:
        raise UserError(f"{path} does not fit the model this stage builds: {problem}")
    meta.student.load_state_dict(state["student"])
    meta.teacher.load_state_dict(state["teacher"])
    own = meta.terms.state_dict()  # centres of terms both runs have, where their shapes agree
    meta.terms.load_state_dict({k: v for k, v in state["terms"].items() if k in own and v.shape == own[k].shape},
                               strict=False)  # fmt: skip
    if keep_optimizer:
        try:
            parts.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"init.optimizer=keep: the optimiser state of {path} does not fit this stage's "
                            f"parameter groups ({e}); use init.optimizer=fresh") from None  # fmt: skip
    return path


def state_mismatch(module: torch.nn.Module, saved: dict) -> str:
    """Why `saved` does not load into `module`, in one line ("" when it does): torch's own message lists every
    tensor, hundreds of lines for a changed depth."""
    own = module.state_dict()
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    reshaped = [k for k in own if k in saved and tuple(own[k].shape) != tuple(saved[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape, e.g. {k} {list(saved[k].shape)} saved, "
                        f"{list(own[k].shape)} here")  # fmt: skip
    return "; ".join(problems)


# ----------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """This process's random generators, in a form `weights_only` loading accepts."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
