"""From a validated `PretrainConfig` to the objects the loop drives: backbone, student / teacher / loss terms
(the meta-architecture), optimiser, schedules and the data stream. Derived values (scaled LR, global batch)
are computed here and logged, never written back into the config.
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import ConfigError, PretrainConfig
from ..data.masking import BlockMaskGenerator
from ..data.multicrop import MultiCrop
from ..data.stream import SSLStream, open_source
from ..models import VisionTransformer, load_backbone
from ..models.layers.block import Block
from ..ssl.meta_arch import SSLMetaArch, build_ssl_model, build_terms
from ..ssl.schedules import Schedules, build_schedules
from ..ssl.teachers import EMATeacher
from .distributed import DistInfo
from .optim import build_optimizer, param_groups

log = logging.getLogger("dinokit.train")
TRAINING_ONLY = ("drop_path_rate", "drop_path_uniform", "rope_shift", "rope_jitter", "rope_rescale")


@dataclass
class Parts:
    meta: SSLMetaArch
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    stream_args: dict  # SSLStream arguments but the start batch
    global_batch: int


def build_backbone(cfg: PretrainConfig) -> VisionTransformer:
    """A fresh backbone from the preset, or — `init.backbone` — weights from any checkpoint `load_backbone`
    reads, whose architecture must be the preset's (training-only options come from the config)."""
    vit = cfg.backbone_config()
    if cfg.init.backbone is None:
        return VisionTransformer(vit)
    options = {k: getattr(vit, k) for k in TRAINING_ONLY}
    model = load_backbone(cfg.init.backbone, **options)
    ignore = dict.fromkeys(("extra", "ffn_hidden_dim", "layerscale_init"))
    mine = {k: v for k, v in model.config.to_dict().items() if k not in ignore}
    wanted = {k: v for k, v in vit.to_dict().items() if k not in ignore}
    diff = sorted(k for k in wanted if mine.get(k) != wanted[k]) + (
        ["ffn width"] if model.config.ffn_hidden != vit.ffn_hidden else []
    )
    if diff:
        raise ConfigError(
            f"init.backbone={cfg.init.backbone} holds a different architecture than model.backbone="
            f"{cfg.model.backbone} (differs in {', '.join(diff)}); set model.backbone to the matching preset"
        )
    return model


def enable_activation_checkpointing(backbone: nn.Module) -> None:
    """Recompute each block's activations in the backward pass (RNG state preserved, so drop-path agrees)."""

    def forward(self, x, rope=None):
        return checkpoint(Block.forward, self, x, rope, use_reentrant=False)

    for block in backbone.blocks:
        block.forward = types.MethodType(forward, block)


def build(cfg: PretrainConfig, dist_info: DistInfo) -> Parts:
    source = open_source(cfg.data.path, cfg.seed)  # a missing or empty data.path fails before any model is built
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    backbone = build_backbone(cfg)
    student = build_ssl_model(backbone, cfg.model, cfg.losses)
    global_batch = cfg.train.batch_size * dist_info.world_size * cfg.train.grad_accumulation
    schedules = build_schedules(cfg.optim, cfg.teacher, cfg.losses, cfg.train.steps, global_batch)
    teacher = EMATeacher(student, schedules["momentum"])
    dino_k = cfg.model.dino_head.n_prototypes
    ibot_k = cfg.model.ibot_head.n_prototypes if cfg.model.ibot_head is not None else dino_k
    meta = SSLMetaArch(student, teacher, build_terms(cfg.losses, cfg.teacher, dino_k, ibot_k), schedules)
    meta.to(dist_info.device)
    if cfg.train.activation_checkpointing:
        enable_activation_checkpointing(student.backbone)
    if cfg.train.compile:
        for model in (student.backbone, teacher.model.backbone):
            for block in model.blocks:
                block.compile()
    modules = {"backbone": student.backbone, "dino_head": student.dino_head, "ibot_head": student.ibot_head}
    groups = param_groups(
        {k: m for k, m in modules.items() if m is not None}, cfg.optim.layerwise_decay, cfg.optim.patch_embed_lr_mult
    )
    optimizer = build_optimizer(groups, cfg.optim.betas)
    vit = backbone.config
    grid = (cfg.crops.global_size // vit.patch_size, cfg.crops.global_size // vit.patch_size)
    mask_generator = None
    if cfg.losses.ibot is not None:
        m = cfg.masking
        max_block = m.max_block_fraction * grid[0] * grid[1]
        mask_generator = BlockMaskGenerator(grid, m.min_block_patches, max_block, m.min_aspect, m.style == "dinov3")
    stream_args = dict(
        source=source,
        views=MultiCrop.from_config(cfg.crops, cfg.data),
        mask_generator=mask_generator,
        masking=cfg.masking,
        batch_size=cfg.train.batch_size,
        seed=cfg.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
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
    return iter(loader)
