"""Heads trained on frozen features: image classifiers (linear, MLP; single- or multi-label) and a light
convolutional decoder for segmentation.

- Inputs: classifiers read one vector per image, the CLS token or CLS ‖ mean patch token (`features="cls+avg"`,
  the DINOv2 linear-probe input); the decoder reads the patch map `[D, h, w]`.
- Losses: cross-entropy (single-label, segmentation; label 255 = ignore) or binary cross-entropy per label
  (multi-label). AdamW with a cosine learning-rate schedule, full-batch-friendly sizes; features are computed
  once (the backbone is frozen), so an epoch costs only the head.
- Multi-label decisions use one threshold per label, chosen to maximise that label's F1 — defect labels are
  rare and differ in base rate, so one global 0.5 serves them badly. The thresholds are chosen on validation
  images: a separate source (`val`) or a seeded fraction of the training list held out (`val_fraction`, per
  class for single-label sources). Without either, they are chosen on the training images as a fallback that
  a warning names: a head fits its own training images better than new ones, so those thresholds and the F1
  they reach are optimistic (`config.meta["thresholds_tuned_on"]` records which was used). A label with no
  positive validation image keeps 0.5 (every threshold has F1 0 there).
- Metrics are reported per split (`{"training": …, "validation": …}`) and kept in the head's metadata.
- Decoder: BatchNorm → 3×3 conv (D → hidden) → GELU → 1×1 conv (→ classes) at the patch grid, logits
  upsampled bilinearly to the image size (a light version of the dense probe, which is BN + 1×1 conv).

A head is saved as one safetensors file whose metadata hold its configuration (kind, task, class names,
thresholds, feature source, backbone, input size, metrics), so `dinokit head predict` needs nothing else.
The backbone runs with the tools' compute settings (`compute.py`: device, dtype, images per batch); heads are
trained and run on `device` too (training returns them on the CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..atomic import atomic_write
from ..data.transforms import model_mean_std
from ..errors import UserError
from .compute import chunks, image_features, place

IGNORE = 255
log = logging.getLogger("dinokit.tools")


@dataclass
class HeadConfig:
    kind: str  # "linear" | "mlp" | "conv"
    task: str  # "single" | "multi" | "segment"
    in_dim: int  # feature width the head reads (2D for "cls+avg")
    classes: list[str]
    features: str = "cls"  # "cls" | "cls+avg" | "patches" (conv)
    hidden: int = 512
    thresholds: list[float] = field(default_factory=list)  # multi-label: one per class
    meta: dict = field(default_factory=dict)  # backbone, size, tile …


class MLPHead(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Patch map `[B, D, h, w]` → logits `[B, C, h, w]`."""

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, hidden, 3, padding=1)
        self.classify = nn.Conv2d(hidden, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(F.gelu(self.conv(self.norm(x))))


def create_head(config: HeadConfig) -> nn.Module:
    n = len(config.classes)
    if config.kind == "linear":
        return nn.Linear(config.in_dim, n)
    if config.kind == "mlp":
        return MLPHead(config.in_dim, config.hidden, n)
    if config.kind == "conv":
        return ConvDecoder(config.in_dim, config.hidden, n)
    raise UserError(f"head kind must be 'linear', 'mlp' or 'conv', got {config.kind!r}")


def head_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task == "multi":
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if task == "segment":  # logits at the patch grid, labels at pixels: upsample the logits (dense-probe rule)
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, targets.long(), ignore_index=IGNORE)


def _batches(features, targets, batch_size: int):
    """Shuffled mini-batches; segmentation items (maps of varying size) go one image at a time."""
    if isinstance(features, list):
        for i in torch.randperm(len(features)).tolist():
            yield features[i][None], targets[i][None]
    else:
        for idx in torch.randperm(len(features)).split(batch_size):
            yield features[idx], targets[idx]


def train_head(
    config: HeadConfig, features, targets, epochs: int = 100, lr: float = 1e-3, weight_decay: float = 1e-4,
    batch_size: int = 256, seed: int = 0, progress: bool = True, device: str | torch.device | None = None,
) -> nn.Module:  # fmt: skip
    """Train a head on precomputed features. Classifiers: `features [N, in_dim]`, targets class indices `[N]`
    or 0/1 `[N, C]` (multi-label). Decoder: lists of patch maps `[D, h, w]` and pixel labels `[H, W]`
    (255 = ignore). Trains on `device` (default: CUDA when available); returns the head on the CPU."""
    torch.manual_seed(seed)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    head = create_head(config).to(device)  # initialised on the CPU first: the same head on every device
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    per_epoch = len(features) if isinstance(features, list) else math.ceil(len(features) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * per_epoch, 1))
    head.train()
    for _ in tqdm(range(epochs), desc=f"train {config.kind} head", unit="epoch", disable=not progress):
        for x, y in _batches(features, targets, batch_size):
            loss = head_loss(config.task, head(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.cpu().eval()


def f1_scores(decided: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F1 per column of boolean decisions `[N, K]` against 0/1 targets `[N, K]` (0 when both are empty)."""
    tp = (decided & targets.bool()).sum(0).float()
    return 2 * tp / (decided.sum(0) + targets.bool().sum(0)).clamp_min(1)


def best_f1_thresholds(probs: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per label, the threshold in {0.05, 0.10, …, 0.95} that maximises F1 on `probs [N, C]` vs 0/1 targets;
    0.5 for a label without positives (F1 is 0 at every threshold, so nothing can be chosen)."""
    grid = torch.arange(0.05, 0.951, 0.05)
    out = []
    for c in range(probs.shape[1]):
        if not targets[:, c].any():
            out.append(0.5)
            continue
        f1 = f1_scores(probs[:, c : c + 1] >= grid, targets[:, c : c + 1].expand(-1, len(grid)))  # [T]
        out.append(round(float(grid[int(f1.argmax())]), 2))
    return out


@torch.inference_mode()
def predict(
    head: nn.Module, config: HeadConfig, features: torch.Tensor, size: tuple[int, int] | None = None
) -> dict[str, torch.Tensor]:
    """Probabilities and decisions: `probs [N, C]` and `labels [N]` (single), `labels [N, C]` bool (multi, per-label
    thresholds), or `probs [N, C, H, W]` and `labels [N, H, W]` (segment; logits upsampled to `size`)."""
    logits = head.eval()(features)
    if config.task == "segment" and size is not None:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    if config.task == "multi":
        probs = logits.sigmoid()
        thresholds = torch.tensor(config.thresholds or [0.5] * len(config.classes), device=probs.device)
        return {"probs": probs, "labels": probs >= thresholds}
    probs = logits.softmax(1)
    return {"probs": probs, "labels": probs.argmax(1)}


# ------------------------------------------------------------------------------------------------ files
def save_head(head: nn.Module, config: HeadConfig, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    metadata = {"format": "dinokit-head", "config": json.dumps(asdict(config))}
    atomic_write(path, lambda tmp: save_file(sd, str(tmp), metadata=metadata))


def load_head(path: str | os.PathLike) -> tuple[nn.Module, HeadConfig]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, SafetensorError) as e:  # a missing file, or one that is not safetensors
        raise UserError(f"{path}: not a readable head file ({e}); give the file `dinokit head train` wrote") from None
    if meta.get("format") != "dinokit-head":
        raise UserError(f"{path}: not a dinokit head (train one with `dinokit head train`)")
    config = HeadConfig(**json.loads(meta["config"]))
    head = create_head(config)
    head.load_state_dict(sd, strict=True)
    return head.eval(), config


# ------------------------------------------------------------------------------------- images → heads
def read_multilabel_csv(path: str | os.PathLike) -> tuple[list[str], list[str], torch.Tensor]:
    """A CSV with a header `path,<label 1>,<label 2>,…` and 0/1 per label → paths, label names, `[N, C]`."""
    import csv
    from pathlib import Path

    if Path(path).is_dir():  # else the system's "Is a directory" would not say what was expected
        raise UserError(f"{path} is a folder; multi-label training reads a CSV file with a header "
                        "`path,<label 1>,<label 2>,…` and one row of 0/1 values per image")  # fmt: skip
    rows = list(csv.reader(Path(path).read_text().splitlines()))
    if len(rows) < 2 or len(rows[0]) < 2:
        raise UserError(f"{path}: a multi-label list needs a header `path,<label>,…` and one row per image")
    names = [n.strip() for n in rows[0][1:]]
    try:
        values = torch.tensor([[int(float(v)) for v in r[1:]] for r in rows[1:] if r], dtype=torch.long)
    except ValueError as e:
        raise UserError(f"{path}: label columns must hold 0 or 1 ({e})") from None
    paths = [str((Path(path).parent / r[0].strip()).resolve()) for r in rows[1:] if r]
    if values.shape[1] != len(names):
        raise UserError(f"{path}: every row needs {len(names)} label values")
    return paths, names, values


def image_vector(f: dict, source: str) -> torch.Tensor:
    """The classifier input from features `{"cls": [..., D], "patches": [..., h, w, D]}`: CLS or CLS ‖ mean patch."""
    cls = torch.as_tensor(f["cls"]).float()
    return cls if source == "cls" else torch.cat([cls, torch.as_tensor(f["patches"]).float().mean((-3, -2))], -1)


def read_labels(source: str, task: str) -> tuple[list[str], list[str], torch.Tensor | None]:
    """Image paths, class names and targets of a training source (see `train_head_on_images`)."""
    from pathlib import Path

    from ..data.datasets import ImageList

    if task not in ("single", "multi", "segment"):
        raise UserError(f"task must be 'single', 'multi' or 'segment', got {task!r}")
    if task == "multi":
        return read_multilabel_csv(source)
    images = ImageList.from_source(source)
    paths = [str(Path(p).resolve()) for p in images.paths]
    if task == "segment":
        return paths, [], None
    if images.labels is None:
        raise UserError(f"{source}: single-label training needs class sub-folders or a path,label list")
    return paths, images.classes, torch.tensor(images.labels)


def split_indices(keys: list, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded split of items into (training, validation) indices: `fraction` of the items of each key (e.g.
    each class) held out, rounded, but never a key's last item, so that training sees every key."""
    if not 0 < fraction < 1:
        raise UserError(f"the validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    train, val = [], []
    for members in groups.values():
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        n = min(round(fraction * len(members)), len(members) - 1)
        val += order[:n]
        train += order[n:]
    if not val:
        raise UserError(f"a validation fraction of {fraction} holds out no image of these {len(keys)}; raise it, or "
                        "give validation images with --val")  # fmt: skip
    return sorted(train), sorted(val)


Split = tuple[list[str], torch.Tensor | None]  # image paths and their targets (None: segmentation masks)


def validation_split(
    source: str, task: str, val: str | None = None, val_fraction: float = 0.0, seed: int = 0
) -> tuple[list[str], Split, Split | None]:
    """Class names, the training split and the validation split (None without `val` or `val_fraction`) of a
    training source. `val` is read like `source`, its classes matched by name; `val_fraction` holds out that
    share of `source` (seeded; per class for single-label sources)."""
    paths, classes, targets = read_labels(source, task)
    if task == "single" and len(classes) < 2:  # a validation source may hold fewer
        raise UserError(f"{source}: a classifier needs at least 2 classes, found only {classes[0]!r}; add a "
                        "sub-folder (or list label) per class")  # fmt: skip
    if val is not None and val_fraction:
        raise UserError("give validation images (--val) or a fraction of the training images to hold out "
                        "(--val-fraction), not both")  # fmt: skip
    if val is not None:
        val_paths, val_classes, val_targets = read_labels(val, task)
        return classes, (paths, targets), (val_paths, _match_classes(classes, val_classes, val_targets, task, val))
    if not val_fraction:
        return classes, (paths, targets), None
    train, held = split_indices(targets.tolist() if task == "single" else [0] * len(paths), val_fraction, seed)

    def pick(idx: list[int]) -> Split:
        return [paths[i] for i in idx], None if targets is None else targets[idx]

    return classes, pick(train), pick(held)


def _match_classes(classes: list[str], found: list[str], targets, task: str, val: str):
    """Validation targets in the training classes' order (classes matched by name)."""
    if task == "segment":
        return None
    if task == "multi":
        if sorted(found) != sorted(classes):
            raise UserError(f"{val}: the validation label columns {found} are not the training ones {classes}")
        return targets[:, [found.index(c) for c in classes]]
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise UserError(f"{val}: validation class(es) {unknown} are not among the training classes {classes}")
    return torch.tensor([classes.index(found[t]) for t in targets.tolist()], dtype=torch.long)


def classifier_metrics(head: nn.Module, config: HeadConfig, x: torch.Tensor, targets: torch.Tensor) -> dict:
    """Accuracy (single-label), or F1 per label at the config's thresholds and their mean (multi-label)."""
    decided = predict(head, config, x)["labels"]
    if config.task == "multi":
        f1 = f1_scores(decided, targets)
        return {"f1": dict(zip(config.classes, f1.tolist())), "mean_f1": float(f1.mean())}
    return {"accuracy": float((decided == targets).float().mean())}


def tune_and_score(
    head: nn.Module, config: HeadConfig, train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict:  # fmt: skip
    """Choose multi-label thresholds on `val` — on `train` only as the named fallback, with a warning — and
    return the metrics of each split, also kept in `config.meta["metrics"]`."""
    if config.task == "multi":
        x, y = val if val is not None else train
        config.thresholds = best_f1_thresholds(predict(head, config, x)["probs"], y)
        config.meta["thresholds_tuned_on"] = "validation" if val is not None else "training"
        if val is None:
            log.warning("multi-label thresholds were tuned on the training images, so they and the F1 reported "
                        "are optimistic; give validation images (--val) or hold some out (--val-fraction)")  # fmt: skip
    metrics = {"training": classifier_metrics(head, config, *train)}
    if val is not None:
        metrics["validation"] = classifier_metrics(head, config, *val)
    config.meta["metrics"] = metrics
    return metrics


def train_head_on_images(
    model, source: str, output: str | os.PathLike, kind: str = "linear", task: str = "single",
    features: str = "cls", masks: str | None = None, classes: list[str] | None = None, size: int | None = 224,
    epochs: int = 100, lr: float = 1e-3, backbone_name: str = "", *, val: str | None = None,
    val_fraction: float = 0.0, seed: int = 0, batch_size: int = 8, device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> tuple[nn.Module, HeadConfig, dict]:  # fmt: skip
    """Train a head on images: `source` is class folders / a `path,label` list (single), a CSV of 0/1 label
    columns (multi) or images with `masks/<stem>.png` pixel labels (segment). Validation images come from `val`
    (read like `source`; segmentation masks from the same `masks` folder) or a seeded `val_fraction` of
    `source`; multi-label thresholds are chosen on them (see the module docstring). Features are cached
    (resumably) in `<output>.features/`, computed on `device` in `dtype`, `batch_size` images at a time.
    Returns the head, its config and the metrics `{"training": …, "validation": …}`."""
    from pathlib import Path

    from ..data.images import decode_image
    from .extract import FeatureStore, Preprocess, extract_features

    if (task == "segment") != (kind == "conv"):
        raise UserError("segmentation uses the conv decoder (--kind conv), and the conv decoder only segments")
    if task == "segment" and masks is None:
        raise UserError("segmentation training needs --masks DIR with one <image stem>.png label map per image")
    found, (paths, targets), held = validation_split(source, task, val, val_fraction, seed)
    classes = found or classes
    every = list(dict.fromkeys(paths + (held[0] if held is not None else [])))
    cache = Path(f"{output}.features")
    store = FeatureStore(extract_features(model, every, cache, size=size, batch_size=batch_size, device=device,
                                          dtype=dtype, backbone_name=backbone_name))  # fmt: skip
    missing = [p for p in every if p not in store]
    if missing:
        raise UserError(f"{len(missing)} training or validation image(s) could not be read, e.g. {missing[0]}")
    meta = {"backbone": backbone_name, "size": size}
    if task == "segment":
        prep = Preprocess(model.patch_size, size)

        def maps_and_labels(split: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            x = [torch.as_tensor(store[p]["patches"]).float().permute(2, 0, 1) for p in split]  # [D, h, w] each
            y = []
            for p in split:
                mask_path = Path(masks) / f"{Path(p).stem}.png"
                if not mask_path.exists():
                    raise UserError(f"no mask {mask_path} for image {p}")
                labels = decode_image(mask_path)[0]  # [H, W] class indices (255 = ignore)
                out = prep.output_size(*labels.shape)
                y.append(F.interpolate(labels[None, None].float(), size=out, mode="nearest")[0, 0].long())
            return x, y

        train_maps = maps_and_labels(paths)
        known = torch.cat([t.flatten() for t in train_maps[1]])
        n = int(known[known != IGNORE].max()) + 1
        classes = classes or [str(i) for i in range(n)]
        config = HeadConfig(kind, task, model.embed_dim, list(classes), "patches", meta=meta)
        head = train_head(config, *train_maps, epochs=epochs, lr=lr, seed=seed, device=device)
        metrics = {"training": pixel_accuracy(head, config, *train_maps)}
        if held is not None:
            metrics["validation"] = pixel_accuracy(head, config, *maps_and_labels(held[0]))
        config.meta["metrics"] = metrics
        return head, config, metrics

    def vectors(split: list[str]) -> torch.Tensor:
        return torch.stack([image_vector(store[p], features) for p in split])  # [N, in_dim]

    x = vectors(paths)
    config = HeadConfig(kind, task, x.shape[1], list(classes), features, meta=meta)
    head = train_head(config, x, targets, epochs=epochs, lr=lr, seed=seed, device=device)
    validation = None if held is None else (vectors(held[0]), held[1])
    return head, config, tune_and_score(head, config, (x, targets), validation)


def pixel_accuracy(head: nn.Module, config: HeadConfig, maps: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
    """Share of the labelled pixels (not 255) a segmentation head gets right."""
    pred = [predict(head, config, m[None], tuple(y.shape))["labels"][0] for m, y in zip(maps, labels)]
    valid = torch.cat([y.flatten() != IGNORE for y in labels])
    correct = torch.cat([(p == y).flatten() for p, y in zip(pred, labels)])
    return {"pixel_accuracy": float(correct[valid].float().mean())}


def predict_images(
    model, head: nn.Module, config: HeadConfig, images: Iterable[torch.Tensor], tile: int | None = None,
    overlap: int = 0, *, batch_size: int = 8, device: str | torch.device | None = None, dtype: str = "fp32",
) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """Run backbone and head on uint8 images `[3, H, W]`, read lazily from the iterable `batch_size` at a time;
    yields one prediction per image, in order, on the CPU (segmentation: labels at the model input size).
    Backbone and head run on `device` (both are moved there), the backbone in `dtype`, batched by shape."""
    from .extract import Preprocess

    device, compute = place(model.eval(), device, dtype)
    head.to(device)  # a segmentation head upsamples its logits to the image size: worth the device too
    prep = Preprocess(model.patch_size, config.meta.get("size"), *model_mean_std(model))  # as extract_features
    for chunk in chunks(images, batch_size):
        inputs = [prep(image) for image in chunk]
        feats = image_features(model, inputs, device, compute, batch_size, tile, overlap)
        if config.task == "segment":
            for x, f in zip(inputs, feats):
                patches = f["patches"].permute(2, 0, 1)[None].to(device)  # [1, D, h, w]
                out = predict(head, config, patches, tuple(x.shape[-2:]))
                yield {k: v[0].cpu() for k, v in out.items()}
        else:
            vectors = torch.stack([image_vector(f, config.features) for f in feats]).to(device)  # [b, in_dim]
            out = {k: v.cpu() for k, v in predict(head, config, vectors).items()}
            yield from ({k: v[i] for k, v in out.items()} for i in range(len(feats)))


def predict_image(
    model, head: nn.Module, config: HeadConfig, image: torch.Tensor, tile: int | None = None, overlap: int = 0, *,
    device: str | torch.device | None = None, dtype: str = "fp32",
) -> dict[str, torch.Tensor]:  # fmt: skip
    """Run backbone and head on one uint8 image `[3, H, W]` (segmentation: labels at the model input size)."""
    return next(predict_images(model, head, config, [image], tile, overlap, device=device, dtype=dtype))


def summarise(out: dict[str, torch.Tensor], config: HeadConfig) -> dict[str, float]:
    """One image's prediction as `{class: value}`: the winning class and its probability (single), every label
    above its threshold with its probability (multi), or each class's share of the pixels (segment)."""
    if config.task == "segment":
        shares = torch.bincount(out["labels"].flatten(), minlength=len(config.classes)) / out["labels"].numel()
        return {c: round(float(v), 4) for c, v in zip(config.classes, shares)}
    if config.task == "multi":
        return {c: round(float(p), 4) for c, p, on in zip(config.classes, out["probs"], out["labels"]) if on}
    return {config.classes[int(out["labels"])]: round(float(out["probs"].max()), 4)}
