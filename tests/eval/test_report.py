"""The report writer and the demo's stages other than training (those need `dinokit train`)."""

import numpy as np
import pytest
from PIL import Image

from dinokit.demo import (
    DemoConfig,
    chance_levels,
    compare,
    evaluate,
    make_figures,
    print_table,
    query_patch,
    shortfall_text,
    table_rows,
)
from dinokit.eval.report import Report, image_grid, line_plot
from dinokit.models import backbone_from_spec


def test_line_plot_and_grid_write_pngs(tmp_path):
    p = line_plot({"a": ([0, 1, 2], [3.0, 2.0, float("nan")]), "b": ([0, 2], [1.0, 1.5])}, tmp_path / "c.png", "t")
    assert Image.open(p).size == (720, 400)
    tile = np.zeros((8, 8, 3), np.uint8)
    g = image_grid([[tile, tile], [tile, tile]], tmp_path / "g.png", ["x", "y"], cell=32)
    assert Image.open(g).size == (2 * 32 + 8, 2 * 32 + 8 + 20)  # two 32-px cells, an 8-px gap, the titles


def test_report_markdown_and_html(tmp_path):
    r = Report("Title")
    r.heading("Results")
    r.table(["a", "b"], [["1", "<2>"]])
    r.figure("f.png", "a figure")
    md, html = r.write(tmp_path)
    assert "| a | b |\n|---|---|\n| 1 | <2> |" in md.read_text()
    assert "<td>&lt;2&gt;</td>" in html.read_text() and '<img src="f.png"' in html.read_text()


def test_query_patch_prefers_a_card_near_the_centre():
    labels = np.full((64, 64), 10, np.uint8)  # ground
    labels[40:64, 0:16] = 3  # a card at the bottom left
    assert query_patch(labels, (4, 4)) == (2, 0)  # the card patch whose centre (y 40, x 8) is nearest the middle
    assert query_patch(np.full((64, 64), 11, np.uint8), (4, 4)) == (2, 2)  # no card: the centre


def test_the_report_names_the_rows_training_did_not_improve():
    row = lambda protocol, verdict: [protocol, "m", "1", "2", "3", "+1 [0, 2]", verdict]  # noqa: E731
    assert shortfall_text([row("k-NN (k = 20)", "yes"), row("depth", "yes")]) == ""
    text = shortfall_text([row("k-NN (k = 20)", "yes"), row("segmentation", "no (within noise)")])
    assert text.startswith("Not better beyond noise in this run: segmentation (m).") and "patch-level" in text
    text = shortfall_text([row("linear probe", "NO (worse)"), row("segmentation", "no (within noise)")])
    assert "linear probe (m), segmentation (m)" in text and "patch-level" not in text  # no reason claimed


@pytest.mark.slow
def test_demo_stages_on_a_tiny_benchmark(synth, tmp_path):
    """evaluate → figures → table with two random backbones (the training stage is covered where the trainer is)."""
    config = DemoConfig(size=64, dense_iterations=5, linear_epochs=1, figure_examples=2)
    models = {n: backbone_from_spec("random:dinov3_test", seed=s) for n, s in (("random", 0), ("trained", 1))}
    results = {n: evaluate(m, synth, config) for n, m in models.items()}
    comparison = compare(results, config.thresholds, chance_levels(synth, config))
    rows = table_rows(comparison)
    assert len(rows) == 10 and all(r[-1] in ("yes", "no (within noise)", "NO (worse)") for r in rows)
    assert [r[2] for r in rows[:3]] == ["10", "10", "10"]  # ten balanced classes
    assert all(float(r[2]) >= 0 for r in rows)  # every row has its chance level
    assert all(c["interval"][0] <= c["interval"][1] for c in comparison)
    assert "better beyond noise" in print_table(rows)
    figures = make_figures(models, synth, tmp_path, config)
    assert Image.open(figures["pca"]).size == Image.open(figures["similarity"]).size


@pytest.mark.slow
def test_demo_end_to_end_with_a_two_step_training_run(tmp_path, capsys):
    pytest.importorskip("dinokit.train.loop", reason="the trainer (dinokit train) is not in this checkout")
    from dinokit.data.synthetic import SynthConfig
    from dinokit.demo import run_demo

    config = DemoConfig(
        size=32, backbone="dinov3_test", backbone_options={}, steps=2, batch_size=4, dense_iterations=3,
        linear_epochs=1, figure_examples=2, thresholds=(4, 8), knn_every=1,
        data=SynthConfig(size=32, pretrain=8, train_per_class=2, val_per_class=1, dense_train=3, dense_val=2,
                         pairs=2, landmarks=0, views=0, distractors=0),
        recipe_overrides=(
            "model.dino_head={n_prototypes: 64, hidden_dim: 32, bottleneck_dim: 16}", "model.ibot_head=null",
            "crops.global_size=32", "crops.local_number=2", "crops.local_size=16", "data.num_workers=0",
            "optim.warmup_steps=1", "teacher.warmup_temp_steps=1", "train.log_every=1",
        ),
    )  # fmt: skip
    out = tmp_path / "demo"
    summary = run_demo(out, seed=0, config=config)
    assert set(summary["results"]) == {"random", "trained"} and len(summary["comparison"]) == 9
    md = (out / "report.md").read_text()
    assert "| protocol | metric | chance | random | trained |" in md and "recall@8px" in md
    assert all(c["chance"] is not None for c in summary["comparison"])
    for name in ("report.html", "results.json", "loss_curves.png", "knn_curve.png", "pca.png", "similarity.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "run" / "teacher_backbone").is_dir()
    printed = capsys.readouterr().out  # the table and what the report says of rows that did not improve
    assert "recall@8px" in printed and ("Not better beyond noise" in md) == ("Not better beyond noise" in printed)
