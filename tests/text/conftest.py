"""Fixtures of the dino.txt prompt tools (zero-shot, open-vocabulary segmentation, text viz, text prototypes): a
tiny BPE vocabulary, a random released-layout dino.txt file sized to it, the model, and the synthetic benchmark."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from dinokit.text import load_dinotxt

from .helpers import BACKBONE, released_layout
from .test_tokenizer import MERGES

VOCAB_SIZE = 520  # 512 byte symbols, the 6 merges, start and end


@pytest.fixture(scope="session")
def prompt_files(tmp_path_factory) -> tuple[Path, Path]:
    """(dino.txt checkpoint, BPE vocabulary) on disk."""
    import torch

    folder = tmp_path_factory.mktemp("dinotxt")
    vocab = folder / "bpe.txt.gz"
    vocab.write_bytes(gzip.compress(("#version: test\n" + "\n".join(MERGES)).encode()))
    ckpt = folder / "dinotxt.pth"
    torch.save(released_layout(vocab=VOCAB_SIZE), ckpt)
    return ckpt, vocab


@pytest.fixture(scope="session")
def text_model(prompt_files):
    ckpt, vocab = prompt_files
    return load_dinotxt(ckpt, backbone=BACKBONE, vocab=vocab)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """`dinokit data synth` at 64 px, scale 0.05: classify/{train,val}/<material>/ and seg/ (ADE20K layout)."""
    from dinokit.cli import main

    out = tmp_path_factory.mktemp("synth") / "bench"
    assert main(["data", "synth", str(out), "--size", "64", "--scale", "0.05", "--workers", "1"]) == 0
    return out
