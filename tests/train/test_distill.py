"""Distillation runs: one frozen teacher, several students, one teacher pass per batch; through the teacher's heads
or its features; exports per student; exact resume; a diverging student does not stop the others; the teacher's
own checkpoints (dinokit and the official training layout); two students on two gloo processes equal one process.
"""

import contextlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dinokit.cli import main
from dinokit.config import ConfigError, find_recipe, load_train_config, recipe_names
from dinokit.data.collate import Batch
from dinokit.data.stream import SSLStream
from dinokit.models import load_backbone
from dinokit.ssl.teachers.distill import resample
from dinokit.train import distributed as D
from dinokit.train.build import build
from dinokit.train.checkpoint import checkpoint_files
from dinokit.train.distill import head_from_state, load_teacher
from dinokit.train.distributed import DistInfo
from dinokit.train.logging import read_metrics
from dinokit.train.loop import train, train_step

from .conftest import TINY
from .test_train_run import _assert_same_run, _final_state

HEADS = ["model.dino_head={hidden_dim: 64, bottleneck_dim: 32}", "model.ibot_head={hidden_dim: 64, bottleneck_dim: 32}"]
SMALL = ["train.batch_size=4", "train.log_every=1", "data.num_workers=0", "crops.local_number=2", "checkpoint.every=0",
         "optim.warmup_steps=1", "optim.freeze_last_layer_steps=1", *HEADS]  # fmt: skip
TWO_VITS = ("distill.students=[{name: vit, backbone: dinov3_test, backbone_options: {drop_path_rate: 0.0, "
            "rope_rescale: null}}, {name: small, backbone: dinov3_test, backbone_options: {depth: 1, "
            "drop_path_rate: 0.0, rope_rescale: null}, base_lr: 0.001}]")  # fmt: skip


@pytest.fixture(scope="module")
def teacher_run(image_folder, tmp_path_factory) -> Path:
    """A 2-step tiny_cpu run: a teacher with DINO and iBOT heads (64 and 48 prototypes)."""
    run = tmp_path_factory.mktemp("distill") / "teacher"
    assert main(["train", "tiny_cpu", f"data.path={image_folder}", f"output_dir={run}", *TINY, "train.steps=2"]) == 0
    return run


def distill_cfg(teacher, image_folder, out, *extra):
    return load_train_config("distill/tiny_cpu", [f"distill.teacher={teacher}", f"data.path={image_folder}",
                                                  f"output_dir={out}", *SMALL, TWO_VITS, *extra])  # fmt: skip


def test_two_students_through_the_teachers_heads_from_the_cli(teacher_run, image_folder, tmp_path):
    out = tmp_path / "d"
    argv = ["train", "configs/distill/tiny_cpu.yaml", f"distill.teacher={teacher_run}", f"data.path={image_folder}",
            f"output_dir={out}", *SMALL, TWO_VITS, "train.steps=3"]  # fmt: skip
    assert main(argv) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["teacher_forwards"] for r in records] == [1.0, 1.0, 1.0]  # one teacher pass for both students
    for name in ("vit", "small"):
        assert {f"{name}/dino", f"{name}/ibot", f"{name}/koleo", f"{name}/loss"} <= set(records[0])
        assert not any(k.startswith(f"{name}/feature") for k in records[0])  # heads mode: no feature terms
        model = load_backbone(out / "students" / name / "backbone")
        official = load_backbone(out / "students" / name / "backbone_official.pth")
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(model(x), official(x))
    assert records[-1]["loss"] == pytest.approx(records[-1]["vit/loss"] + records[-1]["small/loss"], rel=1e-6)
    # each student's heads predict the teacher's prototypes
    state = torch.load(checkpoint_files(out / "checkpoints")[-1], weights_only=True)
    assert state["student"]["vit.dino_head.last_layer.weight_v"].shape[0] == 64
    assert state["student"]["small.ibot_head.last_layer.weight_v"].shape[0] == 48
    assert state["teacher"] == {}  # the frozen teacher is read again from distill.teacher, not copied
    assert set(state["extra_teachers"]) == {"ema_vit", "ema_small"}


def test_students_get_gradients_the_teacher_none_and_see_unmasked_crops(teacher_run, image_folder, tmp_path):
    cfg = distill_cfg(teacher_run, image_folder, tmp_path / "d", "train.steps=1")
    parts = build(cfg, DistInfo())
    meta = parts.meta
    seen = []
    for model in meta.student.values():
        model.backbone.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs.get("masks")),
                                                 with_kwargs=True)  # fmt: skip
    batch = SSLStream(**parts.stream_args).batch(0)
    loss, metrics = meta(batch, parts.schedules(5))
    loss.backward()
    for name, p in meta.student.named_parameters():
        if "last_layer" not in name and "mask_token" not in name:  # unmasked crops: the mask token gets 0
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in meta.teacher.parameters())
    assert all(m is None for m in seen)  # no iBOT masks reach a distillation student
    assert metrics["vit/ibot"] > 0 and metrics["teacher_forwards"] == 1


def test_feature_distillation_from_a_backbone_file_into_a_convnext(teacher_run, image_folder, tmp_path):
    out = tmp_path / "f"
    students = ("distill.students=[{name: cnx, backbone: dinov3_convnext_test}, {name: vit, backbone: dinov3_test}]")
    argv = ["train", "distill/tiny_cpu", f"distill.teacher={teacher_run / 'teacher_backbone'}",
            f"data.path={image_folder}", f"output_dir={out}", *SMALL, students, "train.steps=2",
            "distill.teacher_scale=1.5"]  # fmt: skip
    assert main(argv) == 0
    record = read_metrics(out / "metrics.jsonl")[-1]
    for name in ("cnx", "vit"):
        assert {f"{name}/feature_cls", f"{name}/feature_patches", f"{name}/feature_relations"} <= set(record)
        assert f"{name}/dino" not in record
    assert load_backbone(out / "students" / "cnx" / "backbone").config.kind == "convnext"


def test_the_teacher_sees_larger_crops_with_teacher_scale(teacher_run, image_folder, tmp_path):
    cfg = distill_cfg(teacher_run / "teacher_backbone", image_folder, tmp_path / "d", "distill.teacher_scale=2.0")
    parts = build(cfg, DistInfo())
    batch = SSLStream(**parts.stream_args).batch(0)
    assert batch.extra_crops["teacher"].shape[-2:] == (128, 128) and batch.global_crops.shape[-2:] == (64, 64)
    shared = parts.meta.teacher(batch)
    assert shared.patch_map.shape[-2:] == (8, 8)  # 128 px / patch 16
    teacher_out = parts.meta.teacher.for_student(shared, (4, 4), torch.zeros(0, dtype=torch.long))
    assert teacher_out.patches.shape[1] == 16  # resampled to the student's 4 × 4 grid


def test_a_distillation_run_is_not_a_teacher_with_heads(teacher_run, image_folder, tmp_path):
    out = tmp_path / "d"
    train(distill_cfg(teacher_run, image_folder, out, "train.steps=1"))
    with pytest.raises(ConfigError, match="is a distillation run"):
        load_teacher(str(out))
    assert load_teacher(str(out / "students" / "vit" / "backbone")).has_heads is False  # its students can teach


def test_a_student_can_train_with_a_subset_of_the_terms(teacher_run, image_folder, tmp_path):
    students = ("distill.students=[{name: a, backbone: dinov3_test}, {name: b, backbone: dinov3_convnext_test, "
                "terms: [dino, koleo]}]")  # fmt: skip
    parts = build(distill_cfg(teacher_run, image_folder, tmp_path, students), DistInfo())
    assert set(parts.meta.terms["a"]) == {"dino", "ibot", "koleo"} and set(parts.meta.terms["b"]) == {"dino", "koleo"}
    assert parts.meta.student["b"].ibot_head is None and parts.meta.student["a"].ibot_head is not None
    _, metrics = parts.meta(SSLStream(**parts.stream_args).batch(0), parts.schedules(3))
    assert "b/ibot" not in metrics and "a/ibot" in metrics
    bad = distill_cfg(teacher_run, image_folder, tmp_path, "distill.students=[{name: a, backbone: dinov3_test, "
                      "terms: [gram]}]")  # fmt: skip
    with pytest.raises(ConfigError, match=r"terms \['gram'\] are not in losses"):
        bad.validate()


def test_a_patch14_teacher_sees_crops_of_a_size_it_takes():
    from dinokit.models import create_backbone
    from dinokit.train.distill import teacher_crop_size

    v2, v3 = create_backbone("dinov2_test"), create_backbone("dinov3_test")
    assert teacher_crop_size(v2, 64, 1.0) == 70 and teacher_crop_size(v2, 224, 1.0) == 224  # 5 × 14; 16 × 14
    assert teacher_crop_size(v2, 64, 2.0) == 126 and teacher_crop_size(v3, 64, 1.5) == 96  # RoPE: any size


def test_a_dinov2_teacher_into_a_patch16_student(image_folder, tmp_path):
    from dinokit.models import create_backbone, save_backbone

    save_backbone(create_backbone("dinov2_test"), tmp_path / "v2")
    cfg = distill_cfg(tmp_path / "v2", image_folder, tmp_path / "d", "train.steps=1",
                      "distill.students=[{name: s, backbone: dinov3_test}]")  # fmt: skip
    train(cfg)
    record = read_metrics(tmp_path / "d" / "metrics.jsonl")[-1]
    assert record["s/feature_patches"] > 0  # the teacher's 5 × 5 grid (70 px) resampled to the student's 4 × 4


def test_resample_keeps_constants_and_grids():
    x = torch.full((2, 5, 8, 8), 3.0)
    assert torch.allclose(resample(x, (2, 3)), torch.full((2, 5, 2, 3), 3.0))
    y = torch.randn(1, 4, 4, 4)
    assert resample(y, (4, 4)) is y


def test_heads_mode_needs_a_teacher_with_heads(teacher_run, image_folder, tmp_path, capsys):
    argv = ["train", "distill/tiny_cpu", f"distill.teacher={teacher_run / 'teacher_backbone'}", "distill.mode=heads",
            f"data.path={image_folder}", f"output_dir={tmp_path}", *SMALL]  # fmt: skip
    assert main(argv) == 2
    assert "without DINO / iBOT heads" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.students=[]", "distill.students is empty"),
        ("distill.students=[{name: a, backbone: dinov3_test}, {name: a, backbone: dinov3_test}]", "distinct"),
        ("distill.students=[{name: a, backbone: nope}]", "distill.students[0].backbone"),
        ("train.parallel=fsdp", "train.parallel must be ddp"),
        ("distill.teacher=", "distill.teacher is required"),
    ],
)
def test_bad_distillation_configs_are_named(image_folder, tmp_path, override, message):
    cfg = load_train_config("distill/tiny_cpu", [f"distill.teacher={tmp_path}", f"data.path={image_folder}", override])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        cfg.validate()


def test_resume_is_bit_exact(teacher_run, image_folder, tmp_path):
    """4 steps straight = 2 steps, stop, 2 more (the schedules are flat after step 1, so a shorter first run is an
    interruption)."""
    flat = ["checkpoint.every=2", "teacher.final_momentum=0.98", "optim.schedule=constant"]
    train(distill_cfg(teacher_run, image_folder, tmp_path / "a", "train.steps=4", *flat))
    train(distill_cfg(teacher_run, image_folder, tmp_path / "b", "train.steps=2", *flat))
    train(distill_cfg(teacher_run, image_folder, tmp_path / "b", "train.steps=4", *flat))
    a, b = _final_state(tmp_path / "a"), _final_state(tmp_path / "b")
    _assert_same_run(a, b)
    for name, value in a[0]["extra_teachers"]["ema_vit"].items():
        assert torch.equal(value, b[0]["extra_teachers"]["ema_vit"][name]), name


def test_a_diverging_student_is_skipped_and_the_others_train(teacher_run, image_folder, tmp_path):
    cfg = distill_cfg(teacher_run, image_folder, tmp_path / "d", "train.steps=2")
    parts = build(cfg, DistInfo())
    meta = parts.meta
    meta.terms["small"]["dino"].register_forward_hook(lambda m, args, out: (out[0] * float("nan"), out[1]))
    before = {k: v.clone() for k, v in meta.student.state_dict().items()}
    stream = SSLStream(**parts.stream_args)
    meta.train()
    for step in range(2):
        result = train_step(meta, parts.optimizer, [stream.batch(step)], step, 3.0, contextlib.nullcontext(), "cpu")
        assert not result.bad
    after = meta.student.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith("small."))
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("vit.backbone"))
    assert result.metrics["small/skipped_steps"] == 2 and result.metrics["vit/skipped_steps"] == 0


def test_official_training_checkpoint_heads_are_read(teacher_run, tmp_path):
    """The released training layout: `teacher` → `backbone.*`, `dino_head.*`, `ibot_head.*` (DINOv3: plain last
    layer; DINOv2: weight-normed)."""
    ours = load_teacher(str(teacher_run))
    sd = {f"backbone.{k}": v for k, v in ours.backbone.state_dict().items()}
    sd = {k.replace("register_tokens", "storage_tokens"): v for k, v in sd.items()}
    for name in ("dino_head", "ibot_head"):
        sd.update({f"{name}.{k}": v for k, v in ours.model[name].state_dict().items()})
    torch.save({"teacher": sd, "iteration": 7}, tmp_path / "model_0000007.pth")
    theirs = load_teacher(str(tmp_path / "model_0000007.pth"))
    assert theirs.has_heads and theirs.n_prototypes() == {"dino": 64, "ibot": 48}
    x = torch.randn(3, 128)
    for name in ("dino_head", "ibot_head"):
        torch.testing.assert_close(theirs.model[name](x), ours.model[name](x))
    plain = {"mlp.0.weight": torch.randn(16, 8), "mlp.0.bias": torch.zeros(16), "mlp.2.weight": torch.randn(4, 16),
             "mlp.2.bias": torch.zeros(4), "last_layer.weight": torch.randn(10, 4)}  # fmt: skip
    head = head_from_state(plain)
    assert head.n_prototypes == 10 and head(torch.randn(2, 8)).shape == (2, 10)


# ------------------------------------------------------------------------------------ two processes
def _steps(cfg, info: DistInfo, batch_of_step, steps: int = 2) -> dict:
    torch.manual_seed(0)
    parts = build(cfg, info)
    D.wrap_student(parts.meta, parts.optimizer, info)
    parts.meta.train()
    losses = []
    for step in range(steps):
        r = train_step(parts.meta, parts.optimizer, [batch_of_step(parts, step)], step, 3.0, contextlib.nullcontext(),
                       info.device)  # fmt: skip
        losses.append({k: float(v) for k, v in r.metrics.items() if k.endswith(("/dino", "/ibot", "/koleo"))})
        losses[-1]["teacher_forwards"] = float(r.metrics["teacher_forwards"])
    return {"losses": losses, "student": parts.meta.student.state_dict()}


def _cfg(teacher, data, batch_size):
    return load_train_config("distill/tiny_cpu", [f"distill.teacher={teacher}", f"data.path={data}", *SMALL, TWO_VITS,
                                                  f"train.batch_size={batch_size}"])  # fmt: skip


def _worker(rank: int, port: int, teacher: str, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank)
    result = _steps(_cfg(teacher, data, 3), info, lambda parts, step: SSLStream(**parts.stream_args).batch(step))
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _merge(parts: list[Batch]) -> Batch:
    G, L = 2, parts[0].local_crops.shape[0] // parts[0].batch_size

    def crop_major(name: str, n: int) -> torch.Tensor:
        return torch.cat([getattr(p, name).unflatten(0, (n, -1)) for p in parts], dim=1).flatten(0, 1)

    masks = torch.zeros(G * sum(p.batch_size for p in parts), 0, dtype=torch.bool)
    empty = torch.zeros(0, dtype=torch.long)
    return Batch(crop_major("global_crops", G), crop_major("local_crops", L), masks, empty, empty.float(), G,
                 index=parts[0].index)  # fmt: skip


def test_two_students_on_two_gloo_processes_equal_one_process(teacher_run, image_folder, tmp_path):
    """Each student on its own rank trains on the whole global batch (both ranks' images, gathered with the
    teacher's outputs): its losses and weights equal a one-process run of both students on that batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(teacher_run), str(image_folder), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    def global_batch(parts, step):
        args = {**parts.stream_args, "world_size": 2, "batch_size": 3}
        return _merge([SSLStream(**{**args, "rank": r}).batch(step) for r in range(2)])

    single = _steps(_cfg(str(teacher_run), str(image_folder), 6), DistInfo(), global_batch)
    for rank, name in enumerate(("vit", "small")):
        for step in range(2):
            assert ranks[rank]["losses"][step]["teacher_forwards"] == 1.0
            for term in ("dino", "ibot", "koleo"):
                key = f"{name}/{term}"
                assert abs(ranks[rank]["losses"][step][key] - single["losses"][step][key]) < 1e-5, (key, step)
        own = {k: v for k, v in single["student"].items() if k.startswith(f"{name}.")}
        assert set(own) == set(ranks[rank]["student"])  # each rank holds only its student
        for k, v in own.items():
            torch.testing.assert_close(ranks[rank]["student"][k], v, rtol=1e-5, atol=1e-5, msg=k)


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_validates(name, tmp_path):
    """With what a user must add: a data path; a teacher; for a stage, the architecture its `init.run` gives."""
    required = [f"data.path={tmp_path}"]
    required += [f"distill.teacher={tmp_path}"] if name.startswith("distill/") else []
    required += ["model.backbone=dinov3_vits16"] if name.startswith("stages/") else []
    load_train_config(name, required).validate()


def test_a_bare_recipe_name_means_the_pretraining_recipe():
    assert find_recipe("tiny_cpu").parent.name == "pretrain"
    assert find_recipe("distill/tiny_cpu").parent.name == "distill"
