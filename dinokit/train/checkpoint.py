"""Training checkpoints: one consolidated file per save, written atomically, the newest `keep` kept.

A checkpoint is a plain dict of tensors, numbers and strings (it loads with `torch.load(weights_only=True)` on
any world size): `step` (optimiser steps done), `student`, `teacher` (backbone + heads: `load_backbone` reads
the teacher backbone from it), `terms` (target centres), `optimizer`, `data` (the next batch of each rank's
stream), `rng` (every rank's generators), `config` and `world_size`.

Files are `checkpoints/step_00001000.pt`; a save goes to a hidden temporary file that is renamed into place,
so a crash mid-save never leaves a partial checkpoint under a real name. Resuming takes the newest file that
loads; a damaged one (or a file that is not a training checkpoint) is reported and the next older is used. When
checkpoints exist but none loads, resuming stops with an error rather than silently training from step 0 over
them.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import UserError

log = logging.getLogger("dinokit.train")
_NAME = re.compile(r"^step_(\d+)\.pt$")
REQUIRED = ("step", "student", "teacher", "terms", "optimizer", "data", "rng", "world_size", "config")


def checkpoint_files(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(directory: Path, step: int, state: dict, keep: int = 3) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    for old in checkpoint_files(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(directory: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, or None when there is none; a UserError when there are some but none
    loads (starting afresh would overwrite the evidence and the user's expectation of a resumed run)."""
    files = checkpoint_files(directory)
    for path in reversed(files):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: fall back to the previous one
            reason = str(e).split(". ")[0].strip()  # torch's first sentence; the rest is generic advice
            log.warning("checkpoint %s cannot be read (%s); trying an older one", path, reason)
            continue
        missing = [k for k in REQUIRED if k not in state] if isinstance(state, dict) else list(REQUIRED)
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
