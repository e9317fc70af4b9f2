"""`dinokit data synth --long-tail S --duplicates F`: a Zipf-shaped pretraining pool with planted near-duplicates
recorded in pretrain.json, deterministic for any worker count, and the default set unchanged byte for byte."""

import json
import shlex
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from dinokit.cli import main
from dinokit.data.synthetic import (
    DEFAULT_LONG_TAIL,
    MATERIALS,
    SynthConfig,
    pool_plan,
    write_synthetic,
    zipf_probabilities,
)

from .test_synthetic import digest

# everything but the pool at its minimum
TINY = dict(size=32, train_per_class=1, val_per_class=2, dense_train=1, dense_val=1, pairs=1, landmarks=1, views=2,
            distractors=1)  # fmt: skip


def test_the_default_set_is_byte_for_byte_what_it_was_before_the_long_tail(tmp_path):
    # the digest of this tiny set as written by dinokit/data/synthetic.py before --long-tail existed
    config = SynthConfig(pretrain=8, **{**TINY, "val_per_class": 1})
    root = write_synthetic(tmp_path / "s", seed=5, config=config, workers=1, progress=False)
    assert digest(root) == "beb3708750f2e558c43bfefd0ddeddf4fbe0bef7f9efe1f82f495ffb18379f8f"
    assert not (root / "pretrain.json").exists()
    assert "long_tail" not in json.loads((root / "manifest.json").read_text())["config"]


def test_materials_follow_the_zipf_law_in_a_rank_order_drawn_from_the_seed():
    n = 4000
    for seed in (0, 1):
        plan = pool_plan(seed, SynthConfig(pretrain=n, long_tail=1.5))
        counts = Counter(p["material"] for p in plan)
        ranked = [m for m, _ in counts.most_common()]
        expected = zipf_probabilities(1.5)[: len(ranked)] * n
        observed = np.array([counts[m] for m in ranked], float)
        assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected) + 5)  # binomial noise, ~5 sigma
        assert observed[0] > 0.45 * n and observed[-1] < 0.03 * n
    first = [Counter(p["material"] for p in pool_plan(s, SynthConfig(pretrain=500, long_tail=1.5))).most_common(1)
             for s in range(6)]  # fmt: skip
    assert len({f[0][0] for f in first}) > 1  # the most frequent material depends on the seed
    uniform = Counter(p["material"] for p in pool_plan(0, SynthConfig(pretrain=n, long_tail=0.0)))
    assert len(uniform) == len(MATERIALS) and max(uniform.values()) < 1.2 * n / len(MATERIALS)


def test_duplicates_are_recorded_near_identical_copies_of_earlier_originals(tmp_path):
    config = SynthConfig(pretrain=40, long_tail=1.5, duplicates=0.3, **TINY)
    root = write_synthetic(tmp_path / "s", seed=0, config=config, workers=1, progress=False)
    pool = json.loads((root / "pretrain.json").read_text())
    items = {it["name"]: it for it in pool["items"]}
    assert len(items) == 40 == len(list((root / "pretrain").glob("*.png")))
    copies = [it for it in pool["items"] if "copy_of" in it]
    assert len(copies) == pool["copies"] == 12
    assert sum(pool["counts"].values()) == 40 and pool["ranks"][0] == max(pool["counts"], key=pool["counts"].get)
    # classification stays class-balanced
    assert Counter(p.parent.name for p in (root / "classify" / "val").rglob("*.png")) == dict.fromkeys(MATERIALS, 2)

    def thumb(name):  # 8×8 grey, zero mean, unit norm: what survives every edit
        a = np.asarray(Image.open(root / "pretrain" / name).convert("L").resize((8, 8), Image.BOX), np.float64)
        a = a.ravel() - a.mean()
        return a / (np.linalg.norm(a) + 1e-9)

    originals = [n for n, it in items.items() if "copy_of" not in it]
    nearest = 0
    for it in copies:
        source = items[it["copy_of"]]
        assert "copy_of" not in source and source["name"] < it["name"]  # an earlier original, present
        assert it["material"] == source["material"] and it["edits"]
        assert {e["edit"] for e in it["edits"]} <= {"crop", "resize", "colour", "jpeg"}
        sims = {n: float(thumb(it["name"]) @ thumb(n)) for n in originals}
        nearest += max(sims, key=sims.get) == it["copy_of"]
    assert nearest >= 0.8 * len(copies)  # the copy looks most like its original (32 px, 50 % resizes: not all)


def test_same_bytes_for_any_worker_count_and_the_manifest_holds_the_options(tmp_path):
    config = SynthConfig(pretrain=12, long_tail=1.0, duplicates=0.25, **TINY)
    a = write_synthetic(tmp_path / "a", seed=2, config=config, workers=1, progress=False)
    b = write_synthetic(tmp_path / "b", seed=2, config=config, workers=2, progress=False)
    assert digest(a) == digest(b)
    recorded = json.loads((a / "manifest.json").read_text())["config"]
    assert recorded["long_tail"] == 1.0 and recorded["duplicates"] == 0.25
    assert write_synthetic(a, seed=2, config=config, workers=1, progress=False) == a  # reused as is
    with pytest.raises(FileExistsError):  # another exponent is another set
        write_synthetic(a, seed=2, config=SynthConfig(pretrain=12, long_tail=2.0, duplicates=0.25, **TINY))
    assert config.scaled(2).long_tail == 1.0 and config.scaled(2).duplicates == 0.25


def test_bad_values_are_refused_by_the_config():
    for kwargs in ({"long_tail": -0.5}, {"long_tail": float("nan")}, {"duplicates": 1.0}, {"duplicates": -0.1}):
        with pytest.raises(ValueError):
            SynthConfig(**kwargs)


def run(command: str, capsys) -> tuple[int, str]:
    try:
        code = main(shlex.split(command))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err + out.out


def test_cli_writes_a_long_tailed_pool(tmp_path, capsys):
    code, output = run(f"data synth {tmp_path / 's'} --size 32 --scale 0.005 --workers 1 --long-tail "
                       "--duplicates 0.2", capsys)  # fmt: skip
    assert code == 0, output
    pool = json.loads((tmp_path / "s" / "pretrain.json").read_text())
    assert pool["long_tail"] == DEFAULT_LONG_TAIL and pool["duplicates"] == 0.2 and pool["images"] == 10
    assert "--long-tail 1.5 --duplicates 0.2" in (tmp_path / "s" / "README.md").read_text()


@pytest.mark.parametrize(
    "options, expected",
    [
        ("--long-tail -1", "--long-tail must be a Zipf exponent ≥ 0, got -1"),
        ("--long-tail nan", "expected a finite number, got 'nan'"),
        ("--duplicates 1", "--duplicates must be a fraction in [0, 1), got 1"),
        ("--duplicates -0.2", "--duplicates must be a fraction in [0, 1), got -0.2"),
        ("--duplicates lots", "expected a number, got 'lots'"),
    ],
)
def test_cli_bad_values_exit_2_with_a_message(options, expected, tmp_path, capsys):
    code, output = run(f"data synth {tmp_path / 'out'} --size 32 --scale 0.005 {options}", capsys)
    assert code == 2, output
    assert expected in output and "error:" in output and "Traceback" not in output
    assert not (tmp_path / "out").exists()
