"""The sample photos shipped in dinokit/samples/: each decodes, and each has its source and licence recorded."""

from __future__ import annotations

import pytest
import torch

from dinokit.demo_photo import SAMPLE_PHOTOS, SAMPLES, sample_photo, sample_photo_path


def test_every_shipped_file_has_its_source_and_licence():
    lines = (SAMPLES / "SOURCES.md").read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| `")]
    table = {file.strip("`"): (size, source, licence) for file, _, size, source, licence in rows}
    assert sorted(table) == sorted(p.name for p in SAMPLES.iterdir() if p.name != "SOURCES.md")
    assert sorted(table) == sorted(f"{name}.png" for name in SAMPLE_PHOTOS)
    for name in SAMPLE_PHOTOS:
        image, description = sample_photo(name)
        size, source, licence = table[f"{name}.png"]
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and name in description
        assert size == f"{image.shape[2]} × {image.shape[1]}"  # width × height, as recorded
        assert source and licence in ("CC0", "public domain (no known copyright restrictions)")


def test_the_default_is_the_astronaut_and_unknown_names_are_refused():
    assert sample_photo()[0].shape == (3, 512, 512)
    assert sample_photo_path("coffee").is_file()
    with pytest.raises(ValueError, match="astronaut, coffee, chelsea"):
        sample_photo_path("lena")
