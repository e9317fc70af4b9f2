"""One run per run folder: a second run into a folder in use exits 2 naming the holder, and a killed run's lock
disappears with it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from dinokit.cli import main
from dinokit.errors import UserError
from dinokit.train.loop import train
from dinokit.train.run_lock import RunLock


def test_a_second_run_into_a_folder_in_use_is_refused(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("train.steps=1")
    with RunLock(tmp_path / "run"):
        with pytest.raises(UserError, match="in use by another run"):
            train(cfg)
        assert main(["train", "tiny_cpu", f"data.path={cfg.data.path}", f"output_dir={tmp_path / 'run'}"]) == 2
        assert "in use by another run (pid" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # the refused runs wrote nothing
    train(cfg)  # released: the folder is free again
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (f"import time; from dinokit.train.run_lock import RunLock\nwith RunLock({str(tmp_path)!r}):\n"
            f"    print('locked', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(UserError, match=f"pid {holder.pid}"):
        RunLock(tmp_path).__enter__()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    deadline = time.time() + 10
    while True:
        try:
            with RunLock(tmp_path):
                break
        except UserError:
            assert time.time() < deadline, "the lock outlived its process"
            time.sleep(0.1)


def test_a_forked_child_does_not_keep_a_killed_holders_lock(tmp_path):
    """Data-loading workers are forked: one that outlives its killed parent must not hold the folder."""
    code = (f"import os, time; from dinokit.train.run_lock import RunLock\nwith RunLock({str(tmp_path)!r}):\n"
            "    child = os.fork()\n    if child == 0:\n        time.sleep(60); os._exit(0)\n"
            "    print(child, flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            RunLock(tmp_path).__enter__()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with RunLock(tmp_path):  # at once, while the child still runs
            assert _alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
