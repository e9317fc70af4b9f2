"""Robust decoding of the image files found in real piles, and the image datasets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from dinokit.data.datasets import ImageDataset, ImageList, collate_skip_none
from dinokit.data.images import MAX_ASPECT_RATIO, ImageDecodeError, decode_image
from tests.data.fuzz_corpus import declare_size


def _rgb(h=20, w=30):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2, 0] = 200  # left half red
    a[: h // 2, :, 2] = 100  # top half has blue
    return a


def _save(tmp_path, name, img: Image.Image, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_rgb_png_roundtrip(tmp_path):
    t = decode_image(_save(tmp_path, "a.png", Image.fromarray(_rgb())))
    assert t.dtype == torch.uint8 and t.shape == (3, 20, 30)
    assert torch.equal(t.permute(1, 2, 0), torch.from_numpy(_rgb()))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA"])
def test_modes_are_converted_to_rgb(tmp_path, mode):
    img = Image.fromarray(_rgb()).convert(mode)
    ext = "jpg" if mode == "CMYK" else "png"
    t = decode_image(_save(tmp_path, f"a.{ext}", img))
    assert t.shape == (3, 20, 30)


def test_palette_with_transparency(tmp_path):
    img = Image.fromarray(_rgb()).convert("P")
    t = decode_image(_save(tmp_path, "p.png", img, transparency=0))
    assert t.shape == (3, 20, 30)


def test_sixteen_bit_grayscale_is_rescaled(tmp_path):
    a = np.full((8, 8), 65535, np.uint16)
    a[:, :4] = 0
    t = decode_image(_save(tmp_path, "d.png", Image.fromarray(a)))
    assert t.shape == (3, 8, 8) and int(t[0, 0, 0]) == 0 and int(t[0, 0, 7]) == 255


def test_exif_rotation_is_applied(tmp_path):
    img = Image.fromarray(_rgb(20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    t = decode_image(_save(tmp_path, "r.jpg", img, exif=exif.tobytes(), quality=95))
    assert t.shape == (3, 30, 20)


def test_truncated_file_decodes_what_it_can(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    assert decode_image(path).shape == (3, 64, 64)


@pytest.mark.parametrize("content", [b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n garbage"])
def test_unreadable_files_raise_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match="bad.png"):
        decode_image(path)


def test_folder_with_classes_and_skipping(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(_rgb()).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"")
    images = ImageList.from_source(tmp_path)
    assert images.classes == ["cat", "dog"] and images.labels == [0, 0, 1, 1, 1]
    ds = ImageDataset(images)
    batch = collate_skip_none([ds[i] for i in range(len(ds))])
    assert batch[0].shape == (4, 3, 20, 30) and batch[1].tolist() == [0, 0, 1, 1]
    assert len(ds.skipped) == 1 and ds.skipped[0].endswith("broken.jpg")


def test_file_list_with_labels(tmp_path):
    for i in range(3):
        Image.fromarray(_rgb()).save(tmp_path / f"{i}.png")
    (tmp_path / "list.csv").write_text("# path,label\n0.png,7\n1.png,3\n2.png,7\n")
    images = ImageList.from_source(tmp_path / "list.csv")
    assert images.classes == ["3", "7"] and images.labels == [1, 0, 1]


@pytest.mark.parametrize(
    "text",
    [
        "path,label\n0.png,7\n1.png,3\n",  # a CSV header
        "0.png 7\n1.png\t3\n",  # whitespace, as ImageNet's val.txt (`ILSVRC2012_val_00000001.JPEG 65`)
        "filename class\n0.png   7\n1.png 3\n",
        '"0.png",7\n1.png,3\n',  # quoted CSV
    ],
)
def test_file_list_layouts(tmp_path, text):
    (tmp_path / "list.txt").write_text(text)
    images = ImageList.from_source(tmp_path / "list.txt")
    assert [p.name for p in images.paths] == ["0.png", "1.png"] and images.classes == ["3", "7"]
    assert images.labels == [1, 0]


def test_unlabelled_list_keeps_spaces_in_names_and_rows_that_look_like_a_header_but_name_a_file(tmp_path):
    (tmp_path / "my photo.jpg").write_bytes(b"")
    (tmp_path / "notes").write_bytes(b"")  # a file without extension, first in the list
    (tmp_path / "list.txt").write_text("notes\nmy photo.jpg\nmissing.pngx\n")
    images = ImageList.from_source(tmp_path / "list.txt")
    assert [p.name for p in images.paths] == ["notes", "my photo.jpg", "missing.pngx"] and images.labels is None


def test_unreadable_images_are_named_up_to_a_limit(tmp_path, caplog):
    from dinokit.data.datasets import LISTED_UNREADABLE

    (tmp_path / "list.txt").write_text("".join(f"missing{i}.png\n" for i in range(LISTED_UNREADABLE + 5)))
    ds = ImageDataset(ImageList.from_source(tmp_path / "list.txt"))
    with caplog.at_level("WARNING", logger="dinokit.data"):
        assert all(ds[i] is None for i in range(len(ds)))
    named = [r for r in caplog.records if "skipping image" in r.getMessage()]
    assert len(named) == LISTED_UNREADABLE and "without a message" in caplog.records[-1].getMessage()
    assert len(ds.skipped) == LISTED_UNREADABLE + 5


def _no_decoding(self):
    raise AssertionError("the pixels were decoded")


def test_the_aspect_ratio_limit_holds_and_is_checked_before_decoding(tmp_path, monkeypatch):
    """A strip would cost its aspect ratio times the patch tokens of a square image in every verb (issue: a
    1 × 5000 px PNG at `--size 64` became 80,000 tokens and stalled an extraction)."""
    n = MAX_ASPECT_RATIO
    assert decode_image(_save(tmp_path, "at_limit.png", Image.fromarray(_rgb(2, 2 * n)))).shape == (3, 2, 2 * n)
    over = [_save(tmp_path, "wide.png", Image.fromarray(_rgb(2, 2 * n + 2))),
            _save(tmp_path, "tall.png", Image.fromarray(_rgb(2 * n + 2, 2)))]  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    (tmp_path / "declared.png").write_bytes(declare_size(buf.getvalue(), "PNG", 1, 100_000))  # a header's claim
    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decoding)
    for path in [*over, tmp_path / "declared.png"]:
        with pytest.raises(ImageDecodeError, match=f"aspect ratio over the limit of {n}:1"):
            decode_image(path)


def test_the_pixel_limit_is_checked_before_decoding_whatever_pillows_own_setting(tmp_path, monkeypatch):
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG")
    path = tmp_path / "bomb.png"
    path.write_bytes(declare_size(buf.getvalue(), "PNG", 20_000, 20_000))  # 400 M px declared by 100 bytes
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # some library switched Pillow's check off
    monkeypatch.setattr(ImageFile.ImageFile, "load", _no_decoding)
    with pytest.raises(ImageDecodeError, match="20000 × 20000 px, over the limit of 178,956,970 pixels"):
        decode_image(path)


def test_damaged_exif_metadata_is_ignored_not_the_image(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "PNG", exif=exif.tobytes())
    data = buf.getvalue().replace(b"MM\x00*", b"MM\xc0*", 1)  # flipped bits in the EXIF block's TIFF header
    (tmp_path / "photo.png").write_bytes(data)
    assert decode_image(tmp_path / "photo.png").shape == (3, 20, 30)  # as stored: the orientation is unknown


def test_a_missing_file_says_so(tmp_path):
    with pytest.raises(ImageDecodeError, match="nope.png: no such file"):
        decode_image(tmp_path / "nope.png")
