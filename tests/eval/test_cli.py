"""`dinokit eval …` and `dinokit data synth` from the command line: flat JSON outputs, clear errors."""

import json
import re

import pytest

from dinokit.cli import main


@pytest.fixture(scope="module")
def synth_cli(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["data", "synth", str(out), "--seed", "1", "--size", "32", "--scale", "0.05", "--workers", "1"]) == 0
    return out


def test_data_synth_refuses_a_folder_holding_another_set(synth_cli, capsys):
    assert main(["data", "synth", str(synth_cli), "--seed", "2", "--size", "32", "--scale", "0.02"]) == 2
    assert "different synthetic set" in capsys.readouterr().err


@pytest.mark.parametrize(
    "protocol, args, keys",
    [
        ("knn", ["--train", "classify/train", "--val", "classify/val", "--workers", "0"],
         {"top1_k10", "top1_k20", "top1_k100", "top1_k200"}),
        ("linear", ["--train", "classify/train", "--val", "classify/val", "--workers", "0", "--epochs", "1"],
         {"top1", "holdout_top1", "lr", "n_blocks", "avgpool"}),
        ("logreg", ["--train", "classify/train", "--val", "classify/val", "--workers", "0"],
         {"top1", "holdout_top1", "C"}),
        ("seg", ["--train", "seg/images/training", "--val", "seg/images/validation", "--iterations", "2"],
         {"miou", "pixel_acc"}),
        ("depth", ["--train", "depth/train/rgb", "--val", "depth/test/rgb", "--iterations", "2"],
         {"rmse", "abs_rel", "delta1"}),
        ("retrieval", ["--data", "retrieval/retrieval.json"], {"map"}),
        ("correspondence", ["--pairs", "pairs/pairs.json", "--thresholds", "4", "8"], {"recall@4", "recall@8"}),
    ],
)  # fmt: skip
def test_eval_writes_flat_json(synth_cli, tmp_path, protocol, args, keys):
    args = [str(synth_cli / a) if "/" in a else a for a in args]
    out = tmp_path / "m.json"
    code = main(["eval", protocol, "--backbone", "random:dinov3_test", "--size", "32", "--output", str(out), *args])
    metrics = json.loads(out.read_text())
    assert code == 0 and set(metrics) == keys and all(isinstance(v, int | float) for v in metrics.values())


def test_eval_errors_are_one_message_and_status_2(synth_cli, tmp_path, capsys):
    base = ["eval", "knn", "--train", str(synth_cli / "classify/train"), "--val", str(synth_cli / "classify/val")]
    assert main([*base, "--backbone", str(tmp_path / "missing.pth")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*base, "--backbone", "random:not_a_preset"]) == 2
    assert "unknown backbone preset" in capsys.readouterr().err
    assert main(["eval", "knn", "--backbone", "random:dinov3_test", "--train", str(synth_cli / "pretrain"),
                 "--val", str(synth_cli / "classify/val"), "--workers", "0"]) == 2  # fmt: skip
    assert "class labels" in capsys.readouterr().err
    assert (
        main(["eval", "seg", "--backbone", "random:dinov3_test", "--train", str(tmp_path), "--val", str(tmp_path)]) == 2
    )
    assert "target folder" in capsys.readouterr().err


def test_malformed_user_files_are_one_message_and_status_2(synth_cli, tmp_path, capsys):
    """Mistakes in a user's own files or options end in a message naming the problem, before any long work."""
    import shutil

    import numpy as np
    from PIL import Image

    def run(protocol, *args):
        argv = ["eval", protocol, "--backbone", "random:dinov3_test", "--size", "32", *map(str, args)]
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        return code, capsys.readouterr().err

    seg = shutil.copytree(synth_cli / "seg", tmp_path / "seg")
    label = sorted((seg / "annotations/training").iterdir())[0]
    Image.fromarray(np.full((32, 32), 12, np.uint8)).save(label)  # 12 classes: 0…11
    code, err = run("seg", "--train", seg / "images/training", "--val", seg / "images/validation", "--iterations", 1,
                    "--num-classes", 12)  # fmt: skip
    assert code == 2 and f"{label}: label 12 but 12 classes" in err and "--reduce-zero-label" in err
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(label)  # another shape than its 32 × 32 image
    code, err = run("seg", "--train", seg / "images/training", "--val", seg / "images/validation", "--iterations", 1)
    assert code == 2 and f"{label} is 32×16 pixels but its image" in err
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(label)  # half resolution: resized, not an error
    assert run("seg", "--train", seg / "images/training", "--val", seg / "images/validation", "--iterations", 1)[0] == 0

    depth = shutil.copytree(synth_cli / "depth", tmp_path / "depth")
    target = sorted((depth / "train/depth").iterdir())[0]
    Image.fromarray(np.full((32, 32), 3, np.uint8)).save(target)  # a depth *picture*
    code, err = run("depth", "--train", depth / "train/rgb", "--val", depth / "test/rgb", "--iterations", 1)
    assert code == 2 and "8-bit" in err and "16-bit PNGs in millimetres" in err
    code, err = run("depth", "--train", depth / "train/rgb", "--val", depth / "test/rgb", "--min-depth", 5,
                    "--max-depth", 1)  # fmt: skip
    assert code == 2 and "need 0 ≤ min < max" in err

    spec = json.loads((synth_cli / "pairs/pairs.json").read_text())
    spec["pairs"][0]["keypoints_b"][0] = [-3, 5]
    (synth_cli / "pairs/outside.json").write_text(json.dumps(spec))
    code, err = run("correspondence", "--pairs", synth_cli / "pairs/outside.json")
    assert code == 2 and "keypoints lie outside" in err and "(-3, 5)" in err
    code, err = run("correspondence", "--pairs", synth_cli / "pairs/pairs.json", "--thresholds", 0)
    assert code == 2 and "must be positive" in err
    spec = json.loads((synth_cli / "pairs/pairs.json").read_text())
    for name, points, message in [("scored", [[1, 2, 0.9]], "lists of [x, y]"), ("nan", [[1, float("nan")]], "NaN")]:
        spec["pairs"][0]["keypoints_a"] = spec["pairs"][0]["keypoints_b"] = points
        (synth_cli / f"pairs/{name}.json").write_text(json.dumps(spec))
        code, err = run("correspondence", "--pairs", synth_cli / f"pairs/{name}.json")
        assert code == 2 and message in err, name
    spec = json.loads((synth_cli / "pairs/pairs.json").read_text())
    spec["pairs"][-1]["image_b"] = "images/missing.png"  # found only after a progress bar has started
    (synth_cli / "pairs/missing.json").write_text(json.dumps(spec))
    code, err = run("correspondence", "--pairs", synth_cli / "pairs/missing.json")
    assert code == 2 and "missing.png" in err
    lines = re.split(r"[\r\n]", err)  # the message on a line of its own, not at the end of the bar's
    assert any(line.startswith("dinokit eval: error: ") for line in lines), err

    spec = json.loads((synth_cli / "retrieval/retrieval.json").read_text())
    spec["queries"][0]["positives"] = [len(spec["gallery"])]
    (synth_cli / "retrieval/index.json").write_text(json.dumps(spec))
    code, err = run("retrieval", "--data", synth_cli / "retrieval/index.json")
    assert code == 2 and f"gallery index {len(spec['gallery'])}" in err
    spec = json.loads((synth_cli / "retrieval/retrieval.json").read_text())
    spec["queries"][0]["bbox"] = [20, 20, 10, 30]
    (synth_cli / "retrieval/bbox.json").write_text(json.dumps(spec))
    code, err = run("retrieval", "--data", synth_cli / "retrieval/bbox.json")
    assert code == 2 and "x0 < x1" in err
    for name, change, message in [
        ("fraction", {"positives": [1.5]}, "neither a gallery path nor a gallery index"),  # was read as index 1
        ("string", {"positives": "abc"}, "positives and junk are lists"),  # was read as 'a', 'b', 'c'
    ]:
        spec = json.loads((synth_cli / "retrieval/retrieval.json").read_text())
        spec["queries"][0].update(change)
        (synth_cli / f"retrieval/{name}.json").write_text(json.dumps(spec))
        code, err = run("retrieval", "--data", synth_cli / f"retrieval/{name}.json")
        assert code == 2 and message in err, name
    spec["queries"] = []
    (synth_cli / "retrieval/no_queries.json").write_text(json.dumps(spec))
    code, err = run("retrieval", "--data", synth_cli / "retrieval/no_queries.json")
    assert code == 2 and "no queries" in err

    (tmp_path / "file").write_text("")
    code, err = run("retrieval", "--data", synth_cli / "retrieval/retrieval.json", "--output", tmp_path / "file/m.json")
    assert code == 2 and "cannot create its folder" in err
    code, err = run("seg", "--train", seg / "images/training", "--val", seg / "images/validation", "--iterations", 0)
    assert code == 2 and "must be at least 1" in err
