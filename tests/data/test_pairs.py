"""Image–caption pairs (`dinokit/data/pairs.py`): folder / CSV / JSONL / tar readers and their bad inputs; the
synthetic captions (`--captions`): deterministic, pixels unchanged, every word one token of their vocabulary."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from dinokit.data.captions import ADJECTIVES, caption_words
from dinokit.data.pairs import open_pairs
from dinokit.data.synthetic import SynthConfig, write_synthetic
from dinokit.errors import UserError
from dinokit.text import Tokenizer
from dinokit.text.tokenizer import clean, pre_tokenize

TINY = dict(size=32, pretrain=4, train_per_class=1, val_per_class=1, dense_train=1, dense_val=1, pairs=1,
            landmarks=1, views=2, distractors=1)  # fmt: skip


def png(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def png_bytes(value=50):
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_of_images_with_same_named_captions(tmp_path):
    png(tmp_path / "a" / "x.png").with_suffix(".txt").write_text("a red disc\n")
    png(tmp_path / "b.png", 10).with_suffix(".txt").write_text("dots")
    pairs = open_pairs(str(tmp_path))
    assert len(pairs) == 2 and sorted(pairs.captions) == ["a red disc", "dots"]
    assert pairs.image(0).shape == (3, 8, 8)
    png(tmp_path / "c.png")
    with pytest.raises(UserError, match="1 of 3 image.*no same-named .txt"):
        open_pairs(str(tmp_path))


def test_csv_with_header_and_quoted_commas(tmp_path):
    png(tmp_path / "img" / "a.png")
    png(tmp_path / "img" / "b.png")
    (tmp_path / "pairs.csv").write_text('path,caption\nimg/a.png,"stripes, dark"\nimg/b.png,dots\n')
    pairs = open_pairs(str(tmp_path / "pairs.csv"))
    assert pairs.captions == ["stripes, dark", "dots"]
    (tmp_path / "bad.csv").write_text("img/a.png,one,two\n")
    with pytest.raises(UserError, match="exactly two columns"):
        open_pairs(str(tmp_path / "bad.csv"))
    (tmp_path / "missing.csv").write_text("img/zzz.png,text\n")
    with pytest.raises(UserError, match="do not exist.*zzz.png"):
        open_pairs(str(tmp_path / "missing.csv"))
    (tmp_path / "empty.csv").write_text("img/a.png,  \n")
    with pytest.raises(UserError, match="empty caption"):
        open_pairs(str(tmp_path / "empty.csv"))


def test_jsonl(tmp_path):
    png(tmp_path / "a.png")
    rows = [{"image": "a.png", "caption": "rings"}, {"path": "a.png", "text": "grid"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert open_pairs(str(tmp_path / "p.jsonl")).captions == ["rings", "grid"]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\nnot json\n')
    with pytest.raises(UserError, match="2 bad line"):
        open_pairs(str(tmp_path / "bad.jsonl"))


def test_tar_shards(tmp_path):
    def shard(path, members):
        with tarfile.open(path, "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    shard(tmp_path / "d-000.tar", [("k1.png", png_bytes(1)), ("k1.txt", b"bricks"), ("k2.txt", b"chevron"),
                                   ("k2.png", png_bytes(2)), ("k2.json", b"{}")])  # fmt: skip
    shard(tmp_path / "d-001.tar", [("k3.jpg", png_bytes(3)), ("k3.txt", b"diamonds")])
    pairs = open_pairs(str(tmp_path / "d-{000..001}.tar"))
    assert pairs.captions == ["bricks", "chevron", "diamonds"]
    assert int(pairs.image(1)[0, 0, 0]) == 2
    assert len(open_pairs(str(tmp_path))) == 3  # a folder of shards
    shard(tmp_path / "d-002.tar", [("k4.png", png_bytes())])
    with pytest.raises(UserError, match="without a <key>.txt"):
        open_pairs(str(tmp_path))
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UserError, match="not a readable tar"):
        open_pairs(str(tmp_path / "x.tar"))


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_pairs(str(tmp_path / "nope"))
    (tmp_path / "f.parquet").write_text("x")
    with pytest.raises(UserError, match="not a .parquet file"):
        open_pairs(str(tmp_path / "f.parquet"))
    with pytest.raises(UserError, match="no image files"):
        open_pairs(str(tmp_path))


def test_synthetic_captions_are_deterministic_and_leave_the_pixels_alone(tmp_path):
    plain = write_synthetic(tmp_path / "plain", seed=3, config=SynthConfig(**TINY), workers=1, progress=False)
    a = write_synthetic(tmp_path / "a", seed=3, config=SynthConfig(**TINY, captions=True), workers=1, progress=False)
    b = write_synthetic(tmp_path / "b", seed=3, config=SynthConfig(**TINY, captions=True), workers=2, progress=False)
    images = sorted(p.relative_to(plain) for p in plain.rglob("*.png"))
    assert images == sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all((plain / p).read_bytes() == (a / p).read_bytes() for p in images)
    texts = sorted(p.relative_to(a) for p in a.rglob("*.txt"))
    assert texts == sorted(p.relative_to(b) for p in b.rglob("*.txt"))
    assert all((a / p).read_text() == (b / p).read_text() for p in texts)
    classify = sorted(p for p in images if p.parts[0] == "classify")
    assert all((a / p).with_suffix(".txt").is_file() for p in classify)  # every classify image has a caption
    for p in classify:  # the caption names the material (class folder) by its name or its adjective
        words = set(pre_tokenize(clean((a / p).with_suffix(".txt").read_text())))
        assert {p.parts[2], ADJECTIVES[p.parts[2]]} & words
    assert not list(plain.rglob("*.txt")) and not (plain / "captions_vocab.txt").exists()
    tok = Tokenizer(a / "captions_vocab.txt")
    assert all(len(tok.encode(w)) == 1 for w in caption_words())
    words = {w for p in texts if p.name != "captions_vocab.txt" for w in pre_tokenize(clean((a / p).read_text()))}
    assert words <= set(caption_words())
    pairs = open_pairs(str(a / "classify" / "train"))
    assert len(pairs) == 10
