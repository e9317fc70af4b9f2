"""Atomic writes: a failed write leaves the old file as it was and no temporary file behind; the file gets the
mode an ordinary write would; a full disk is named as such; temporaries of killed writes can be found."""

import errno
import os
import shutil
import stat
from collections import namedtuple

import pytest

from dinokit.atomic import DiskFull, atomic_write, atomic_write_text, remove_stale_temporaries

Usage = namedtuple("Usage", "total used free")


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "result.json", "old")

    def half_written(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_written)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    assert atomic_write_text(path, "new").read_text() == "new"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_an_ordinary_write_gives_it(tmp_path, umask):
    previous = os.umask(umask)
    try:
        ordinary = tmp_path / "ordinary.txt"
        ordinary.write_text("x")
        written = atomic_write_text(tmp_path / "atomic.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(ordinary.stat().st_mode) == 0o666 & ~umask


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = atomic_write_text(tmp_path / "shared.json", "old")
    path.chmod(0o640)
    assert stat.S_IMODE(atomic_write_text(path, "new").stat().st_mode) == 0o640


def test_a_full_disk_is_named_whatever_the_writer_says(tmp_path, monkeypatch):
    def no_space(tmp):
        tmp.write_bytes(bytes(3000))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull, match=r"while writing .*result.bin: 2.9 KiB were written before it filled"):
        atomic_write(tmp_path / "result.bin", no_space)

    def torch_style(tmp):  # torch's zip writer names no error number
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    with pytest.raises(RuntimeError, match="enforce fail"):  # plenty of space: another fault, passed on as it is
        atomic_write(tmp_path / "result.bin", torch_style)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 0))
    with pytest.raises(DiskFull, match="0 bytes were written before it filled, 0 bytes are free$"):
        atomic_write(tmp_path / "result.bin", torch_style)
    with pytest.raises(DiskFull, match="not enough space to write .*result.bin: it needs about 2.0 MiB, 0 bytes"):
        atomic_write(tmp_path / "result.bin", torch_style, size=2**21)  # checked before writing
    assert [p.name for p in tmp_path.iterdir()] == []


def test_stale_temporaries_are_found_by_the_names_atomic_writes_use(tmp_path):
    (tmp_path / "sub").mkdir()
    stale = [tmp_path / ".model.safetensors.a1b2c3d4.tmp", tmp_path / "sub" / ".step_00000002.pt.x_y_z_12.tmp"]
    for s in stale:
        s.write_bytes(bytes(10))
    kept = [tmp_path / ".cache.tmp", tmp_path / "model.tmp", tmp_path / ".lock"]
    for k in kept:
        k.write_text("")
    assert remove_stale_temporaries(tmp_path) == (2, 20)
    assert all(k.exists() for k in kept) and not any(s.exists() for s in stale)
