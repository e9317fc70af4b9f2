"""The planted-duplicate benchmark's own pieces (benchmarks/dedup_images.py): the seeded plant and the pair metrics.
No backbone is run here: that is the benchmark's job."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "dedup_images.py"


def _module():
    spec = importlib.util.spec_from_file_location("dedup_images", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plant_writes_one_copy_per_kind_and_is_deterministic(tmp_path):
    mod = _module()
    a = mod.plant(tmp_path / "a", n=4, copied=2, size=32, seed=0, images_dir=None)
    b = mod.plant(tmp_path / "b", n=4, copied=2, size=32, seed=0, images_dir=None)
    assert len(a["originals"]) == 4 and len(a["copies"]) == 2 * len(mod.KINDS)
    assert [c["kind"] for c in a["copies"][: len(mod.KINDS)]] == list(mod.KINDS)
    for ca, cb in zip(a["copies"], b["copies"]):
        assert ca["params"] == cb["params"]
        pa = np.asarray(Image.open(tmp_path / "a" / ca["copy"]))
        pb = np.asarray(Image.open(tmp_path / "b" / cb["copy"]))
        assert np.array_equal(pa, pb)
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["copies"] == a["copies"]
    assert mod.plant(tmp_path / "a", n=4, copied=2, size=32, seed=0, images_dir=None) == a  # a finished plant is reused


def test_pair_metrics():
    mod = _module()
    family = np.array([0, 1, 2, 0, 0, 1])  # three originals, then copies of 0 (two kinds) and of 1
    kind = np.array([-1, -1, -1, 0, 1, 0])
    perfect = mod.evaluate(family.copy(), family, kind, ["x", "y"])
    assert perfect["precision"] == perfect["recall"] == 1.0 and perfect["false_merges"] == 0
    one = mod.evaluate(np.zeros(6, dtype=int), family, kind, ["x", "y"])  # everything merged
    assert one["recall"] == 1.0 and one["precision"] == 4 / 15 and one["false_merges"] == 1
    alone = mod.evaluate(np.arange(6), family, kind, ["x", "y"])  # nothing found
    assert alone["recall"] == 0.0 and alone["x"]["recall"] == 0.0 and alone["precision"] == 1.0
