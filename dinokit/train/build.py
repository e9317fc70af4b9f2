"""From a validated `PretrainConfig` to the objects the loop drives: backbone, student / teachers / loss terms
(the meta-architecture), optimiser, schedules and the data stream. Derived values (scaled LR, global batch)
are computed here and logged, never written back into the config.

Everything kind-specific is a table lookup: the backbone's kind (`models/architectures.py`), the teachers
(`ssl/teachers/`), the loss terms (`ssl/losses/`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ConfigError, PretrainConfig, from_dict
from ..config.recipes import TRAINING_ONLY
from ..data.masking import BlockMaskGenerator
from ..data.multicrop import MultiCrop
from ..data.stream import CropSizes, SSLStream, open_source, raise_stream_errors
from ..models import create_backbone, load_backbone
from ..models.architectures import architecture_of
from ..ssl.losses import BuildContext
from ..ssl.meta_arch import SSLMetaArch, build_ssl_model, build_terms
from ..ssl.schedules import Schedules, build_schedules
from ..ssl.targets import build_target
from ..ssl.teachers import TEACHERS, TeacherContext
from . import distributed as D
from .checkpoint import load_latest, read_checkpoint_file
from .optim import build_optimizer, param_groups

log = logging.getLogger("dinokit.train")


@dataclass
class Parts:
    meta: SSLMetaArch
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    stream_args: dict  # SSLStream arguments but the start batch
    global_batch: int


def build_backbone(cfg: PretrainConfig) -> nn.Module:
    """A fresh backbone from the preset, or — `init.backbone` — weights from any checkpoint `load_backbone`
    reads, whose architecture must be the preset's (training-only options come from the config)."""
    if cfg.init.backbone is None:
        return architecture_of(cfg.model.backbone).model(cfg.backbone_config())
    return load_matching_backbone(cfg, cfg.init.backbone, "init.backbone")


def load_matching_backbone(cfg: PretrainConfig, source: str, key: str) -> nn.Module:
    """`load_backbone(source)` with the training options of the config; a `ConfigError` naming `key` when its
    architecture is not `model.backbone`'s."""
    wanted = cfg.backbone_config()
    model = load_backbone(source, **{k: getattr(wanted, k) for k in TRAINING_ONLY if hasattr(wanted, k)})
    ignore = dict.fromkeys(("extra", "ffn_hidden_dim", "layerscale_init"))
    mine = {k: v for k, v in model.config.to_dict().items() if k not in ignore}
    theirs = {k: v for k, v in wanted.to_dict().items() if k not in ignore}
    diff = sorted(k for k in theirs if mine.get(k) != theirs[k])
    if getattr(model.config, "ffn_hidden", None) != getattr(wanted, "ffn_hidden", None):
        diff.append("ffn width")
    if diff:
        raise ConfigError(
            f"{key}={source} holds a different architecture than model.backbone={cfg.model.backbone} "
            f"(differs in {', '.join(diff)}); set model.backbone to the matching preset"
        )
    return model


def load_checkpoint_model(source: str) -> nn.Module:
    """The teacher (backbone and heads) of a dinokit training checkpoint or run folder, with the architecture
    recorded in it: what a frozen teacher is built from."""
    path = Path(source)
    found = load_latest(path / "checkpoints") if path.is_dir() else None
    state = found[1] if found else (read_checkpoint_file(path) if path.is_file() else None)
    if not isinstance(state, dict) or "config" not in state or "teacher" not in state:
        raise ConfigError(f"teacher.checkpoint={source} is not a dinokit training checkpoint or run folder")
    if state["config"].get("distill"):
        raise ConfigError(f"{source} is a distillation run: its students have no teacher heads to distil "
                          "through; give one student's backbone (students/<name>/backbone) to distil its features")
    saved = from_dict(PretrainConfig, {k: v for k, v in state["config"].items() if k in ("model", "losses")})
    backbone = create_backbone(saved.model.backbone, **saved.model.backbone_options)
    model = build_ssl_model(backbone, saved.model, saved.losses.enabled())
    model.load_state_dict(state["teacher"])
    return model


def mask_generator(masking, grid: tuple[int, int]) -> BlockMaskGenerator:
    """iBOT block masks over `grid` as the `masking` section describes."""
    m = masking
    max_block = m.max_block_fraction * grid[0] * grid[1]
    return BlockMaskGenerator(grid, m.min_block_patches, max_block, m.min_aspect, m.style == "dinov3")


def crop_sizes(cfg: PretrainConfig) -> list[CropSizes]:
    """The crop sizes of the batches: the fixed ones, or one entry per `crops.resolutions` row; with a Gram
    teacher at its own resolution, the size of its crops."""
    gram_size = cfg.gram.teacher_crop_size if cfg.gram is not None else None
    rows = cfg.crops.resolutions
    if not rows:
        return [CropSizes(cfg.crops.global_size, cfg.crops.local_size, {"gram": gram_size} if gram_size else {})]
    out = []
    for r in rows:
        size = r.gram_size or gram_size
        out.append(CropSizes(r.global_size, r.local_size, {"gram": size} if size and cfg.gram else {}, r.ratio))
    return out


def build(cfg: PretrainConfig, dist_info: D.DistInfo) -> Parts:
    if cfg.distill is not None:  # one frozen teacher, several students: `distill.py`
        from .distill import build_distillation

        return build_distillation(cfg, dist_info)
    # a missing or empty data.path fails here, before any model is built
    source = open_source(cfg.data.path, cfg.seed, cfg.data.shuffle_buffer, cfg.data.shards_open)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    backbone = build_backbone(cfg)
    terms_cfg = cfg.losses.enabled()
    student = build_ssl_model(backbone, cfg.model, terms_cfg)
    global_batch = cfg.train.batch_size * dist_info.world_size * cfg.train.grad_accumulation
    schedules = build_schedules(cfg.optim, cfg.teacher, terms_cfg, cfg.train.steps, global_batch)

    ctx = TeacherContext(student, schedules["momentum"], {}, load_checkpoint_model,
                         functools.partial(load_matching_backbone, cfg, key="gram.ckpt"))  # fmt: skip
    teachers = {"main": TEACHERS[cfg.teacher.kind](cfg.teacher, ctx)}
    if cfg.gram is not None:
        teachers["gram"] = TEACHERS["gram"](cfg.gram, dataclasses.replace(ctx, teachers=teachers))
    dino_k = cfg.model.dino_head.n_prototypes
    ibot_k = cfg.model.ibot_head.n_prototypes if cfg.model.ibot_head is not None else dino_k
    t = cfg.teacher
    term_ctx = BuildContext(
        target=lambda k: build_target(t.target, k, t.center_momentum, t.sinkhorn_iterations),
        n_prototypes={"dino": dino_k, "ibot": ibot_k},
        teachers=teachers,
        subgroup=D.subgroup,
    )
    meta = SSLMetaArch(student, teachers, build_terms(terms_cfg, term_ctx), schedules)
    meta.to(dist_info.device)
    if cfg.train.activation_checkpointing:
        student.backbone.set_activation_checkpointing(True)
    if cfg.train.compile:  # block by block: the repeated units compile once
        for model in [student.backbone, *(t.backbone for t in teachers.values())]:
            for unit in model.fsdp_units():
                unit.compile()
    heads = {"dino_head": student.dino_head, "ibot_head": student.ibot_head}
    groups = param_groups(student.backbone, {k: m for k, m in heads.items() if m is not None},
                          cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult)  # fmt: skip
    optimizer = build_optimizer(groups, cfg.optim.betas)
    stream_args = dict(
        source=source,
        views=MultiCrop.from_config(cfg.crops, cfg.data),
        masks=functools.partial(mask_generator, cfg.masking) if student.predict_patches else None,
        masking=cfg.masking,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        patch_size=backbone.patch_size,
        sizes=crop_sizes(cfg),
        micro_batches=cfg.train.grad_accumulation,
    )
    n_params = sum(p.numel() for p in student.parameters())
    log.info(
        "student %.1f M parameters; global batch %d; peak lr %.3g (%s of base %.3g)",
        n_params / 1e6, global_batch, schedules["lr"].peak, cfg.optim.lr_scaling, cfg.optim.base_lr,
    )  # fmt: skip
    return Parts(meta, optimizer, schedules, stream_args, global_batch)


def keep_freed_memory() -> bool:
    """CPU training: ask glibc to keep freed memory for reuse instead of returning large blocks to the system.

    Every step allocates the same activations again; with glibc's defaults each large tensor is a fresh `mmap`
    whose pages fault in one by one (about a third of the time of an elementwise op on a 70 MB tensor). With
    mmap off and trimming off the same memory is reused: the CPU benchmark step is ~10 % faster at the same peak
    memory. Process-wide; `dinokit train` calls it on CPU-only machines. Returns whether it applied."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def data_iterator(stream: SSLStream, num_workers: int, pin_memory: bool):
    """Batches of `stream` in order, produced by `num_workers` processes (0: in this process)."""
    if num_workers == 0:
        return iter(stream)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # keeps the global generator untouched (exact resume)
        prefetch_factor=2,
    )
    return raise_stream_errors(iter(loader))
