"""The schema of `dinokit train`: `PretrainConfig` and its sections, each given to the object it configures.

Units: every length is in optimiser steps (the released recipes count 1250 steps per "epoch"). The loss-term
sections (`losses.<name>`) and the Gram teacher's (`gram`) are defined beside the code they configure
(`dinokit/ssl/losses/`, `dinokit/ssl/teachers/gram.py`); `LossesConfig` is made from the term table.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..models.weights import IMAGENET_MEAN, IMAGENET_STD
from ..ssl.losses import TERMS
from ..ssl.schedules import CurveConfig, weight_fields
from ..ssl.teachers.gram import GramConfig
from .machinery import check_value


@dataclass
class DataConfig:
    path: str = ""  # image folder (recursive), .txt/.csv list, .tar shard, folder of .tar, or "x-{000..009}.tar"
    num_workers: int = 4  # data-loading processes per device (0: in the main process)
    shuffle_buffer: int = 1000  # tar shards: samples a rank mixes as it reads (0: file order)
    shards_open: int = 4  # tar shards a rank reads at once, one sample from each in turn
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class ColourConfig:
    """The colour distortion of every crop (released: ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grey with p 0.2).
    On images whose colours are saturated and unrelated to what they show, a short run tells images apart by colour
    first; stronger jitter (saturation, hue up to 0.5: any hue) and more grey crops take that cue away."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1  # at most 0.5 (a half turn either way: any hue)
    grayscale_p: float = 0.2


@dataclass
class CropsConfig:
    """Multi-crop (DINOv2 §3, the released configurations). Sizes: multiples of the patch size (learned pos-embeds)."""

    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_number: int = 8
    local_size: int = 98  # 96 for patch-16 models
    local_scale: tuple[float, float] = (0.05, 0.32)
    # "released": the effective blur probabilities the released models trained with (global-1 never, global-2
    # 0.9, locals 0.5); "intended": the values the released code meant (1.0 / 0.1 / 0.5). Solarize 0.2 on global-2.
    probabilities: Literal["released", "intended"] = "released"
    hflip: float = 0.5  # probability of a horizontal flip per crop (DINOv3's 7B recipe: 0)
    colour: ColourConfig = field(default_factory=ColourConfig)
    # DINOv3's high-resolution stage: one entry is drawn per batch by its ratio (identical on every rank); each sets
    # the global and local crop sizes and the Gram teacher's crop size of that batch. Empty: the sizes above.
    resolutions: list[ResolutionConfig] = field(default_factory=list)


@dataclass
class ResolutionConfig:
    global_size: int
    local_size: int
    gram_size: int | None = None  # the Gram teacher's crops (default: gram.teacher_crop_size)
    ratio: float = 1.0


@dataclass
class MaskingConfig:
    """iBOT block masking of the global crops (BEiT blocks, stratified ratios)."""

    sample_probability: float = 0.5  # fraction of global crops that get a mask
    ratio_min_max: tuple[float, float] = (0.1, 0.5)
    min_aspect: float = 0.3
    min_block_patches: int = 4
    max_block_fraction: float = 0.5  # one block covers at most this fraction of the patches
    style: Literal["dinov2", "dinov3"] = "dinov2"  # dinov3: exactly int(N·upper ratio) patches, topped up at random


@dataclass
class HeadConfig:
    """Projection head: MLP → L2-normalise → K prototypes (weight-normed last layer in DINOv2, plain in DINOv3)."""

    n_prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    last_layer: Literal["weight_norm", "plain"] = "weight_norm"


@dataclass
class ModelConfig:
    backbone: str = "dinov2_vits14"  # a preset name of dinokit.models.presets
    backbone_options: dict[str, Any] = field(default_factory=dict)  # ViTConfig overrides, e.g. drop_path_rate: 0.1
    dino_head: HeadConfig = field(default_factory=HeadConfig)
    ibot_head: HeadConfig | None = None  # null: iBOT shares the DINO head (DINOv2 default)


@dataclass
class TeacherConfig:
    """The main teacher (`dinokit/ssl/teachers/`) and how its logits become targets."""

    kind: Literal["ema", "frozen"] = "ema"  # frozen: a trained model with heads, from `checkpoint` (distillation)
    checkpoint: str | None = None  # kind frozen: a dinokit training checkpoint or run folder
    momentum: float = 0.992  # EMA: cosine from `momentum` to `final_momentum` over the run
    final_momentum: float = 1.0
    target: Literal["centering", "sinkhorn_knopp"] = "centering"
    center_momentum: float = 0.9
    sinkhorn_iterations: int = 3
    temp: float = 0.07
    warmup_temp: float = 0.04  # linear warm-up warmup_temp → temp
    warmup_temp_steps: int = 37500  # 30 epochs of 1250 steps


def _losses_config() -> type:
    """`LossesConfig`, one optional section per row of the term table. In a YAML file this section is replaced as
    a whole: a term left out is off."""

    def enabled(self) -> dict[str, Any]:
        """The configured terms: name → section."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    fields = [
        (name, kind.config | None, field(default_factory=kind.config if kind.default_on else lambda: None))
        for name, kind in TERMS.items()
    ]
    namespace = {"_replace_as_whole": True, "enabled": enabled, "__doc__": _losses_config.__doc__}
    return dataclasses.make_dataclass("LossesConfig", fields, namespace=namespace)


LossesConfig = _losses_config()


@dataclass
class OptimConfig:
    base_lr: float = 0.004  # for a global batch of 1024 (see lr_scaling)
    lr_scaling: Literal["sqrt_wrt_1024", "dinov3_sqrt_wrt_1024", "linear_wrt_256", "none"] = "sqrt_wrt_1024"
    min_lr: float = 1.0e-6
    warmup_steps: int = 12500
    schedule: Literal["cosine", "constant"] = "cosine"  # after warm-up (DINOv3: constant)
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 3.0  # per sub-module (backbone, each head); null: no clipping
    freeze_last_layer_steps: int = 1250


@dataclass
class TrainConfig:
    steps: int = 125000  # total optimiser steps
    batch_size: int = 64  # images per device and micro-batch
    grad_accumulation: int = 1  # micro-batches per optimiser step
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    compile: bool = False  # torch.compile the backbones
    activation_checkpointing: bool = False
    # Multi-process runs: "ddp" keeps a full student on every rank and all-reduces its gradients; "fsdp" shards
    # the student's parameters, gradients and optimiser state over the ranks (FSDP2, block by block). One process:
    # both train the same unsharded model.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    log_every: int = 10


@dataclass
class CheckpointConfig:
    every: int = 1000  # steps
    keep: int = 3  # newest complete checkpoints kept


@dataclass
class MonitorConfig:
    max_bad_steps: int = 5  # consecutive non-finite steps before aborting
    min_target_entropy: float = 0.5  # nats, of the batch-average DINO target; below: collapse warning
    min_feature_std: float = 1.0e-3  # of the L2-normalised CLS across the batch; below: collapse warning


@dataclass
class WandbConfig:
    """Weights & Biases (the `wandb` extra): every record of metrics.jsonl, at its step. A resumed run continues
    the same W&B run, whose id is kept in the run folder (`wandb_run_id.txt`)."""

    project: str = "dinokit"
    entity: str | None = None  # team or user (default: the logged-in account)
    name: str | None = None  # display name (default: the run folder's name)
    mode: Literal["online", "offline"] = "online"  # offline: written under RUN/wandb/, uploaded by `wandb sync`


@dataclass
class LoggingConfig:
    """Where the metrics go besides metrics.jsonl and the progress bar (TensorBoard: whenever it is installed)."""

    wandb: WandbConfig | None = None  # off; on with a mapping, e.g. logging.wandb.project=my-project


@dataclass
class KnnEvalConfig:
    train: str | None = None  # labelled images (class sub-folders or a `path,label` list): the k-NN gallery
    val: str | None = None  # labelled images to classify
    size: int = 224  # evaluation crop (resize to size·256/224, centre crop)
    ks: list[int] = field(default_factory=lambda: [10, 20])
    batch_size: int = 64


@dataclass
class EvalConfig:
    every: int = 0  # steps between evaluations of the teacher (0: never)
    knn: KnnEvalConfig = field(default_factory=KnnEvalConfig)  # k-NN on CLS, logged as knn/top1_k<k>


@dataclass
class InitConfig:
    """Where a new run starts from (ignored when its own output_dir has checkpoints: then it resumes)."""

    backbone: str | None = None  # a checkpoint load_backbone reads: initialises student and teacher backbones
    # a stage: an earlier run's folder. Its newest checkpoint gives student, EMA teacher and heads (and the target
    # centres); its resolved config is the base this configuration overrides, so the architecture comes from it.
    run: str | None = None
    optimizer: Literal["fresh", "keep"] = "fresh"  # with `run`: a new AdamW state, or the run's


@dataclass
class StudentConfig:
    """One student of `distill.students`: its architecture and, where it differs from the run's, its optimiser."""

    name: str  # its folder: RUN/students/<name>/
    backbone: str  # a preset name (ViT or ConvNeXt), e.g. dinov3_vits16, dinov3_convnext_tiny
    backbone_options: dict[str, Any] = field(default_factory=dict)  # config overrides, e.g. {depths: [1, 1, 3, 1]}
    base_lr: float | None = None  # peak LR before scaling (default optim.base_lr; the schedule's shape is shared)
    weight_decay_scale: float = 1.0  # × the run's weight-decay schedule
    layerwise_decay: float | None = None  # default optim.layerwise_decay
    patch_embed_lr_mult: float | None = None  # default optim.patch_embed_lr_mult
    ranks: tuple[int, int] | None = None  # [first, end) of its process sub-group (default: the ranks split evenly)
    terms: list[str] | None = None  # the run's loss terms it trains with (default: all), e.g. no ibot for a ConvNeXt


@dataclass
class DistillConfig:
    """`distill`: one frozen teacher, several students trained together (DINOv2 §5, DINOv3 §5.2).

    `mode` heads: the teacher's DINO / iBOT heads give the targets of the loss terms that read heads (dino, ibot;
    koleo too); features: each student regresses the teacher's tokens through a projection (the `feature_*`
    terms); auto: heads when the teacher has them."""

    teacher: str = ""  # a dinokit run folder / training checkpoint, an official training checkpoint, or any
    # source `load_backbone` reads (no heads: feature distillation)
    mode: Literal["auto", "heads", "features"] = "auto"
    students: list[StudentConfig] = field(default_factory=list)
    teacher_scale: float = 1.0  # the teacher sees the global crops at this × the students' size (rendered so)


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    losses: LossesConfig = field(default_factory=LossesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    init: InitConfig = field(default_factory=InitConfig)
    gram: GramConfig | None = None  # the Gram teacher of DINOv3's Gram anchoring (with the loss term losses.gram)
    distill: DistillConfig | None = None  # distillation into `distill.students` (then `model.backbone` is unused)

    def validate(self) -> None:
        """Cross-field checks that need no computation; raises `ConfigError` listing every problem."""
        problems = []
        if not self.data.path:
            problems.append("data.path is required (an image folder, a file list or tar shards)")
        problems += self._out_of_range()
        for name in ("train.steps", "train.batch_size", "train.grad_accumulation", "train.log_every"):
            section, key = name.split(".")
            if getattr(getattr(self, section), key) < 1:
                problems.append(f"{name} must be at least 1")
        if self.checkpoint.every < 0 or self.checkpoint.keep < 1 or self.eval.every < 0:
            problems.append("checkpoint.every and eval.every must be >= 0 and checkpoint.keep >= 1")
        knn = self.eval.knn
        if bool(knn.train) != bool(knn.val):
            problems.append("eval.knn needs both train and val (labelled image folders or lists), or neither")
        if knn.train and not self.eval.every:
            problems.append("eval.knn is set but eval.every is 0: give the steps between evaluations")
        if not knn.ks or min(knn.ks) < 1 or knn.size < 1 or knn.batch_size < 1:
            problems.append("eval.knn.ks must be a non-empty list of k >= 1; eval.knn.size and batch_size >= 1")
        if not self.losses.enabled():
            problems.append("losses: at least one loss term is needed")
        if self.losses.koleo is not None and self.train.batch_size < 2:
            problems.append("the KoLeo loss needs train.batch_size >= 2 (a nearest neighbour in the batch)")
        lo, hi = self.masking.ratio_min_max
        if not 0.0 <= lo <= hi <= 1.0 or not 0.0 <= self.masking.sample_probability <= 1.0:
            problems.append("masking.ratio_min_max must satisfy 0 <= min <= max <= 1; sample_probability in [0, 1]")
        for name in ("global_scale", "local_scale"):
            a, b = getattr(self.crops, name)
            if not 0.0 < a <= b <= 1.0:
                problems.append(f"crops.{name} must satisfy 0 < min <= max <= 1, got {(a, b)}")
        if self.crops.local_number < 0:
            problems.append("crops.local_number must be >= 0")
        problems += self._stage_problems()
        for name, preset, options in self.trained_backbones():
            try:
                config = self.backbone_config(preset, options, key=name)
            except (ValueError, ConfigError) as e:
                problems.append(str(e))
            else:
                problems += self._size_problems(preset, config)
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))

    def _out_of_range(self) -> list[str]:
        """Numbers outside their meaningful range (a negative learning rate, a zero temperature, a momentum above
        1): each would train without an error, to nonsense or NaN."""
        o, t = self.optim, self.teacher

        def weight_ok(w) -> bool:
            return (w.peak >= 0 and (w.end is None or w.end >= 0)) if isinstance(w, CurveConfig) else w >= 0

        checks = [
            ("seed", self.seed, ">= 0", self.seed >= 0),
            ("data.num_workers", self.data.num_workers, ">= 0", self.data.num_workers >= 0),
            ("data.shuffle_buffer", self.data.shuffle_buffer, ">= 0", self.data.shuffle_buffer >= 0),
            ("data.shards_open", self.data.shards_open, ">= 1", self.data.shards_open >= 1),
            ("data.std", list(self.data.std), "> 0 (images are divided by it)", all(x > 0 for x in self.data.std)),
            ("optim.base_lr", o.base_lr, "> 0", o.base_lr > 0),
            ("optim.min_lr", o.min_lr, ">= 0", o.min_lr >= 0),
            ("optim.warmup_steps", o.warmup_steps, ">= 0", o.warmup_steps >= 0),
            ("optim.weight_decay", o.weight_decay, ">= 0", o.weight_decay >= 0),
            ("optim.weight_decay_end", o.weight_decay_end, ">= 0", o.weight_decay_end >= 0),
            ("optim.layerwise_decay", o.layerwise_decay, "in (0, 1]", 0 < o.layerwise_decay <= 1),
            ("optim.patch_embed_lr_mult", o.patch_embed_lr_mult, ">= 0", o.patch_embed_lr_mult >= 0),
            ("optim.betas", list(o.betas), "in [0, 1)", all(0 <= b < 1 for b in o.betas)),
            ("optim.clip_grad", o.clip_grad, "> 0 or null", o.clip_grad is None or o.clip_grad > 0),
            ("optim.freeze_last_layer_steps", o.freeze_last_layer_steps, ">= 0", o.freeze_last_layer_steps >= 0),
            ("teacher.momentum", t.momentum, "in [0, 1]", 0 <= t.momentum <= 1),
            ("teacher.final_momentum", t.final_momentum, "in [0, 1]", 0 <= t.final_momentum <= 1),
            ("teacher.center_momentum", t.center_momentum, "in [0, 1]", 0 <= t.center_momentum <= 1),
            ("teacher.sinkhorn_iterations", t.sinkhorn_iterations, ">= 1", t.sinkhorn_iterations >= 1),
            ("teacher.temp", t.temp, "> 0", t.temp > 0),
            ("teacher.warmup_temp", t.warmup_temp, "> 0", t.warmup_temp > 0),
            ("teacher.warmup_temp_steps", t.warmup_temp_steps, ">= 0", t.warmup_temp_steps >= 0),
            ("masking.min_aspect", self.masking.min_aspect, "> 0", self.masking.min_aspect > 0),
            ("crops.hflip", self.crops.hflip, "in [0, 1]", 0 <= self.crops.hflip <= 1),
            *((f"crops.colour.{k}", getattr(self.crops.colour, k), "in [0, 1]", 0 <= getattr(self.crops.colour, k) <= 1)
              for k in ("jitter_p", "grayscale_p", "brightness", "contrast", "saturation")),
            ("crops.colour.hue", self.crops.colour.hue, "in [0, 0.5]", 0 <= self.crops.colour.hue <= 0.5),
        ]
        heads = {"model.dino_head": self.model.dino_head, "model.ibot_head": self.model.ibot_head}
        for name, head in ((n, h) for n, h in heads.items() if h is not None):
            for key in ("n_prototypes", "hidden_dim", "bottleneck_dim", "nlayers"):
                value = getattr(head, key)
                checks.append((f"{name}.{key}", value, ">= 1", value >= 1))
        for term, loss in self.losses.enabled().items():
            for key in weight_fields(loss):
                w = getattr(loss, key)
                shown = f"{{peak: {w.peak}, end: {w.end}}}" if isinstance(w, CurveConfig) else w
                checks.append((f"losses.{term}.{key}", shown, ">= 0", weight_ok(w)))
        out = [f"{name} must be {rule}, got {value}" for name, value, rule, ok in checks if not ok]
        for term, loss in self.losses.enabled().items():
            out += [f"losses.{term}: {problem}" for problem in loss.problems()]
        return out

    def _stage_problems(self) -> list[str]:
        """The DINOv3 stages' settings: teachers, Gram anchoring, resolutions, where a run starts from."""
        out = []
        if self.teacher.kind == "frozen" and not self.teacher.checkpoint:
            out.append("teacher.kind=frozen needs teacher.checkpoint (a training checkpoint or run folder)")
        if (self.gram is None) != (self.losses.gram is None):
            out.append("Gram anchoring needs both the loss term losses.gram and the Gram teacher section gram "
                       "(configs/stages/gram.yaml has both)")  # fmt: skip
        if self.gram is not None:
            out += self.gram.problems()
        for i, r in enumerate(self.crops.resolutions):
            if r.ratio <= 0:
                out.append(f"crops.resolutions[{i}].ratio must be > 0, got {r.ratio}")
        if self.init.run is not None and self.init.backbone is not None:
            out.append("init.run and init.backbone are exclusive (a run already holds the backbone)")
        if self.distill is not None:
            out += self._distill_problems()
        return out

    def _distill_problems(self) -> list[str]:
        d, out = self.distill, []
        if not d.teacher:
            out.append("distill.teacher is required: a run folder, a training checkpoint or a backbone file")
        if not d.students:
            out.append("distill.students is empty: list at least one student (name and backbone)")
        names = [s.name for s in d.students]
        if len(set(names)) != len(names) or not all(n and n.replace("_", "").replace("-", "").isalnum()
                                                    for n in names):  # fmt: skip
            out.append(f"distill.students: names must be distinct words (letters, digits, _ or -), got {names}")
        for i, s in enumerate(d.students):
            if s.base_lr is not None and s.base_lr <= 0:
                out.append(f"distill.students[{i}].base_lr must be > 0, got {s.base_lr}")
            unknown = sorted(set(s.terms or ()) - set(self.losses.enabled()))
            if unknown:
                out.append(f"distill.students[{i}].terms {unknown} are not in losses "
                           f"(configured: {sorted(self.losses.enabled())})")  # fmt: skip
            if s.ranks is not None and not 0 <= s.ranks[0] < s.ranks[1]:
                out.append(f"distill.students[{i}].ranks must be [first, end) with 0 <= first < end, got {s.ranks}")
        if d.teacher_scale <= 0:
            out.append(f"distill.teacher_scale must be > 0, got {d.teacher_scale}")
        if self.teacher.kind != "ema":
            out.append("teacher.kind applies to self-distillation; with distill the teacher is distill.teacher "
                       "and each student keeps an EMA (its final model)")  # fmt: skip
        if self.gram is not None or self.init.backbone is not None or self.init.run is not None:
            out.append("distill does not combine with gram, init.backbone or init.run (each student starts afresh; "
                       "an interrupted distillation resumes from its own output_dir)")  # fmt: skip
        if self.train.parallel == "fsdp":
            out.append("distill trains each student with DDP on its own ranks: train.parallel must be ddp")
        return out

    def trained_backbones(self) -> list[tuple[str, str, dict]]:
        """(config key, preset, options) of every backbone this run trains: the model's, or each student's."""
        if self.distill is None:
            return [("model.backbone", self.model.backbone, self.model.backbone_options)]
        return [(f"distill.students[{i}].backbone", s.backbone, s.backbone_options)
                for i, s in enumerate(self.distill.students)]  # fmt: skip

    def backbone_config(self, preset: str | None = None, options: dict | None = None, key: str = "model.backbone"):
        """A backbone config (e.g. a `ViTConfig`): the preset with its options, type-checked — by default the
        student's (`model.backbone` with `model.backbone_options`); the preset's kind comes from the architecture
        table."""
        from ..models.architectures import architecture_of

        preset = self.model.backbone if preset is None else preset
        options = dict(self.model.backbone_options if options is None else options)
        try:
            arch = architecture_of(preset)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
        hints = typing.get_type_hints(arch.config)
        unknown = sorted(set(options) - set(hints))
        if unknown:
            raise ConfigError(f"{key.removesuffix('backbone')}backbone_options: unknown option(s) {unknown}; "
                              f"valid: {sorted(hints)}")  # fmt: skip
        for k, v in options.items():
            options[k] = check_value(hints[k], v, f"{key.removesuffix('backbone')}backbone_options.{k}")
        return arch.config(**arch.presets[preset]).replace(**options)

    def _size_problems(self, preset: str, config) -> list[str]:
        """Crop sizes a backbone cannot take: smaller than one patch, or (learned position embedding) not a
        multiple of the patch size."""
        p = getattr(config, "patch_size", 1)
        sizes = {"crops.global_size": self.crops.global_size, "crops.local_size": self.crops.local_size}
        if self.gram is not None and self.gram.teacher_crop_size is not None:
            sizes["gram.teacher_crop_size"] = self.gram.teacher_crop_size
        for i, r in enumerate(self.crops.resolutions):
            sizes.update({f"crops.resolutions[{i}].global_size": r.global_size,
                          f"crops.resolutions[{i}].local_size": r.local_size})  # fmt: skip
            if r.gram_size is not None:
                sizes[f"crops.resolutions[{i}].gram_size"] = r.gram_size
        out = []
        for name, size in sizes.items():
            if size < p:
                out.append(f"{name}={size} is smaller than one {p}×{p} patch of {preset}")
            elif getattr(config, "pos_embed", None) == "learned" and size % p:
                out.append(f"{name}={size} is not a multiple of the patch size {p} of {preset} "
                           f"(learned position embedding); use e.g. {round(size / p) * p}")  # fmt: skip
        return out
