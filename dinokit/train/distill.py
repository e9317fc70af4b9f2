"""Building a distillation run (`distill` section): the frozen teacher, this rank's students with their heads,
EMAs, loss terms and optimiser groups, and the data stream. `build.build` hands over here when `distill` is set;
the loop, checkpoints and exports are the same as for self-distillation (`ssl/distillation.py` describes the
step).

The teacher (`distill.teacher`), in the order tried:
1. a dinokit run folder or training checkpoint: its teacher with the DINO / iBOT heads, as recorded in its config;
2. an official DINOv2 / DINOv3 training checkpoint: the `teacher` (or `model`) entry's `backbone.*` (read like any
   backbone file) and `dino_head.*` / `ibot_head.*`, whose sizes are read from the tensors;
3. anything else `load_backbone` reads: a backbone without heads (feature distillation).

Students on ranks: in one process every student is here. With several processes each student has a contiguous
sub-group of ranks (`ranks: [first, end)`, by default the world split evenly in the listed order) and each rank
serves exactly one student.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, PretrainConfig
from ..data.multicrop import MultiCrop
from ..data.stream import CropSizes, open_source
from ..models import load_backbone
from ..models.architectures import architecture_of
from ..models.heads import DINOHead
from ..ssl.distillation import DistillMetaArch, Placement
from ..ssl.losses import TERMS, BuildContext
from ..ssl.meta_arch import build_ssl_model, build_terms
from ..ssl.schedules import build_schedules
from ..ssl.targets import build_target
from ..ssl.teachers import EMATeacher
from ..ssl.teachers.distill import DistillTeacher
from . import distributed as D
from .build import Parts, load_checkpoint_model
from .optim import build_optimizer, param_groups

log = logging.getLogger("dinokit.train")


# ---------------------------------------------------------------------------------------------------- teacher
def load_teacher(source: str, mode: str = "auto") -> DistillTeacher:
    """The frozen teacher from `source` (module docstring); `mode` "features" drops its heads, "heads" requires
    them."""
    backbone, dino, ibot = _read_teacher(source)
    if mode == "heads" and dino is None:
        raise ConfigError(f"distill.mode=heads: {source} holds a backbone without DINO / iBOT heads (a released "
                          "backbone file has none); use distill.mode=features, or a training checkpoint")  # fmt: skip
    if mode == "features":
        dino = ibot = None
    return DistillTeacher(backbone, dino, ibot)


def _read_teacher(source: str):
    path = Path(source)
    state = None
    if path.is_file() and path.suffix in (".pth", ".pt", ".bin"):
        for mmap in (True, False):  # memory-mapped, so the weights are read once, by the loader that uses them;
            try:  # files in torch's legacy (non-zip) format cannot be mapped and are read whole
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
                break
            except Exception:
                state = None  # not a plain training checkpoint: load_backbone below explains what it is
    dinokit_run = path.is_dir() and (path / "checkpoints").is_dir()
    if dinokit_run or (isinstance(state, dict) and "config" in state and "teacher" in state):
        model = load_checkpoint_model(source)  # the architecture comes from the run's config
        return model.backbone, model.dino_head, model.ibot_head
    heads = _official_heads(state) if isinstance(state, dict) else {}
    backbone = load_backbone(source)
    return backbone, heads.get("dino_head"), heads.get("ibot_head")


def _official_heads(state: dict) -> dict[str, DINOHead]:
    """The DINO / iBOT heads of an official training checkpoint's teacher (sizes from the tensors)."""
    for key in ("teacher", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    prefix = "teacher." if any(k.startswith("teacher.dino_head.") for k in state) else ""
    heads = {}
    for name in ("dino_head", "ibot_head"):
        sd = {k[len(prefix + name) + 1 :]: v for k, v in state.items() if k.startswith(f"{prefix}{name}.")}
        if sd:
            heads[name] = head_from_state(sd)
    return heads


def head_from_state(sd: dict[str, torch.Tensor]) -> DINOHead:
    """A `DINOHead` with the sizes of a released head state dict (`mlp.{0,2,4}.*`, `last_layer.weight` or the
    weight-normed `last_layer.weight_g / weight_v`), loaded strictly."""
    linears = sorted(int(k.split(".")[1]) for k in sd if k.startswith("mlp.") and k.endswith(".weight"))
    if not linears and "mlp.weight" in sd:  # one layer
        first = last = sd["mlp.weight"]
        nlayers = 1
    else:
        first, last, nlayers = sd[f"mlp.{linears[0]}.weight"], sd[f"mlp.{linears[-1]}.weight"], len(linears)
    weight_norm = "last_layer.weight_v" in sd
    prototypes = sd["last_layer.weight_v" if weight_norm else "last_layer.weight"]  # [K, bottleneck]
    head = DINOHead(first.shape[1], prototypes.shape[0], first.shape[0], last.shape[0], nlayers,
                    "weight_norm" if weight_norm else "plain")  # fmt: skip
    try:
        head.load_state_dict(sd)
    except RuntimeError as e:
        raise ConfigError(f"the teacher's head does not have the released layout: {str(e).splitlines()[0]}") from None
    return head


# --------------------------------------------------------------------------------------------------- students
def placement(cfg: PretrainConfig, info: D.DistInfo) -> tuple[list[int], Placement | None]:
    """Indices of this rank's students, and (several processes) its `Placement`."""
    students = cfg.distill.students
    if info.world_size == 1:
        return list(range(len(students))), None
    ranges = [s.ranks for s in students]
    if all(r is None for r in ranges):
        if info.world_size % len(students):
            raise ConfigError(f"{len(students)} students cannot split {info.world_size} ranks evenly; give each "
                              "student its ranks: [first, end)")  # fmt: skip
        size = info.world_size // len(students)
        ranges = [(i * size, (i + 1) * size) for i in range(len(students))]
    covered = sorted(r for a, b in ranges for r in range(a, b))
    sizes = {b - a for a, b in ranges}
    if covered != list(range(info.world_size)) or len(sizes) != 1 or info.world_size % sizes.pop():
        raise ConfigError(f"distill.students[*].ranks {ranges} must cover ranks 0…{info.world_size - 1} once, in "
                          "groups of one size that divides the world")  # fmt: skip
    import torch.distributed as dist

    groups = [dist.new_group(list(range(a, b))) for a, b in ranges]  # every rank creates every group
    mine = next(i for i, (a, b) in enumerate(ranges) if a <= info.rank < b)
    a, b = ranges[mine]
    return [mine], Placement(groups[mine], b - a, info.rank - a, info.world_size)


def build_distillation(cfg: PretrainConfig, info: D.DistInfo) -> Parts:
    d = cfg.distill
    # a missing or empty data.path fails here, before any model is built
    source = open_source(cfg.data.path, cfg.seed, cfg.data.shuffle_buffer, cfg.data.shards_open)
    teacher = load_teacher(d.teacher, d.mode)
    mode = "heads" if teacher.has_heads else "features"
    terms_cfg = {n: c for n, c in cfg.losses.enabled().items() if TERMS[n].teacher in (None, mode)}
    if not any(TERMS[n].teacher == mode for n in terms_cfg):
        wanted = [n for n, k in TERMS.items() if k.teacher == mode]
        raise ConfigError(f"distillation through the teacher's {mode} needs one of the loss terms {wanted} in "
                          "losses (configs/distill/tiny_cpu.yaml lists them)")  # fmt: skip
    mine, place = placement(cfg, info)
    global_batch = cfg.train.batch_size * info.world_size * cfg.train.grad_accumulation
    schedules = build_schedules(cfg.optim, cfg.teacher, terms_cfg, cfg.train.steps, global_batch)
    group = place.group if place else None
    t = cfg.teacher
    k = teacher.n_prototypes() if teacher.has_heads else {}
    model_cfg = cfg.model
    if k:  # each student's heads predict the teacher's prototypes
        model_cfg = dataclasses.replace(
            model_cfg, dino_head=dataclasses.replace(model_cfg.dino_head, n_prototypes=k["dino"]),
            ibot_head=model_cfg.ibot_head and dataclasses.replace(model_cfg.ibot_head, n_prototypes=k["ibot"]),
        )  # fmt: skip
    term_ctx = BuildContext(
        target=lambda n: build_target(t.target, n, t.center_momentum, t.sinkhorn_iterations, group),
        n_prototypes=k,
        subgroup=lambda size: None,  # KoLeo per device
    )
    students, emas, terms, groups = {}, {}, {}, []
    for i in mine:
        s = d.students[i]
        torch.manual_seed(cfg.seed + i)  # a student's initial weights do not depend on which others share the run
        key = f"distill.students[{i}].backbone"
        backbone = architecture_of(s.backbone).model(cfg.backbone_config(s.backbone, s.backbone_options, key))
        own = {n: c for n, c in terms_cfg.items() if s.terms is None or n in s.terms}
        if not any(TERMS[n].teacher == mode for n in own):
            raise ConfigError(f"distill.students[{i}] ({s.name}) has no loss term that reads the teacher's {mode} "
                              f"among its terms {s.terms}")  # fmt: skip
        model = build_ssl_model(backbone, model_cfg, own, teacher.backbone.embed_dim, mask_inputs=False)
        students[s.name] = model
        emas[s.name] = EMATeacher(model, schedules["momentum"])
        terms[s.name] = build_terms(own, term_ctx)
        groups += _student_groups(s, model, cfg)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("student %s: %s, %.1f M parameters", s.name, s.backbone, n_params / 1e6)
    seeds = {d.students[i].name: cfg.seed * 1000 + i for i in mine}
    meta = DistillMetaArch(teacher, students, emas, terms, schedules, cfg.masking, place, seeds)
    meta.to(info.device)
    if cfg.train.activation_checkpointing:
        for model in students.values():
            model.backbone.set_activation_checkpointing(True)
    if cfg.train.compile:
        for model in [teacher.backbone, *(m.backbone for m in students.values())]:
            for unit in model.fsdp_units():
                unit.compile()
    optimizer = build_optimizer(groups, cfg.optim.betas)
    sizes = CropSizes(cfg.crops.global_size, cfg.crops.local_size)
    size = teacher_crop_size(teacher.backbone, cfg.crops.global_size, d.teacher_scale)
    if size != cfg.crops.global_size:
        sizes = dataclasses.replace(sizes, extra={"teacher": size})
    stream_args = dict(
        source=source,
        views=MultiCrop.from_config(cfg.crops, cfg.data),
        masks=None,  # the students see unmasked crops; each draws the patches it predicts (`ssl/distillation.py`)
        masking=cfg.masking,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        patch_size=teacher.backbone.patch_size,
        sizes=[sizes],
        micro_batches=cfg.train.grad_accumulation,
    )
    log.info("teacher %s (%s); global batch %d; peak lr %.3g", d.teacher, mode, global_batch, schedules["lr"].peak)
    return Parts(meta, optimizer, schedules, stream_args, global_batch)


def teacher_crop_size(backbone: nn.Module, global_size: int, scale: float) -> int:
    """The side of the teacher's crops: `scale ×` the students' global crops, rounded to a multiple of the teacher's
    patch size when its learned position embedding needs one (a DINOv2 teacher, patch 14, for patch-16 students)."""
    size = round(global_size * scale)
    p = backbone.patch_size
    if getattr(backbone.config, "pos_embed", None) == "learned" and size % p:
        snapped = max(p, round(size / p) * p)
        log.info("the teacher sees %d px crops (%d rounded to its patch size %d)", snapped, size, p)
        size = snapped
    return size


def _student_groups(s, model: nn.Module, cfg: PretrainConfig) -> list[dict]:
    """The optimiser groups of one student, named `<student>/<module>` (clipping and gradient norms per student
    and module), with its own LR and weight-decay factors."""
    o = cfg.optim
    heads = {n: getattr(model, n) for n in ("dino_head", "ibot_head", "projector") if getattr(model, n) is not None}
    lwd = o.layerwise_decay if s.layerwise_decay is None else s.layerwise_decay
    pe = o.patch_embed_lr_mult if s.patch_embed_lr_mult is None else s.patch_embed_lr_mult
    lr_factor = 1.0 if s.base_lr is None else s.base_lr / o.base_lr
    groups = param_groups(model.backbone, heads, lwd, pe)
    for g in groups:
        g["module"] = f"{s.name}/{g['module']}"
        g["lr_multiplier"] *= lr_factor
        g["wd_multiplier"] *= s.weight_decay_scale
    return groups

