"""Whole runs: the CLI on tiny_cpu.yaml, the run folder and its exports, exact resumption after a crash or a
SIGTERM, skipped non-finite steps, continued pretraining from a checkpoint."""

import contextlib
import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from dinokit.cli import main
from dinokit.config import ConfigError
from dinokit.data.shapes import ShapesConfig, write_shapes
from dinokit.errors import UserError
from dinokit.models import load_backbone, save_backbone
from dinokit.models.factory import create_backbone
from dinokit.train.build import build, build_backbone
from dinokit.train.checkpoint import checkpoint_files, load_latest
from dinokit.train.distributed import DistInfo
from dinokit.train.logging import RunLog, read_metrics
from dinokit.train.loop import train, train_step
from dinokit.train.monitor import HealthMonitor, TrainingDiverged

TINY_CPU = Path(__file__).parents[2] / "configs" / "pretrain" / "tiny_cpu.yaml"


def test_three_steps_of_tiny_cpu_through_the_cli(image_folder, tmp_path):
    run = tmp_path / "run"
    argv = ["train", str(TINY_CPU), f"data.path={image_folder}", f"output_dir={run}", "train.steps=3"]
    assert main([*argv, "train.log_every=1"]) == 0
    assert (run / "config.yaml").is_file()
    assert (run / "tensorboard").is_dir() == (importlib.util.find_spec("tensorboard") is not None)  # optional extra
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"loss", "dino", "ibot", "koleo", "lr", "teacher_temp"} <= set(r) for r in records)
    [ckpt] = checkpoint_files(run / "checkpoints")
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 3
    exported = load_backbone(run / "teacher_backbone")
    official = torch.load(run / "teacher_backbone_official.pth", weights_only=True)
    assert "storage_tokens" in official and "register_tokens" not in official  # the released DINOv3 layout
    from_ckpt = load_backbone(ckpt)  # a training checkpoint is itself a source load_backbone reads
    for name, value in exported.state_dict().items():
        assert torch.equal(value, state["teacher"][f"backbone.{name}"])
        assert torch.equal(value, from_ckpt.state_dict()[name])
    assert torch.equal(load_backbone(run / "teacher_backbone_official.pth").cls_token, exported.cls_token)


def _final_state(run):
    state = torch.load(checkpoint_files(run / "checkpoints")[-1], weights_only=True)
    records = [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(run / "metrics.jsonl")]
    return state, records


def _assert_same_run(a, b):
    (sa, ra), (sb, rb) = a, b
    assert sa["step"] == sb["step"]
    for key in ("student", "teacher", "terms"):
        for name, value in sa[key].items():
            assert torch.equal(value, sb[key][name]), f"{key}.{name} differs"
    for i, group in sa["optimizer"]["state"].items():
        for name, value in group.items():
            assert torch.equal(value, sb["optimizer"]["state"][i][name])
    assert ra == rb  # every logged loss and metric, bit for bit


def test_resume_after_a_crash_is_bit_exact(tiny_cfg, tmp_path):
    overrides = ["train.steps=6", "checkpoint.every=2", "eval.every=3", "data.num_workers=2"]
    overrides.append("train.grad_accumulation=2")  # data position = steps × micro-batches
    reference = tiny_cfg(*overrides, f"output_dir={tmp_path / 'a'}")
    train(reference, eval_fn=lambda backbone, step: {})

    crashed = tiny_cfg(*overrides, f"output_dir={tmp_path / 'b'}")

    def crash_at_3(backbone, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return {}

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(crashed, eval_fn=crash_at_3)
    assert [p.name for p in checkpoint_files(tmp_path / "b" / "checkpoints")] == ["step_00000002.pt"]
    with open(tmp_path / "b" / "metrics.jsonl", "a") as log:
        log.write('{"step": 3, "loss": 8.1')  # a line torn by a kill in the middle of its write
    train(crashed, resume=True, eval_fn=lambda backbone, step: {})
    _assert_same_run(_final_state(tmp_path / "a"), _final_state(tmp_path / "b"))
    kept = [p.name for p in checkpoint_files(tmp_path / "b" / "checkpoints")]
    assert kept == ["step_00000004.pt", "step_00000006.pt"]  # keep-last-2 (tiny_cpu.yaml)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_exactly(tiny_cfg, tmp_path):
    reference = tiny_cfg("train.steps=4", f"output_dir={tmp_path / 'a'}")
    train(reference)
    stopped = tiny_cfg("train.steps=4", "eval.every=1", f"output_dir={tmp_path / 'b'}")

    def preempt_at_2(backbone, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"eval/called": float(step)}

    with pytest.raises(KeyboardInterrupt):
        train(stopped, eval_fn=preempt_at_2)
    assert [p.name for p in checkpoint_files(tmp_path / "b" / "checkpoints")] == ["step_00000002.pt"]
    assert not (tmp_path / "b" / "teacher_backbone").exists()
    train(tiny_cfg("train.steps=4", f"output_dir={tmp_path / 'b'}"))  # automatic resume from the run folder
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    assert b[1][0] == {"step": 0, "eval/called": 0.0}  # the initial teacher, evaluated before the first step
    b[1][:] = [{k: v for k, v in r.items() if k != "eval/called"} for r in b[1][1:]]
    _assert_same_run(a, b)


def test_non_finite_steps_are_skipped_and_too_many_abort(tiny_cfg, monkeypatch):
    cfg = tiny_cfg()
    cfg.losses.koleo.weight = float("nan")  # a NaN loss (config files cannot set one: validation refuses it)
    parts = build(cfg, DistInfo())
    from dinokit.data.stream import SSLStream

    batch = SSLStream(**parts.stream_args).batch(0)
    parts.meta.train()
    before = [p.clone() for p in parts.meta.parameters()]
    result = train_step(parts.meta, parts.optimizer, [batch], 3, 3.0, contextlib.nullcontext(), torch.device("cpu"))
    assert result.bad
    assert all(torch.equal(a, b) for a, b in zip(before, parts.meta.parameters()))  # nothing changed
    monitor = HealthMonitor(max_bad_steps=2)
    assert monitor.step_is_bad(True, 0, dict) and not monitor.step_is_bad(False, 1, dict)
    monitor.step_is_bad(True, 2, dict)
    with pytest.raises(TrainingDiverged, match="2 consecutive steps.*loss=nan"):
        monitor.step_is_bad(True, 3, lambda: {"loss": float("nan")})
    from dinokit.ssl.losses.koleo import KoleoTerm

    koleo = KoleoTerm.forward

    def diverging_koleo(*args, **kwargs):
        loss, logs = koleo(*args, **kwargs)
        return loss * float("nan"), logs

    monkeypatch.setattr(KoleoTerm, "forward", diverging_koleo)
    with pytest.raises(TrainingDiverged):
        train(tiny_cfg("monitor.max_bad_steps=2", "train.steps=5"))


def test_collapse_warnings_after_the_warmup_only():
    monitor = HealthMonitor(min_target_entropy=0.5, min_feature_std=1e-3, check_after=10)
    collapsed = {"target_entropy": 0.1, "teacher_cls_std": 1e-5, "student_cls_std": 0.1}
    assert monitor.collapse_warnings(5, collapsed) == []
    warnings = monitor.collapse_warnings(20, collapsed)
    assert len(warnings) == 2 and "target_entropy" in warnings[0] and "teacher_cls_std" in warnings[1]
    assert monitor.collapse_warnings(21, collapsed) == []  # rate-limited


def test_continued_pretraining_starts_from_a_checkpoint(tiny_cfg, tmp_path):
    torch.manual_seed(5)
    source = create_backbone("dinov3_test")
    save_backbone(source, tmp_path / "pre.pth", format="official")
    parts = build(tiny_cfg(f"init.backbone={tmp_path / 'pre.pth'}"), DistInfo())
    for model in (parts.meta.student.backbone, parts.meta.teacher.model.backbone):
        for name, value in source.state_dict().items():
            assert torch.equal(model.state_dict()[name], value)
    assert parts.meta.student.backbone.config.rope_rescale == 2.0  # training options from the preset
    save_backbone(create_backbone("dinov2_test"), tmp_path / "v2.pth", format="official")
    with pytest.raises(ConfigError, match="different architecture"):
        build_backbone(tiny_cfg(f"init.backbone={tmp_path / 'v2.pth'}"))


def test_periodic_knn_is_logged_and_leaves_the_weights_alone(tiny_cfg, image_folder, tmp_path):
    labelled = tmp_path / "labelled"
    for i, image in enumerate(sorted(image_folder.glob("*.png"))[:12]):
        (labelled / f"class{i % 3}").mkdir(parents=True, exist_ok=True)
        (labelled / f"class{i % 3}" / image.name).write_bytes(image.read_bytes())
    knn = ["eval.every=2", f"eval.knn.train={labelled}", f"eval.knn.val={labelled}", "eval.knn.size=32",
           "eval.knn.ks=[1, 3]"]  # fmt: skip
    with_knn = train(tiny_cfg("train.steps=4", f"output_dir={tmp_path / 'a'}", *knn))
    records = read_metrics(with_knn / "metrics.jsonl")
    evaluated = [r for r in records if "knn/top1_k1" in r]
    assert [r["step"] for r in evaluated] == [0, 2, 4]  # 0: the initial teacher, the curve's baseline
    assert all(r["knn/top1_k1"] == 100.0 and 0 <= r["knn/top1_k3"] <= 100 for r in evaluated)  # gallery = queries
    without = train(tiny_cfg("train.steps=4", f"output_dir={tmp_path / 'b'}"))
    a, b = load_backbone(with_knn / "teacher_backbone"), load_backbone(without / "teacher_backbone")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_periodic_knn_follows_a_run_on_the_shape_family(tiny_cfg, tmp_path):
    """The layout `dinokit data synth --family shapes` writes is a run's data and its k-NN sets as it is."""
    root = write_shapes(tmp_path / "shapes", config=ShapesConfig(size=32).scaled(0.05), workers=1, progress=False)
    run = train(tiny_cfg(f"data.path={root / 'pretrain'}", "train.steps=2", "eval.every=2",
                         f"eval.knn.train={root / 'classify/train'}", f"eval.knn.val={root / 'classify/val'}",
                         "eval.knn.size=32", "eval.knn.ks=[3]"))  # fmt: skip
    evaluated = [r for r in read_metrics(run / "metrics.jsonl") if "knn/top1_k3" in r]
    assert [r["step"] for r in evaluated] == [0, 2] and all(0 <= r["knn/top1_k3"] <= 100 for r in evaluated)


def test_resuming_keeps_the_records_it_has_and_a_fresh_start_keeps_none(tmp_path):
    records = [{"step": 0, "knn/top1_k20": 12.5}, {"step": 2, "loss": 5.0}, {"step": 4, "loss": 4.0}]
    for start, kept in ((2, records[:2]), (0, [])):  # 0: a run killed before its first checkpoint starts again
        (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        with RunLog(tmp_path, total_steps=4, start_step=start, images_per_step=1):
            pass
        assert read_metrics(tmp_path / "metrics.jsonl") == kept


def test_periodic_knn_settings_are_checked_before_training(tiny_cfg, image_folder):
    with pytest.raises(ConfigError, match="eval.every"):
        tiny_cfg(f"eval.knn.train={image_folder}", f"eval.knn.val={image_folder}").validate()
    with pytest.raises(ConfigError, match="both train and val"):
        tiny_cfg("eval.every=2", f"eval.knn.train={image_folder}").validate()
    with pytest.raises(UserError, match="eval.knn.*need class labels"):  # a flat folder has no classes
        train(tiny_cfg("eval.every=2", f"eval.knn.train={image_folder}", f"eval.knn.val={image_folder}"))


def test_resume_skips_damaged_files_and_refuses_what_it_cannot_use(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg("train.steps=4", "checkpoint.every=2"))
    older, newest = checkpoint_files(run / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:100])  # cut short, as by a full disk outside the atomic rename
    torch.save({"weights": torch.zeros(1)}, run / "checkpoints" / "step_00000009.pt")  # not a training checkpoint
    path, state = load_latest(run / "checkpoints")
    assert path == older and state["step"] == 2

    other_head = "model.ibot_head={n_prototypes: 32, hidden_dim: 64, bottleneck_dim: 32}"
    with pytest.raises(UserError, match=r"another model .*ibot_head\.n_prototypes.*: 2 of another shape"):
        train(tiny_cfg("train.steps=6", other_head))

    older.write_bytes(b"not a checkpoint")
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    with pytest.raises(UserError, match="none of the 3 checkpoint"):
        train(tiny_cfg("train.steps=6"))  # starting at step 0 would overwrite them
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == before
