"""Captions of the synthetic object images (`dinokit data synth --captions`) and a small BPE vocabulary for them.

A caption names what the image shows: the card's material (the class: its name, or an adjective for it), its
cut-out shape (disc, triangle, square, hexagon, blob) and, in about half the captions, its tone. Templates,
synonyms and whether the tone is said are drawn from the caption's own seeded generator, so the pixels never
depend on the captions.

Colour words, honestly: the synthetic colours are muted greys with faint tints, drawn independently of the class
(synthetic.py explains why). A caption's tone is measured on the rendered card — its mean grey level (dark below
0.38, light above 0.55, otherwise nothing is said) and its mean red-minus-blue tint (warm above +0.04, cool below
−0.04) — so the words are true of the image but carry no information about the material; no hue names are used
because the tints are too faint to deserve them.

`write_vocabulary(path)` writes a CLIP-format merges file (a header line, then one `a b` merge per line; what
`dinokit.text.Tokenizer` reads) in which every word the captions and the zero-shot prompts use is one token, so
training a text tower on the synthetic set needs no download. Its vocabulary is the 512 byte symbols, the merges
and the two special tokens; any other text still tokenizes, byte by byte.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

CAPTION_STREAM = 1_000_003  # appended to a generator's seed: the captions' own random stream
VOCAB_FILE = "captions_vocab.txt"
CAPTIONS_README = ("- captions: a same-named .txt beside every classify/ image and every pretrain/ object image "
                   f"(material, shape, tone);\n  {VOCAB_FILE}: a CLIP-format BPE vocabulary in which each caption "
                   "word is one token.\n\n")  # fmt: skip

ADJECTIVES = {"stripes": "striped", "bars": "barred", "checker": "checkered", "dots": "dotted",
              "rings": "ringed", "grid": "gridded", "chevron": "zigzag", "bricks": "brick", "diamonds": "diamond",
              "blobs": "blotchy"}  # fmt: skip
SHAPE_WORDS = {"disc": ("disc", "circle"), "triangle": ("triangle",), "square": ("square",),
               "hexagon": ("hexagon",), "blob": ("blob", "lump")}  # fmt: skip
TEMPLATES = (  # {m}: the material's name, {a}: its adjective, {s}: the shape, {t}: the tone ("" or "dark warm ")
    "a photo of a {t}{s} card with {m}",
    "a {t}{a} {s}",
    "{m} on a {t}{s}",
    "a {s} cut from a {t}{a} board",
    "close-up of a {t}{a} {s} card",
    "a {t}{s} showing a pattern of {m}",
    "{a} texture on a {t}{s} shape",
    "an image of {m}, {s} shaped",
)
# the zero-shot prompts of benchmarks/dinotxt_learns.py use these words too
PROMPT_WORDS = "a an the photo picture image of with pattern texture card made object this is"


def tone(image: np.ndarray, mask: np.ndarray) -> str:
    """'dark ', 'light warm ', … (with a trailing space) or '' — measured on the card's pixels `image[mask]`."""
    if not mask.any():
        return ""
    rgb = image[mask].mean(axis=0)  # [3]
    grey, tint = float(rgb.mean()), float(rgb[0] - rgb[2])
    words = ["dark"] if grey < 0.38 else ["light"] if grey > 0.55 else []
    words += ["warm"] if tint > 0.04 else ["cool"] if tint < -0.04 else []
    return " ".join(words) + " " if words else ""


def caption(scene, material: int, rng: np.random.Generator) -> str:
    """A caption of an object scene (`synthetic.object_scene`) whose main card has material index `material`."""
    from .synthetic import MATERIALS

    name = MATERIALS[material]
    shape = SHAPE_WORDS[scene.shape][rng.integers(len(SHAPE_WORDS[scene.shape]))]
    said = tone(scene.image, scene.labels == material) if rng.random() < 0.5 else ""
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(m=name, a=ADJECTIVES[name], s=shape, t=said)


def caption_words() -> list[str]:
    """Every word (CLIP pre-tokenised) that captions and prompts can hold, sorted."""
    from ..text.tokenizer import clean, pre_tokenize
    from .synthetic import MATERIALS

    texts = [t.format(m=" ", a=" ", s=" ", t=" ") for t in TEMPLATES]
    texts += [*MATERIALS, *ADJECTIVES.values(), *(w for ws in SHAPE_WORDS.values() for w in ws)]
    texts += ["dark light warm cool", PROMPT_WORDS]
    words = {w for t in texts for w in pre_tokenize(clean(t))}
    return sorted(words)


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merge rules under which each of `words` (ASCII) is one token: each word's remaining parts are joined left to
    right by new, lower-priority merges, so the words already made one token are not affected."""
    from ..text.tokenizer import END, START, Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.txt"
        empty.write_text("#version: 0.2\n")
        tok = Tokenizer(empty)
    merges: list[tuple[str, str]] = []
    for word in words:
        tok._cache = {START: (START,), END: (END,)}
        parts = tok.bpe(word)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in tok.ranks:
                tok.ranks[pair] = len(merges)
                merges.append(pair)
            parts = ("".join(pair), *parts[2:])
    return merges


def write_vocabulary(path: str | os.PathLike) -> Path:
    """The captions' BPE vocabulary file (module docstring); checked to give every word one token."""
    from ..text.tokenizer import Tokenizer

    words = caption_words()
    merges = build_merges(words)
    path = Path(path)
    path.write_text("#version: 0.2 dinokit synthetic captions\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = Tokenizer(path)
    split = [w for w in words if len(tok.encode(w)) != 1]
    assert not split, f"words not one token: {split}"
    return path
