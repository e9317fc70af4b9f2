"""DINOv3's stages as runs: pretrain → Gram anchoring → high resolution through the CLI, each resuming exactly;
the Gram teacher's schedule and sources; the Gram term; crops of several sizes; recipes by name."""

import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinokit.cli import main
from dinokit.config import ConfigError, load_train_config
from dinokit.data.multicrop import MultiCrop
from dinokit.data.stream import SSLStream
from dinokit.models import load_backbone, save_backbone
from dinokit.ssl import gram_loss
from dinokit.ssl.teachers.gram import GramConfig, GramTeacher
from dinokit.train.build import build
from dinokit.train.checkpoint import checkpoint_files
from dinokit.train.distributed import DistInfo
from dinokit.train.logging import read_metrics
from dinokit.train.loop import train

from .conftest import TINY
from .test_train_run import _assert_same_run, _final_state

STAGE = ["train.log_every=1", "data.num_workers=0"]


@pytest.fixture(scope="module")
def pretrained(image_folder, tmp_path_factory) -> Path:
    """A 3-step tiny_cpu run (the stages' starting point), through the CLI."""
    run = tmp_path_factory.mktemp("stages") / "pretrain"
    argv = ["train", "tiny_cpu", f"data.path={image_folder}", f"output_dir={run}", *TINY, "train.steps=3"]
    assert main(argv) == 0
    return run


def gram_cfg(pretrained, out, *extra):
    return load_train_config("stages/gram_tiny_cpu", [f"init.run={pretrained}", f"output_dir={out}", *STAGE,
                                                      "gram.teacher_crop_size=96", *extra])  # fmt: skip


def test_pretrain_gram_highres_chain_through_the_cli(pretrained, tmp_path):
    gram = tmp_path / "gram"
    argv = ["train", "configs/stages/gram_tiny_cpu.yaml", f"init.run={pretrained}", f"output_dir={gram}", *STAGE,
            "train.steps=3", "gram.update_every=2", "gram.teacher_crop_size=96"]  # fmt: skip
    assert main(argv) == 0
    records = read_metrics(gram / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"gram", "gram_weighted", "weight/gram", "dino_local_weight"} <= set(r) for r in records)
    assert records[0]["weight/gram"] == 0.0 and records[1]["weight/gram"] > 0  # the ramp (20 steps to 2.0)
    assert records[1]["gram"] > 0 and records[1]["gram_weighted"] == pytest.approx(
        records[1]["weight/gram"] * records[1]["gram"], rel=1e-6
    )
    state = torch.load(checkpoint_files(gram / "checkpoints")[-1], weights_only=True)
    assert int(state["extra_teachers"]["gram"]["copies"]) == 2  # at step 0 (the run's teacher) and after step 2
    cfg = load_train_config(None, [f"init.run={pretrained}", f"output_dir={tmp_path / 'x'}"])
    assert cfg.model.backbone == "dinov3_test" and cfg.crops.global_size == 64  # the architecture of the run

    highres = tmp_path / "highres"
    argv = ["train", "stages/highres_tiny_cpu", f"init.run={gram}", f"output_dir={highres}", *STAGE, "train.steps=3"]
    assert main(argv) == 0
    records = read_metrics(highres / "metrics.jsonl")
    assert all(r["gram"] > 0 for r in records)  # a fixed Gram teacher from the start, weight 1.5
    state = torch.load(checkpoint_files(highres / "checkpoints")[-1], weights_only=True)
    assert int(state["extra_teachers"]["gram"]["copies"]) == 1
    exported = load_backbone(highres / "teacher_backbone")
    assert exported.config.embed_dim == 128


def test_a_stage_keeps_the_architecture_and_its_own_folder(pretrained, tmp_path, capsys):
    argv = ["train", "stages/gram_tiny_cpu", f"init.run={pretrained}", f"output_dir={tmp_path / 'g'}",
            "model.backbone=dinov3_vitt16"]  # fmt: skip
    assert main(argv) == 2
    assert "another architecture" in capsys.readouterr().err
    assert main(["train", "stages/gram_tiny_cpu", f"init.run={pretrained}", f"output_dir={pretrained}"]) == 2
    assert "new folder" in capsys.readouterr().err
    assert main(["train", "stages/gram_tiny_cpu", f"init.run={tmp_path}", f"output_dir={tmp_path / 'g'}"]) == 2
    assert "not a dinokit run folder" in capsys.readouterr().err
    assert main(["train", "stages/gram_tiny_cpu", f"init.run={pretrained}", "losses.gram=null"]) == 2
    assert "needs both the loss term" in capsys.readouterr().err


def test_the_stage_starts_from_the_runs_newest_checkpoint(pretrained, tmp_path):
    parts = build(gram_cfg(pretrained, tmp_path / "g"), DistInfo())
    from dinokit.train.checkpoint import start_from_run

    used = start_from_run(parts, pretrained, keep_optimizer=False)
    state = torch.load(used, weights_only=True)
    assert state["step"] == 3
    for name, value in parts.meta.student.state_dict().items():
        assert torch.equal(value, state["student"][name]), name
    for name, value in parts.meta.teacher.state_dict().items():
        assert torch.equal(value, state["teacher"][name]), name
    gram = parts.meta.teachers["gram"]
    assert not bool(gram.ready)
    gram.on_train_start(0)  # the loop's call once the weights are in place: the first copy
    assert bool(gram.ready) and int(gram.copies) == 1
    for a, b in zip(gram.backbone.parameters(), parts.meta.teacher.backbone.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("stage", ["gram", "highres"])
def test_each_stage_resumes_bit_exactly(pretrained, tmp_path, stage):
    recipe = {"gram": "stages/gram_tiny_cpu", "highres": "stages/highres_tiny_cpu"}[stage]
    extra = ["train.steps=4", "checkpoint.every=2", "eval.every=1", "gram.update_every=3", "gram.max_updates=2"]
    extra += ["gram.teacher_crop_size=96"] if stage == "gram" else []

    def cfg(name):
        return load_train_config(recipe, [f"init.run={pretrained}", f"output_dir={tmp_path / name}", *STAGE, *extra])

    train(cfg("a"))

    def crash_at_3(backbone, step):
        if step == 3:
            raise RuntimeError("simulated crash")
        return {}

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg("b"), eval_fn=crash_at_3)
    train(cfg("b"), resume=True)
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    _assert_same_run(a, b)
    for name, value in a[0]["extra_teachers"]["gram"].items():
        assert torch.equal(value, b[0]["extra_teachers"]["gram"][name]), name


def test_a_frozen_teacher_comes_from_a_run_and_never_changes(pretrained, tmp_path, tiny_cfg):
    cfg = tiny_cfg("teacher.kind=frozen", f"teacher.checkpoint={pretrained}", "train.steps=2",
                   f"output_dir={tmp_path / 'distil'}")  # fmt: skip
    parts = build(cfg, DistInfo())
    saved = torch.load(checkpoint_files(pretrained / "checkpoints")[-1], weights_only=True)["teacher"]
    for name, value in parts.meta.teacher.state_dict().items():
        assert torch.equal(value, saved[name]), name
    run = train(cfg)
    final = torch.load(checkpoint_files(run / "checkpoints")[-1], weights_only=True)
    for name, value in final["teacher"].items():
        assert torch.equal(value, saved[name]), name  # two optimiser steps later, unchanged
    assert any(not torch.equal(v, final["student"][k]) for k, v in saved.items())  # the student trained
    with pytest.raises(ConfigError, match="teacher.checkpoint"):
        tiny_cfg("teacher.kind=frozen").validate()


def test_gram_teacher_schedule_counts_copies_from_first_update():
    class Source:
        backbone = torch.nn.Linear(2, 2)

    teacher = GramTeacher(Source(), GramConfig(first_update=2, update_every=3, max_updates=3))
    taken = []
    teacher.on_train_start(0)
    for step in range(15):
        with torch.no_grad():
            Source.backbone.weight.add_(1.0)  # the EMA teacher moves every step
        teacher.on_step_end(step)
        if teacher.backbone.weight[0, 0] == Source.backbone.weight[0, 0]:
            taken.append(step + 1)
    assert taken == [2, 5, 8] and int(teacher.copies) == 3  # steps done at each copy; at most 3
    fixed = GramTeacher(Source(), GramConfig(first_update=0, max_updates=1))
    fixed.on_train_start(0)
    for step in range(5):
        fixed.on_step_end(step)
    assert int(fixed.copies) == 1
    assert not GramTeacher(Source(), GramConfig(first_update=0)).due(-1)
    problems = GramConfig(first_update=None).problems()
    assert problems and "ckpt" in problems[0]


def test_gram_teacher_loads_a_released_backbone_file(pretrained, tmp_path):
    released = tmp_path / "released.pth"
    source = load_backbone(pretrained / "teacher_backbone")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)  # unlike the run's own teacher
    save_backbone(source, released, format="official")
    parts = build(gram_cfg(pretrained, tmp_path / "g", f"gram.ckpt={released}", "gram.first_update=null"),
                  DistInfo())  # fmt: skip
    gram = parts.meta.teachers["gram"]
    assert bool(gram.ready) and int(gram.copies) == 0
    for name, value in source.state_dict().items():
        assert torch.equal(gram.backbone.state_dict()[name], value), name
    gram.on_train_start(0)
    assert int(gram.copies) == 0  # no copy is due: first_update is null


def test_gram_term_compares_masked_student_patches_with_the_resized_teacher(pretrained, tmp_path):
    parts = build(gram_cfg(pretrained, tmp_path / "g", "gram.teacher_crop_size=128"), DistInfo())
    meta = parts.meta
    meta.teachers["gram"].on_train_start(0)
    batch = SSLStream(**parts.stream_args).batch(0)
    assert batch.extra_crops["gram"].shape == (2 * 4, 3, 128, 128)  # the Gram teacher's crops, 2× the global ones
    meta.train()
    values = {**meta.schedules(100), "weight/gram": 1.0}
    with torch.no_grad():
        student = meta.student(batch)
        value, _ = meta.terms["gram"](student, None, batch, values)
        patches = meta.teachers["gram"].backbone.forward_features(batch.extra_crops["gram"]).patch_map()  # [8,D,8,8]
        resized = F.interpolate(patches, size=(4, 4), mode="bicubic", align_corners=False)  # the student's grid
        expected = gram_loss(student.global_patches, resized.flatten(2).transpose(1, 2))
    torch.testing.assert_close(value, expected)
    assert value > 0
    values["weight/gram"] = 0.0  # a zero weight skips the teacher's forward
    assert meta.terms["gram"](student, None, batch, values)[0] == 0


def test_gram_crops_cover_the_global_crops_without_colour_distortion():
    views = MultiCrop(global_size=32, local_number=1, local_size=16)
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(rng.integers(0, 255, (3, 48, 64), dtype=np.uint8)) for _ in range(40)]
    seeds = [random.Random(i) for i in range(40)]
    plans = [views.plan(48, 64, random.Random(i)) for i in range(40)]
    global_crops, _, extra = views.crops(images, seeds, extra_sizes={"gram": 32})
    clean = [i for i, p in enumerate(plans) if p[0].jitter is None and not p[0].gray and p[0].blur_sigma is None]
    assert clean  # global crop 1 of these images had no colour distortion: their Gram crop is the same picture
    for i in clean:
        torch.testing.assert_close(extra["gram"][i], global_crops[i])
    distorted = [i for i, p in enumerate(plans) if p[0].jitter is not None]
    assert any(not torch.allclose(extra["gram"][i], global_crops[i]) for i in distorted)


def test_resolutions_are_drawn_per_batch_with_masks_on_their_grid(pretrained, tmp_path):
    cfg = load_train_config("stages/highres_tiny_cpu", [f"init.run={pretrained}", f"output_dir={tmp_path / 'h'}"])
    parts = build(cfg, DistInfo())
    streams = [SSLStream(**{**parts.stream_args, "rank": r, "world_size": 2}) for r in range(2)]
    drawn = [streams[0].sizes_of(b).global_size for b in range(40)]
    assert set(drawn) == {96, 128} and 0.4 < drawn.count(96) / 40 < 0.85  # ratios 0.6 / 0.4
    assert drawn == [streams[1].sizes_of(b).global_size for b in range(40)]  # the same on every rank
    accumulating = SSLStream(**{**parts.stream_args, "micro_batches": 2})
    assert all(accumulating.sizes_of(2 * s) == accumulating.sizes_of(2 * s + 1) for s in range(20))  # per step
    for b in (drawn.index(96), drawn.index(128)):
        batch = streams[0].batch(b)
        g = batch.global_crops.shape[-1]
        assert batch.masks.shape[1] == (g // 16) ** 2 and batch.masks.any()
        assert batch.extra_crops["gram"].shape[-1] == {96: 144, 128: 192}[g]
        assert batch.local_crops.shape[-1] == {96: 32, 128: 48}[g]


def test_recipes_by_name_and_print_config(capsys, tmp_path):
    assert main(["train", "dinov3_vits16", "--print-config", "data.path=x"]) == 0
    printed = capsys.readouterr().out
    assert "backbone: dinov3_vits16" in printed and "lr_scaling: dinov3_sqrt_wrt_1024" in printed
    assert "path: x" in printed
    assert main(["train", "no_such_recipe"]) == 2
    assert "stages/gram" in capsys.readouterr().err  # the message lists the recipes
    with pytest.raises(ConfigError, match=r"gram.teacher_crop_size=100 is not a multiple of the patch size 14"):
        load_train_config("stages/gram", ["data.path=x", "model.backbone=dinov2_vits14", "crops.global_size=98",
                                          "crops.local_size=42", "gram.teacher_crop_size=100"]).validate()  # fmt: skip
    for name in ("tiny_cpu", "dinov3_vits16", "dinov3_vitl16", "dinov3_vit7b16", "stages/gram", "stages/highres"):
        cfg = load_train_config(name, ["data.path=x"] + (["model.backbone=dinov3_vits16"] if "stages" in name else []))
        cfg.validate()


@pytest.mark.slow
def test_an_installed_wheel_carries_the_recipes(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(root)], check=True, cwd=tmp_path)  # fmt: skip
    [wheel] = tmp_path.glob("dinokit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"dinokit/recipes/pretrain/tiny_cpu.yaml", "dinokit/recipes/stages/gram.yaml"} <= set(names)
