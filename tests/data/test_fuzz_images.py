"""Fuzzing the image path on a small corpus of mutated files (`fuzz_corpus.py`): the dataset, `extract`, the
evaluation features and a few training steps each skip exactly the files an independent oracle calls unusable,
crash on none and spend a bounded time per file. `benchmarks/fuzz_images.py` is the full run (thousands of files)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from dinokit.cli import main
from dinokit.data.datasets import ImageDataset, ImageList
from dinokit.eval.features import extract_global_features
from dinokit.models import create_backbone
from dinokit.tools.extract import extract_features, read_features
from tests.data.fuzz_corpus import KINDS, usable, write_corpus

N_FILES = 100  # every kind of file (`KINDS` counts per 100)
SECONDS_PER_FILE = 5.0  # the slowest of 15,000 fuzzed files decoded in 0.6 s; the strip of the issue took minutes
SECONDS_PER_JOB = 60.0
TINY_CPU = Path(__file__).parents[2] / "configs" / "pretrain" / "tiny_cpu.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder, cases, resolved paths, the paths the oracle calls unusable)."""
    folder = tmp_path_factory.mktemp("fuzz").resolve()
    cases = write_corpus(folder, N_FILES, seed=0)
    paths = [folder / c.name for c in cases]
    return folder, cases, paths, {str(p) for p in paths if not usable(p)}


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_the_corpus_holds_every_kind_and_both_outcomes(corpus):
    _, cases, paths, unusable = corpus
    assert {c.kind for c in cases} == set(KINDS)
    assert 0.25 * N_FILES < len(unusable) < 0.75 * N_FILES


def test_the_dataset_skips_exactly_the_unusable_files_in_bounded_time(corpus):
    _, _, paths, unusable = corpus
    dataset = ImageDataset(ImageList(paths))
    for i, path in enumerate(paths):
        start = time.perf_counter()
        dataset[i]  # anything but a skip would raise here
        assert time.perf_counter() - start < SECONDS_PER_FILE, path
    assert sorted(dataset.skipped) == sorted(unusable)


def test_extract_and_the_evaluation_features_skip_exactly_the_unusable_files(corpus, tmp_path):
    folder, _, paths, unusable = corpus
    torch.manual_seed(0)
    model = create_backbone("dinov3_test").eval()
    start = time.perf_counter()
    out = extract_features(model, folder, tmp_path / "feats", size=32, batch_size=8, progress=False)
    assert sorted((out / "skipped.txt").read_text().splitlines()) == sorted(unusable)
    assert set(read_features(out)) == {str(p) for p in paths} - unusable
    features = extract_global_features(model, folder, size=32, batch_size=8, progress=False)
    assert sorted(features.skipped) == sorted(unusable)
    assert time.perf_counter() - start < SECONDS_PER_JOB


def test_a_short_training_run_through_the_corpus_skips_exactly_the_unusable_files(corpus, tmp_path, caplog):
    folder, _, paths, unusable = corpus
    batch = 20  # one pass over the files in N_FILES / batch steps: each file is read once
    tiny = ["model.backbone=dinov3_test", "crops.local_number=2", "train.log_every=1", "checkpoint.every=0",
            "model.dino_head={n_prototypes: 64, hidden_dim: 64, bottleneck_dim: 32}",
            "model.ibot_head={n_prototypes: 48, hidden_dim: 64, bottleneck_dim: 32}"]  # fmt: skip
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        rc = main(["train", str(TINY_CPU), f"data.path={folder}", f"output_dir={tmp_path / 'run'}", *tiny,
                   f"train.batch_size={batch}", f"train.steps={N_FILES // batch}", "data.num_workers=1"])  # fmt: skip
    assert rc == 0
    assert f"{len(unusable)} unreadable file(s) skipped" in caplog.text
    assert time.perf_counter() - start < SECONDS_PER_JOB
