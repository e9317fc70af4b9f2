"""Atomic writes: a failed write leaves the old file as it was and no temporary file behind."""

import pytest

from dinokit.atomic import atomic_write, atomic_write_text


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
