"""One owner per run folder: an exclusive lock on `RUN/.lock` for a run's lifetime.

Two runs writing one folder would interleave `metrics.jsonl`, overwrite each other's `config.yaml` and race on
the checkpoints, and both would end with exit 0. The lock is a `flock` on an open file: the operating system
releases it when the process ends however it ends, so a `kill -9` or a crash never leaves a stale lock to clear
by hand. The file holds who has it (pid, host, start time) for the message a second run gets. Only the main
rank takes it (all ranks of a run share the folder). Where `fcntl` is missing (Windows) there is no lock.

A `flock` belongs to the open file, and a forked child (a data-loading worker) shares the parent's open files:
a worker that outlives its killed parent for a few seconds would keep the folder locked. So a forked child
closes its copy of the lock's descriptor at once (`os.register_at_fork`), which leaves the parent's lock as it is.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from ..errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None


_HELD: set[int] = set()  # this process's lock descriptors


def _drop_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # closing one copy releases nothing; the lock ends when the parent's copy goes
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_in_child)


class RunLock:
    """`with RunLock(folder):` holds the folder's lock; a `UserError` naming the holder when another has it."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.path = Path(folder) / ".lock"
        self.enabled = enabled and fcntl is not None
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another run ({holder}); wait for it to end, or train "
                            "into another output_dir") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd
        _HELD.add(fd)
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _HELD.discard(self.fd)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
