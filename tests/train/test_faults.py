"""Faults around a training run: damaged checkpoints are never trusted, non-finite settings and weights never
reach a checkpoint, a full disk is reported (and loses nothing), and what killed saves leave behind is removed."""

import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from dinokit import atomic
from dinokit.cli import main
from dinokit.config import ConfigError
from dinokit.errors import UserError
from dinokit.integrity import digest_path
from dinokit.models import load_backbone
from dinokit.train.checkpoint import checkpoint_files, load_latest
from dinokit.train.loop import train
from dinokit.train.monitor import TrainingDiverged

Usage = namedtuple("Usage", "total used free")


def _two_checkpoints(tiny_cfg):
    run = train(tiny_cfg("train.steps=4", "checkpoint.every=2"))
    return run, checkpoint_files(run / "checkpoints")


def _flip_byte(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bit_flip", "truncated", "zero_length"])
def test_a_damaged_newest_checkpoint_is_named_and_the_run_falls_back(tiny_cfg, caplog, damage):
    run, (older, newest) = _two_checkpoints(tiny_cfg)
    assert digest_path(newest).read_text().split()[1] == newest.name  # `sha256sum -c` reads it
    if damage == "bit_flip":
        _flip_byte(newest, newest.stat().st_size // 2)  # inside the tensor data: torch.load cannot tell
        assert torch.load(newest, weights_only=True)["step"] == 4
    elif damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.write_bytes(b"")
    path, state = load_latest(run / "checkpoints")
    assert path == older and state["step"] == 2
    assert f"checkpoint {newest} is damaged" in caplog.text
    train(tiny_cfg("train.steps=4", "checkpoint.every=2"))  # resumes at step 2 and writes step 4 anew
    assert torch.load(newest, weights_only=True)["step"] == 4 and load_latest(run / "checkpoints")[0] == newest


def test_every_checkpoint_damaged_stops_with_exit_2_and_keeps_the_files(tiny_cfg, capsys):
    run, files = _two_checkpoints(tiny_cfg)
    for f in files:
        _flip_byte(f, f.stat().st_size // 2)
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    cfg = tiny_cfg("train.steps=6")
    argv = ["train", str(_config_file(cfg, run.parent)), f"output_dir={run}"]
    assert main(argv) == 2
    assert "none of the 2 checkpoint(s)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before


def _config_file(cfg, folder):
    from dinokit.config import save_config

    return save_config(cfg, folder / "resolved.yaml")


def test_load_backbone_checks_a_training_checkpoint_and_a_dinokit_file(tiny_cfg, tmp_path):
    run, (_, newest) = _two_checkpoints(tiny_cfg)
    load_backbone(newest)
    _flip_byte(newest, newest.stat().st_size // 2)
    with pytest.raises(UserError, match=f"{newest.name} is damaged: its SHA-256 differs"):
        load_backbone(newest)
    weights = run / "teacher_backbone" / "model.safetensors"
    load_backbone(run / "teacher_backbone")
    _flip_byte(weights, weights.stat().st_size - 10)  # the last tensor's bytes: safetensors reads them happily
    with pytest.raises(UserError, match="teacher_backbone/model.safetensors is damaged"):
        load_backbone(run / "teacher_backbone")


@pytest.mark.parametrize(
    "override, message",
    [("optim.base_lr=.inf", "optim.base_lr: expected a finite number"),
     ("teacher.temp=nan", "teacher.temp: expected a finite number"),
     ("data.std=[0.2, 0, 0.2]", "data.std must be > 0")],
)  # fmt: skip
def test_non_finite_settings_and_a_zero_std_are_refused(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg(override).validate()


def test_an_update_that_breaks_the_weights_stops_the_run_before_anything_is_saved(tiny_cfg):
    cfg = tiny_cfg("optim.base_lr=1e300", "train.steps=4", "checkpoint.every=1")  # finite, far too large
    with pytest.raises(TrainingDiverged) as stopped:
        train(cfg)  # step 0 has LR 0 (warm-up); the update of step 1 overflows
    run = Path(cfg.output_dir)
    [kept] = checkpoint_files(run / "checkpoints")
    assert kept.name == "step_00000001.pt"
    assert "update of step 1 made the student's weights non-finite" in str(stopped.value)
    assert f"The last checkpoint, {kept}, holds finite weights" in str(stopped.value)
    state = torch.load(kept, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())


def test_non_finite_weights_are_never_checkpointed(tiny_cfg, monkeypatch):
    from dinokit.train import checkpoint

    real = checkpoint.training_state

    def poisoned(*args, **kwargs):
        state = real(*args, **kwargs)
        next(iter(state["teacher"].values())).fill_(float("nan"))
        return state

    monkeypatch.setattr("dinokit.train.loop.training_state", poisoned)
    cfg = tiny_cfg("train.steps=2", "checkpoint.every=1")
    with pytest.raises(UserError, match="after step 1 are not finite .*no checkpoint was written"):
        train(cfg)
    assert checkpoint_files(Path(cfg.output_dir) / "checkpoints") == []


def test_a_full_disk_is_reported_and_the_previous_checkpoint_stays(tiny_cfg, monkeypatch, capsys):
    run, (older, newest) = _two_checkpoints(tiny_cfg)
    before = newest.read_bytes()
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 5000, 5000))
    cfg = tiny_cfg("train.steps=6", "checkpoint.every=2")
    with pytest.raises(atomic.DiskFull, match=r"not enough space to write .*step_00000006.pt: it needs about .*MiB"):
        train(cfg)  # the free space is checked before writing

    calls = []

    def full_after_the_check(path):  # plenty of room at the check, none left once the write has started
        calls.append(path)
        return Usage(10**9, 0, 10**9) if len(calls) == 1 else Usage(10**9, 10**9, 0)

    def disk_fills_up(state, tmp):  # torch's own message on a full disk (ENOSPC is not in it)
        tmp.write_bytes(b"PK" + bytes(1000))
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(atomic.shutil, "disk_usage", full_after_the_check)
    monkeypatch.setattr("dinokit.train.checkpoint.torch.save", disk_fills_up)
    with pytest.raises(atomic.DiskFull, match=r"no space left on the device while writing .*step_00000006.pt: 1002 "
                                              r"bytes were written before it filled, 0 bytes are free; the file "
                                              r"needs about"):  # fmt: skip
        train(cfg)
    assert newest.read_bytes() == before and load_latest(run / "checkpoints")[0] == newest
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_stale_temporaries_of_killed_saves_are_removed_at_start(tiny_cfg, caplog):
    run, _ = _two_checkpoints(tiny_cfg)
    stale = [run / "checkpoints" / ".step_00000006.pt.k3j_x9a2.tmp", run / ".config.yaml.ab12cd34.tmp"]
    for s in stale:
        s.write_bytes(bytes(2_000_000))
    unrelated = run / "checkpoints" / ".notes.tmp"  # not a name atomic writes use
    unrelated.write_text("mine")
    caplog.set_level("INFO", logger="dinokit.train")
    train(tiny_cfg("train.steps=4", "checkpoint.every=2"))
    assert not any(s.exists() for s in stale) and unrelated.exists()
    assert "removed 2 temporary file(s) (4.0 MB) left by an interrupted save" in caplog.text


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs, where the machine lets this process mount one (root in a container); else the test skips."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                                                       capture_output=True).returncode:  # fmt: skip
        pytest.skip("cannot mount a small file system here")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_really_full_disk(tiny_cfg, small_disk, capsys):
    """No simulation: the checkpoints of the tiny model (~8 MB each) fill a 24 MiB file system."""
    cfg = tiny_cfg("train.steps=8", "checkpoint.every=1", "checkpoint.keep=5", f"output_dir={small_disk / 'run'}")
    argv = ["train", str(_config_file(cfg, small_disk.parent)), f"output_dir={small_disk / 'run'}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and ("not enough space to write" in err or "no space left on the device" in err)
    assert "Traceback" not in err
    path, state = load_latest(small_disk / "run" / "checkpoints")  # the last complete checkpoint loads
    assert state["step"] >= 1 and not list((small_disk / "run" / "checkpoints").glob(".*.tmp"))
