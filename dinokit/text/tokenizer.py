"""CLIP's byte-level BPE tokenizer, as dino.txt uses it (released `dinov3/eval/text/tokenizer.py` on top of
`dinov3/thirdparty/CLIP/clip/simple_tokenizer.py`).

Behaviour reproduced: text clean-up (ftfy `fix_text`, HTML unescaped twice, runs of whitespace collapsed to one
space, stripped, lower-cased), CLIP's pre-tokenisation rule (the two special tokens, the contractions 's 't 're 've
'm 'll 'd, runs of letters, single digits, runs of other non-space characters; case-insensitive), the reversible
byte → unicode table, the greedy lowest-rank-first merge loop, the vocabulary order (256 byte symbols, the same
with `</w>`, the first 48,894 merges, `<|startoftext|>`, `<|endoftext|>`: 49,408 ids with the released file, start
49406, end 49407), zero padding to the context length, and truncation that keeps the first `context_length` ids
and overwrites the last one with the end token.

Deviations, each on inputs the released model never meets in practice:
- the pre-tokenisation is written with the standard library (`unicodedata` categories L* and N*, and Unicode's
  White_Space set, which is what the `regex` module's `\\s` matches) rather than with the `regex` package; the
  two can disagree only on characters whose category differs between Python's and `regex`'s Unicode versions;
- ftfy is used when it is importable; the release imports it unconditionally. Without it the text is only NFC
  normalised, so mojibake, curly quotes, ligatures and full-width forms tokenize differently (a warning says so
  once). `pip install ftfy` restores the released behaviour;
- a vocabulary file whose last line is empty does not gain an empty-string token (the release adds one when the
  file has fewer merges than it reads; the released file has many more, so its ids are unaffected);
- the vocabulary may be gzip-compressed (as released) or plain text.
"""

from __future__ import annotations

import gzip
import html
import os
import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import UserError

START, END = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # the release reads this many merges after the header line: 49,408 ids in all
CONTEXT_LENGTH = 77
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, tried in this order
# Unicode's White_Space property: the `regex` module's `\s` (Python's `str.isspace` also counts U+001C–U+001F)
_WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITE_SPACE_RUN = re.compile(f"[{_WHITE_SPACE}]+")
_IS_WHITE_SPACE = re.compile(f"[{_WHITE_SPACE}]")
_warned_no_ftfy = False


@lru_cache(maxsize=1)
def byte_symbols() -> dict[int, str]:
    """Byte → printable unicode symbol: printable Latin-1 bytes map to themselves, the other 68 bytes (controls,
    space, soft hyphen …) to U+0100 onwards in byte order, so that no symbol is whitespace or a control."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    moved = (b for b in range(256) if b not in table)
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return table  # insertion order (kept bytes first) is the order of the first 256 ids


def read_merges(path: str | os.PathLike) -> list[tuple[str, str]]:
    """The merge rules of a CLIP BPE vocabulary file (gzip or plain text; first line a header)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"no BPE vocabulary at {str(path)!r}: pass the path of CLIP's bpe_simple_vocab_16e6.txt.gz (shipped in "
            "the open_clip_torch and clip-anytorch wheels, or downloadable from the dino.txt release)"
        )
    raw = p.read_bytes()
    try:
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise UserError(f"{p} is not a CLIP BPE vocabulary (gzip or UTF-8 text of merge rules): {e}") from None
    lines = text.split("\n")[1 : 1 + N_MERGES]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise UserError(f"{p} is not a CLIP BPE vocabulary: merge lines must hold two symbols, found {bad[0]!r}")
    return merges  # type: ignore[return-value]


def clean(text: str) -> str:
    """The released clean-up: ftfy, HTML unescaped twice, whitespace runs → one space, stripped, lower-cased."""
    global _warned_no_ftfy
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    else:
        if not _warned_no_ftfy:
            warnings.warn("ftfy is not installed: text is only NFC-normalised, so mojibake, curly quotes, ligatures "
                          "and full-width forms tokenize differently from the release (pip install ftfy)",
                          stacklevel=3)  # fmt: skip
            _warned_no_ftfy = True
        text = unicodedata.normalize("NFC", text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITE_SPACE_RUN.sub(" ", text).strip().lower()


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, ' ' White_Space, '.' anything else (CLIP's pattern classes)."""
    cat = unicodedata.category(ch)[0]
    if cat in "LN":
        return cat
    return " " if _IS_WHITE_SPACE.match(ch) else "."


def _folded(s: str) -> str:
    # the release matches its literals case-insensitively (simple case folding): ſ (long s) matches s
    return s.replace("ſ", "s")


def pre_tokenize(text: str) -> list[str]:
    """Split cleaned text into words with CLIP's pattern, scanning left to right; the alternatives at a position
    are tried in the released order, and White_Space between matches is dropped."""
    words, i, n = [], 0, len(text)
    while i < n:
        for special in (START, END):
            if _folded(text[i : i + len(special)]) == special:
                words.append(text[i : i + len(special)])
                i += len(special)
                break
        else:
            ch = text[i]
            if ch == "'":
                ending = next((c for c in _CONTRACTIONS if _folded(text[i + 1 : i + 1 + len(c)]) == c), None)
                if ending is not None:
                    words.append(text[i : i + 1 + len(ending)])
                    i += 1 + len(ending)
                    continue
            kind = _kind(ch)
            if kind == " ":
                i += 1
                continue
            j = i + 1
            if kind != "N":  # digits are single words; letters and other symbols run on while their class lasts
                while j < n and _kind(text[j]) == kind:
                    j += 1
            words.append(text[i:j])
            i = j
    return words


class Tokenizer:
    """Text → token ids of the dino.txt text encoder. `Tokenizer(vocab_path)(["a photo of a dog"])` → `[N, 77]`."""

    def __init__(self, vocab: str | os.PathLike, context_length: int = CONTEXT_LENGTH):
        merges = read_merges(vocab)
        symbols = list(byte_symbols().values())
        names = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {name: i for i, name in enumerate(names)}  # a repeated merge keeps its last id, as released
        self.decoder = {i: name for name, i in self.encoder.items()}
        self.ranks = dict(zip(merges, range(len(merges))))  # a repeated merge keeps its last rank, as released
        self.byte_decoder = {s: b for b, s in byte_symbols().items()}
        self.start_id, self.end_id = self.encoder[START], self.encoder[END]
        self.context_length = context_length
        self.vocab_size = len(names)
        self._cache: dict[str, tuple[str, ...]] = {START: (START,), END: (END,)}

    def bpe(self, word: str) -> tuple[str, ...]:
        """Merge a word (already byte symbols) pair by pair, lowest rank first, every occurrence left to right."""
        if word in self._cache:
            return self._cache[word]
        parts = (*word[:-1], word[-1] + "</w>")
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start / end tokens."""
        table = byte_symbols()
        ids = []
        for word in pre_tokenize(clean(text)):
            symbols = "".join(table[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(symbols))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of token ids, as released: special tokens (and padding zeros, "!") are written out as they are, each
        word-final `</w>` becomes a space, and invalid UTF-8 is replaced."""
        symbols = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in symbols)  # "</w>" and the special tokens are ASCII symbols
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """`[N, context_length]` long tensor: start, ids, end, zero padding; a text too long keeps its first
        `context_length` ids with the last one replaced by the end token (as released)."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)  # [N, C]
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id][: self.context_length]
            ids[-1] = self.end_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    tokenize = __call__


def find_vocab() -> Path | None:
    """CLIP's vocabulary file shipped inside an installed open_clip_torch or clip-anytorch wheel (found without
    importing the package, which would import torchvision), or None."""
    import importlib.util

    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for folder in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(folder) / "bpe_simple_vocab_16e6.txt.gz"
            if candidate.is_file():
                return candidate
    return None
