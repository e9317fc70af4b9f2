"""`dinokit curate dedup` and `decontaminate` from files: planted duplicates in a named .npy pool, reuse and refusal
of a finished result, chaining into `cluster` through keep.txt, and bad inputs (exit status 2)."""

import json

import numpy as np
import pytest

from dinokit.cli import main
from dinokit.curate.embeddings import read_names
from dinokit.curate.steps import decontaminate, dedup

pytest.importorskip("faiss")


@pytest.fixture()
def pool(tmp_path):
    """200 random directions in 32-D (nearly orthogonal) plus planted near-copies: row 10 copied 3 times, row 20
    twice, row 30 once (small noise), appended at the end; rows named by fake image paths."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 32))
    copies = [base[i] + 0.02 * rng.normal(size=32) for i in [10, 10, 10, 20, 20, 30]]
    x = np.concatenate([base, copies]).astype(np.float16)
    path = tmp_path / "pool.npy"
    np.save(path, x)
    (tmp_path / "pool.names.txt").write_text("".join(f"/data/img_{i:04d}.jpg\n" for i in range(len(x))))
    return path


def names(i):
    return f"/data/img_{i:04d}.jpg"


def test_dedup_keeps_one_image_per_planted_group(pool, tmp_path, capsys):
    out = tmp_path / "dedup"
    assert main(["curate", "dedup", str(pool), "--threshold", "0.9", "--output", str(out)]) == 0
    keep = read_names(out / "keep.txt")
    assert len(keep) == 200 and keep == [names(i) for i in range(200)]  # the copies (rows 200…) go, the originals stay
    groups = json.loads((out / "groups.json").read_text())
    assert groups == {names(10): [names(10), names(200), names(201), names(202)],
                      names(20): [names(20), names(203), names(204)], names(30): [names(30), names(205)]}  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    assert (s["rows"], s["kept"], s["removed"], s["groups"], s["largest_group"]) == (206, 200, 6, 3, 4)
    assert s["settings"] == {"threshold": 0.9, "k": 64, "index": "auto", "seed": 0, "codes": "fp16"}

    # a rerun with the same settings reuses the result; other settings are refused
    before = (out / "keep.txt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["curate", "dedup", str(pool), "--threshold", "0.9", "--output", str(out)]) == 0
    assert "reused" in capsys.readouterr().out and (out / "keep.txt").stat().st_mtime_ns == before
    assert main(["curate", "dedup", str(pool), "--threshold", "0.8", "--output", str(out)]) == 2
    assert "another --output" in capsys.readouterr().err


def test_dedup_then_cluster_through_keep_txt(pool, tmp_path):
    dedup(pool, tmp_path / "dedup", threshold=0.9, index="hnsw")
    tree = tmp_path / "tree"
    argv = ["curate", "cluster", str(pool), "--levels", "8,2", "--iters", "3", "--subset",
            str(tmp_path / "dedup" / "keep.txt"), "--output", str(tree)]  # fmt: skip
    assert main(argv) == 0
    assert read_names(tree / "names.txt") == [names(i) for i in range(200)]


def test_decontaminate_drops_the_rows_near_evaluation_images(pool, tmp_path, capsys):
    x = np.load(pool).astype(np.float32)
    rng = np.random.default_rng(1)
    # an evaluation set holding near-copies of rows 5 and 10 (whose group holds rows 200–202) and an unrelated image
    ev = np.stack([x[5] + 0.02 * rng.normal(size=32), x[10], rng.normal(size=32)]).astype(np.float32)
    np.save(tmp_path / "eval.npy", ev)
    np.save(tmp_path / "eval2.npy", x[[30]])
    out = tmp_path / "clean"
    argv = ["curate", "decontaminate", str(pool), "--against", str(tmp_path / "eval.npy"), str(tmp_path / "eval2.npy"),
            "--threshold", "0.9", "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    dropped = [5, 10, 30, 200, 201, 202, 205]
    assert read_names(out / "dropped.txt") == [names(i) for i in dropped]
    assert read_names(out / "keep.txt") == [names(i) for i in range(206) if i not in dropped]
    s = json.loads((out / "summary.json").read_text())
    assert (s["rows"], s["kept"], s["dropped"]) == (206, 199, 7) and [a["rows"] for a in s["against"]] == [3, 1]
    capsys.readouterr()
    assert main(argv) == 0 and "reused" in capsys.readouterr().out
    # other evaluation sets are another input: refused, not reused
    assert main([*argv[:4], str(tmp_path / "eval.npy"), *argv[6:]]) == 2

    # the Python twin on a subset: only its rows are searched and listed
    (tmp_path / "sub.txt").write_text("".join(names(i) + "\n" for i in range(0, 206, 2)))
    s = decontaminate(pool, [tmp_path / "eval.npy"], tmp_path / "sub", threshold=0.9, subset=tmp_path / "sub.txt")
    assert read_names(tmp_path / "sub" / "dropped.txt") == [names(i) for i in [10, 200, 202]] and s["rows"] == 103


@pytest.mark.parametrize("args, message", [
    (["dedup", "{missing}", "--threshold", "0.9"], "no such"),
    (["dedup", "{pool}", "--threshold", "1.5"], "(0, 1]"),
    (["dedup", "{pool}", "--threshold", "0.9", "--subset", "{unknown}"], "name no row"),
    (["dedup", "{pool}", "--threshold", "0.9", "--output", "{sample}"], "curate sample"),
    (["decontaminate", "{pool}", "--against", "{wrong_dim}", "--threshold", "0.9"], "same backbone"),
    (["decontaminate", "{pool}", "--against", "{missing}", "--threshold", "0.9"], "no such"),
])  # fmt: skip
def test_bad_inputs_exit_2_with_one_message(pool, tmp_path, capsys, args, message):
    np.save(tmp_path / "wrong_dim.npy", np.ones((3, 8), np.float32))
    (tmp_path / "unknown.txt").write_text("/nowhere.jpg\n")
    (tmp_path / "sample").mkdir()
    (tmp_path / "sample" / "summary.json").write_text('{"step": "sample"}')
    where = {"missing": tmp_path / "none.npy", "pool": pool, "unknown": tmp_path / "unknown.txt",
             "wrong_dim": tmp_path / "wrong_dim.npy", "sample": tmp_path / "sample"}  # fmt: skip
    argv = ["curate", *[a.format(**where) for a in args]]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["dedup", "x.npy", "--threshold", "a"], ["dedup", "x.npy", "--threshold", "0.9",
                                                                         "--index", "flat"],
                                  ["decontaminate", "x.npy", "--threshold", "0.9"]])  # fmt: skip
def test_malformed_options_are_usage_errors(args, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["curate", *args, "--output", str(tmp_path / "out")])
    assert e.value.code == 2


@pytest.mark.parametrize("codes", ["fp16", "sq8"])
def test_dedup_with_the_index_lists_on_disk(pool, tmp_path, codes):
    """--scratch-dir keeps the ivf lists in a temporary folder, removed afterwards, and finds the same groups;
    --codes is a setting (a rerun with other codes is refused), the scratch folder is not."""
    common = ["curate", "dedup", str(pool), "--threshold", "0.9", "--index", "ivf", "--codes", codes]
    assert main([*common, "--output", str(tmp_path / "memory")]) == 0
    assert main([*common, "--scratch-dir", str(tmp_path / "scratch"), "--output", str(tmp_path / "disk")]) == 0
    assert (tmp_path / "disk" / "keep.txt").read_text() == (tmp_path / "memory" / "keep.txt").read_text()
    assert len(read_names(tmp_path / "disk" / "keep.txt")) == 200 and not list((tmp_path / "scratch").iterdir())
    assert main([*common, "--output", str(tmp_path / "disk")]) == 0  # reused: where the lists live is no setting
    other = "sq8" if codes == "fp16" else "fp16"
    assert main([*common[:-1], other, "--output", str(tmp_path / "disk")]) == 2
