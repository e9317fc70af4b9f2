"""The schema of a text-alignment run (`dinokit train configs/dinotxt/tiny_cpu.yaml`; `dinokit/train/dinotxt.py`).

A YAML file (or command line) with a top-level `dinotxt` section is a dino.txt run: `load_train_config` reads it
into `DinoTxtRunConfig` instead of `PretrainConfig`. Defaults are the released training's
(`dinov3/eval/text/configs/dinov3_vitl_text.yaml`, `text_backbone.yaml`): 2 vision head blocks with drop path
0.3, a 1280-wide 24-layer causal text transformer with context 77, logit scale initialised at log(1/0.07) and
clamped to [0, ln 100], AdamW lr 7e-4 (linear warm-up 2000 steps, then cosine to 0), weight decay 1e-4 (none on
gains, biases and the logit scale), betas (0.9, 0.99), eps 1e-8, batch 256 per device, 50,000 steps, seed 11.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD
from .schema import CheckpointConfig, LoggingConfig


@dataclass
class PairsDataConfig:
    path: str = ""  # image folder with same-named .txt captions, a .csv / .jsonl of (path, caption), or tar shards
    image_size: int = 224  # shorter side resized to this, then a centre crop (rounded to the backbone's patches)
    num_workers: int = 0  # data-loading processes per device (0: in the main process)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class DinoTxtModelConfig:
    """`dinotxt`: the frozen backbone, the trained vision head and text tower, the tokenizer."""

    backbone: str = ""  # any `backbone_from_spec` source (a trained backbone: a run's teacher_backbone, a .pth …)
    init: str | None = None  # a dino.txt file (released, or a run's dinotxt.pth) to fine-tune; sizes come from it
    vocab: str = "auto"  # CLIP BPE vocabulary (gz or text); auto: captions_vocab.txt near data.path, else CLIP's
    head_blocks: int = 2  # vision head blocks on the backbone's tokens
    head_drop_path: float = 0.3  # stochastic depth of the head blocks (released: a random batch subset)
    vision_heads: int | None = None  # attention heads of the head blocks (default: the backbone's, or width // 64)
    text_width: int = 1280  # a multiple of 64 (heads = width // 64, the released rule)
    text_depth: int = 24
    context_length: int = 77
    patch_pool: Literal["mean", "max"] = "mean"
    logit_scale_init: float = math.log(1 / 0.07)


@dataclass
class DinoTxtOptimConfig:
    lr: float = 7e-4
    warmup_steps: int = 2000  # linear from 0, then cosine to 0 at train.steps
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8


@dataclass
class DinoTxtTrainSection:
    steps: int = 50000
    batch_size: int = 256  # pairs per device; the loss contrasts the batch gathered over all devices
    log_every: int = 10


@dataclass
class DinoTxtRunConfig:
    output_dir: str = "runs/dinotxt"
    seed: int = 11
    data: PairsDataConfig = field(default_factory=PairsDataConfig)
    dinotxt: DinoTxtModelConfig = field(default_factory=DinoTxtModelConfig)
    optim: DinoTxtOptimConfig = field(default_factory=DinoTxtOptimConfig)
    train: DinoTxtTrainSection = field(default_factory=DinoTxtTrainSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        """Cross-field checks; one `ConfigError` listing every problem. (`dinotxt.backbone`, which a recipe
        cannot know, is required when the run starts: `require_backbone`.)"""
        d, o, t = self.dinotxt, self.optim, self.train
        problems = []
        if not self.data.path:
            problems.append("data.path is required: a folder of images with same-named .txt captions, a .csv or "
                            ".jsonl of (path, caption), or tar shards of image + .txt")  # fmt: skip
        checks = [
            ("seed", self.seed, ">= 0", self.seed >= 0),
            ("data.image_size", self.data.image_size, ">= 16", self.data.image_size >= 16),
            ("data.num_workers", self.data.num_workers, ">= 0", self.data.num_workers >= 0),
            ("data.std", list(self.data.std), "> 0", all(x > 0 for x in self.data.std)),
            ("dinotxt.head_blocks", d.head_blocks, ">= 0", d.head_blocks >= 0),
            ("dinotxt.head_drop_path", d.head_drop_path, "in [0, 1)", 0 <= d.head_drop_path < 1),
            ("dinotxt.vision_heads", d.vision_heads, ">= 1 or null", d.vision_heads is None or d.vision_heads >= 1),
            ("dinotxt.text_width", d.text_width, "a positive multiple of 64", d.text_width >= 64
             and d.text_width % 64 == 0),
            ("dinotxt.text_depth", d.text_depth, ">= 1", d.text_depth >= 1),
            ("dinotxt.context_length", d.context_length, ">= 3", d.context_length >= 3),
            ("dinotxt.logit_scale_init", d.logit_scale_init, "in [0, ln 100]",
             0 <= d.logit_scale_init <= math.log(100)),
            ("optim.lr", o.lr, "> 0", o.lr > 0),
            ("optim.warmup_steps", o.warmup_steps, ">= 0", o.warmup_steps >= 0),
            ("optim.weight_decay", o.weight_decay, ">= 0", o.weight_decay >= 0),
            ("optim.betas", list(o.betas), "in [0, 1)", all(0 <= b < 1 for b in o.betas)),
            ("optim.eps", o.eps, "> 0", o.eps > 0),
            ("train.steps", t.steps, ">= 1", t.steps >= 1),
            ("train.batch_size", t.batch_size, ">= 2 (the loss contrasts pairs within a batch)", t.batch_size >= 2),
            ("train.log_every", t.log_every, ">= 1", t.log_every >= 1),
            ("checkpoint.every", self.checkpoint.every, ">= 0", self.checkpoint.every >= 0),
            ("checkpoint.keep", self.checkpoint.keep, ">= 1", self.checkpoint.keep >= 1),
        ]  # fmt: skip
        problems += [f"{name} must be {rule}, got {value}" for name, value, rule, ok in checks if not ok]
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def require_backbone(cfg: DinoTxtRunConfig) -> None:
    if not cfg.dinotxt.backbone:
        raise ConfigError("dinotxt.backbone is required: the frozen backbone, any --backbone source (a trained one: "
                          "a pretraining run's teacher_backbone folder, official:dinov3_vitl16 …)")  # fmt: skip
