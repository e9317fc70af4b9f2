"""CLIP BPE tokenizer: hand-computed ids on a tiny vocabulary, clean-up and truncation rules, and parity with the
released `SimpleTokenizer` / `Tokenizer.tokenize` (with DINOV3_SRC) on the tiny and, when found, the real vocabulary
(`DINOKIT_BPE_VOCAB`, or the file inside an installed open_clip_torch / clip-anytorch)."""

from __future__ import annotations

import gzip
import importlib
import os
import sys
import types
import unicodedata
from pathlib import Path

import pytest
import torch

from dinokit.errors import UserError
from dinokit.text import Tokenizer, find_vocab
from dinokit.text.tokenizer import pre_tokenize

from .release import release_source

pytestmark = pytest.mark.filterwarnings("ignore:ftfy is not installed")

MERGES = ["d o", "do g</w>", "h e", "l l", "he ll", "hell o</w>"]
START, END = 518, 519  # 512 byte symbols, 6 merges, then the special tokens
HELLO, DOG, COMMA, BANG = 517, 513, 256 + 11, 256 + 0  # "hello</w>", "dog</w>", ",</w>", "!</w>"
TEXTS = [
    "Hello, dog!", "a photo of a dog.", "  hello\t\n dog  ", "&amp;lt;b&amp;gt; HTML &quot;quotes&quot;",
    "dog's they'LL we've I'm you'd it'S", "café naïve Ångström", "cafe\u0301 (NFD)", "東京タワー 2024 ½ ٣",
    "emoji 🐕‍🦺 👍🏽", "“curly” ‘quotes’ ﬁ ＡＢＣ", "x\x1cy\x1fz", "he said <|endoftext|> twice <|startoftext|>",
    "the 'ſ long s", "!!!'s ...'re", "", "   ", "word " * 80, "dog" * 40, "\u00a0nbsp\u3000ideographic\u2028ls",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / "tiny.txt.gz"
    path.write_bytes(gzip.compress(("#version: test\n" + "\n".join(MERGES)).encode()))
    return path


def real_vocab() -> Path:
    found = os.environ.get("DINOKIT_BPE_VOCAB") or find_vocab()
    if not found or not Path(found).is_file():
        pytest.skip("CLIP's bpe_simple_vocab_16e6.txt.gz not found (set DINOKIT_BPE_VOCAB or install open_clip_torch)")
    return Path(found)


def test_hand_computed_ids(tiny_vocab):
    tok = Tokenizer(tiny_vocab)
    assert (tok.start_id, tok.end_id, tok.vocab_size) == (START, END, 520)
    ids = tok(["Hello, dog!", "dog's"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :6].tolist() == [START, HELLO, COMMA, DOG, BANG, END] and not ids[0, 6:].any()
    assert ids[1, :5].tolist() == [START, DOG, 6, 256 + 82, END]  # "'" then "s</w>": the contraction is one word
    assert tok.encode("  HELLO\t\n dog ") == [HELLO, DOG]  # whitespace collapsed, lower-cased
    assert tok.encode("&amp;lt;") == [256 + 27]  # HTML unescaped twice: "<"
    assert tok.encode("2024") == [256 + 17, 256 + 15, 256 + 17, 256 + 19]  # digits are single words
    assert tok.encode("é") == [127, 256 + 102]  # UTF-8 bytes c3 a9 as byte symbols Ã ©
    assert tok.decode(tok.encode("Hello, dog!")) == "hello , dog ! "
    assert tok(["a"] * 1)[0, 0] == START and tok("")[0, :3].tolist() == [START, END, 0]


def test_truncation_keeps_the_end_token_last(tiny_vocab):
    tok = Tokenizer(tiny_vocab, context_length=4)
    assert tok("hello dog hello dog").tolist() == [[START, HELLO, DOG, END]]
    assert tok("hello dog").tolist() == [[START, HELLO, DOG, END]]  # exactly full: unchanged
    long = Tokenizer(tiny_vocab)("dog " * 200)
    assert long[0, -1] == END and long[0, 0] == START and (long[0, 1:-1] == DOG).all()


def test_pre_tokenization_rule():
    assert pre_tokenize("dog's!!'s 12ab <|endoftext|>x") == ["dog", "'s", "!!'", "s", "1", "2", "ab",
                                                                "<|endoftext|>", "x"]  # fmt: skip
    assert pre_tokenize("a\x1cb") == ["a", "\x1c", "b"]  # not White_Space for CLIP's pattern


def test_bad_vocabulary(tmp_path):
    with pytest.raises(UserError, match="no BPE vocabulary"):
        Tokenizer(tmp_path / "missing.txt.gz")
    (tmp_path / "bad.txt").write_text("header\na b c\n")
    with pytest.raises(UserError, match="two symbols"):
        Tokenizer(tmp_path / "bad.txt")


def _released_tokenizer(monkeypatch, vocab: Path):
    """The released Tokenizer; without ftfy installed, a stand-in doing what dinokit does without it (NFC)."""
    release_source()
    pytest.importorskip("regex")
    if importlib.util.find_spec("ftfy") is None:
        stub = types.ModuleType("ftfy")
        stub.fix_text = lambda text: unicodedata.normalize("NFC", text)
        monkeypatch.setitem(sys.modules, "ftfy", stub)
    module = importlib.import_module("dinov3.eval.text.tokenizer")
    return module.get_tokenizer(str(vocab))


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_matches_the_released_tokenizer(which, tiny_vocab, monkeypatch):
    vocab = tiny_vocab if which == "tiny" else real_vocab()
    released = _released_tokenizer(monkeypatch, vocab)
    ours = Tokenizer(vocab)
    assert ours.encoder == released.encoder
    assert torch.equal(ours(TEXTS), released.tokenize(TEXTS))
    for text in TEXTS:
        assert ours.decode(ours.encode(text)) == released.decode(released.encode(text))


def test_real_vocabulary_ids():
    tok = Tokenizer(real_vocab())
    assert (tok.vocab_size, tok.start_id, tok.end_id) == (49408, 49406, 49407)
    ids = tok(["a diagram", "a dog", "a cat"])
    assert ids[:, :4].tolist() == [[49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]


def test_pre_tokenization_matches_clips_pattern_on_random_unicode():
    """The standard-library scanner against CLIP's pattern run by the `regex` package, on cleaned random text."""
    regex = pytest.importorskip("regex")
    from dinokit.text.tokenizer import _WHITE_SPACE_RUN

    pattern = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                            r"""[^\s\p{L}\p{N}]+""", regex.IGNORECASE)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    pieces = list("aZé'sltrvmd<|>!. \t\n\x1c\x85\u00a0\u3000ſ1٣½") + ["<|endoftext|>", "'re", "'ll", "東", "🐕"]
    for _ in range(300):
        n = int(torch.randint(1, 25, (1,), generator=g))
        text = "".join(pieces[int(i)] for i in torch.randint(len(pieces), (n,), generator=g))
        text = _WHITE_SPACE_RUN.sub(" ", text).strip().lower()
        assert pre_tokenize(text) == pattern.findall(text), repr(text)
