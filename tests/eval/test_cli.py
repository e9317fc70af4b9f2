"""`dinokit eval …` and `dinokit data synth` from the command line: flat JSON outputs, clear errors."""

import json

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
