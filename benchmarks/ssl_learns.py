"""Does SSL training learn? Trains `configs/pretrain/tiny_cpu.yaml` on procedurally generated images (no labels
used) and compares the k-NN accuracy of the trained teacher's CLS features with that of the same backbone at
its random initialisation, on a separate labelled set of images drawn from the same classes.

Two families of classes (`--family`):
- `textures` (the default): stripes at several orientations, checkerboards, dots, rings, blobs, coarse noise, with
  random grey levels, scales, phases and noise. With `--colour` each image gets two random colours instead: then
  the easiest cue to tell 800 images apart — which is what self-distillation rewards — is their colour pair, which
  says nothing about the class, and a short run learns it first (docs/training.md).
- `shapes` (dinokit/data/shapes.py): eight flat shapes (disk, ring, square, triangle, star, cross, bar, crescent)
  in random colours on randomly coloured, striped or noisy backgrounds, at 64 px: the class is the outline only.
  Diagnostics: `shapes-flat` draws the same shapes on flat backgrounds only, `shapes-upright` never rotates them.
Both: 100 unlabelled images per class to train on, a separate labelled set to score (40 per class for
textures, 50 for shapes). k-NN as the released protocol: L2-normalised CLS, cosine top-k (k = 20), votes
weighted by exp(sim / 0.07); each labelled image is classified by its neighbours among the others
(leave-one-out). The gain is reported with its 95 % paired-bootstrap interval over the labelled images.

`--supervised backbone` trains the same backbone with the pretraining images' labels instead, on the same crops
and budget: the ceiling a self-supervised run is read against (`--supervised cnn`: a plain CNN, for reference).

    PYTHONPATH=. python benchmarks/ssl_learns.py [--family textures|shapes] [--steps N] [--out DIR]
        [--supervised backbone|cnn] [key=value ...]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinokit.config import PretrainConfig, load_config
from dinokit.data.datasets import ImageList
from dinokit.data.images import decode_image
from dinokit.data.shapes import BACKGROUNDS, SHAPES, shape_image
from dinokit.data.transforms import normalize, resize
from dinokit.models import load_backbone
from dinokit.train.build import build_backbone

CLASSES = ["h_stripes", "v_stripes", "d_stripes", "checker", "dots", "rings", "blob", "coarse_noise"]
FAMILIES = {  # name → (classes, image size, labelled images per class)
    "textures": (CLASSES, 112, 40),
    "shapes": (list(SHAPES), 64, 50),
    "shapes-flat": (list(SHAPES), 64, 50),  # diagnostics: the shapes on flat backgrounds only,
    "shapes-upright": (list(SHAPES), 64, 50),  # or all upright
}


def texture(cls: int, size: int, rng: np.random.Generator, colour: bool = False) -> np.ndarray:
    """One image `[size, size, 3]` uint8 of class `cls`: two random grey levels (or, with `colour`, two random
    colours) for the pattern and the background, and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(8, 20)
    phase = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    if cls == 0:
        m = np.sin(2 * np.pi * yy / period + phase) > 0
    elif cls == 1:
        m = np.sin(2 * np.pi * xx / period + phase) > 0
    elif cls == 2:
        m = np.sin(2 * np.pi * (xx + yy) / (period * 1.4) + phase) > 0
    elif cls == 3:
        m = (np.sin(2 * np.pi * xx / period + phase) > 0) ^ (np.sin(2 * np.pi * yy / period + phase) > 0)
    elif cls == 4:
        m = (np.sin(2 * np.pi * xx / period + phase) * np.sin(2 * np.pi * yy / period + phase)) > 0.5
    elif cls == 5:
        m = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period + phase) > 0
    elif cls == 6:
        m = np.hypot(xx - cx, yy - cy) < rng.uniform(0.2, 0.4) * size
    else:
        cells = rng.random((size // 12 + 1, size // 12 + 1)) > 0.5
        m = np.kron(cells, np.ones((12, 12), dtype=bool))[:size, :size]
    fg, bg = (rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)) if colour else (rng.uniform(0, 255), rng.uniform(0, 255))
    img = np.where(m[..., None], fg, bg) + rng.normal(0, 12, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root: Path, per_class: int, seed: int, labelled: bool, colour: bool, family: str = "textures") -> None:
    classes, size, _ = FAMILIES[family]
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if family == "textures":
                image = texture(c, size, rng, colour)
            else:
                flat, upright = family == "shapes-flat", family == "shapes-upright"
                image = shape_image(rng, size, c, ("flat",) if flat else BACKGROUNDS, rotate=not upright)
            Image.fromarray(image).save(folder / f"{name}_{i:04d}.png")


@torch.no_grad()
def knn_accuracy(backbone, images: ImageList, size: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Leave-one-out weighted k-NN hits [N] (1 = correct) of the L2-normalised CLS features."""
    backbone.eval()
    feats = []
    for i in range(0, len(images), 64):
        x = torch.stack([resize(decode_image(p).float() / 255, (size, size)) for p in images.paths[i : i + 64]])
        feats.append(F.normalize(backbone(normalize(x)), dim=-1))
    f = torch.cat(feats)  # [N, D]
    labels = torch.tensor(images.labels)
    sims = f @ f.T
    sims.fill_diagonal_(-math.inf)
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(f), len(images.classes)).scatter_add_(1, labels[idx], (top / temperature).exp())
    return (votes.argmax(1) == labels).float()


def plain_cnn(width: int = 32) -> torch.nn.Module:
    """The supervised reference with the inductive bias a ViT lacks: four stages of two 3×3 convolutions with
    batch norm and ReLU, each ending in a 2× max-pool, then global average pooling → features `[N, 4·width]`."""
    layers, channels = [], 3
    for out in (width, 2 * width, 4 * width, 4 * width):
        for c_in in (channels, out):
            layers += [torch.nn.Conv2d(c_in, out, 3, padding=1), torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
        layers.append(torch.nn.MaxPool2d(2))
        channels = out
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    net.embed_dim = channels
    return net


def supervised(cfg: PretrainConfig, labelled: ImageList, steps: int, model: str = "backbone") -> torch.nn.Module:
    """The ceiling at this budget: the recipe's backbone (or, `model="cnn"`, `plain_cnn`) trained with the labels
    of the pretraining images (a linear classifier on the CLS token or pooled features, cross-entropy) on the
    recipe's global crops — same crop scales, colour distortions, batch size, learning rate and step count. Says
    whether the architecture can learn the classes this fast at all; a self-supervised run of it will not do
    better."""
    import random

    from dinokit.data.multicrop import MultiCrop

    torch.manual_seed(cfg.seed)  # the same initialisation as the one scored before training
    backbone = (plain_cnn() if model == "cnn" else build_backbone(cfg)).train()
    embed_dim = backbone.embed_dim if model == "cnn" else backbone.config.embed_dim
    classifier = torch.nn.Linear(embed_dim, len(labelled.classes))
    params = list(backbone.parameters()) + list(classifier.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.optim.base_lr, weight_decay=cfg.optim.weight_decay)
    warmup = cfg.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    crops, rng = MultiCrop.from_config(cfg.crops, cfg.data), random.Random(cfg.seed)
    images = [decode_image(p) for p in labelled.paths]  # uint8 [3, H, W], small enough to keep in memory
    labels, hits = torch.tensor(labelled.labels), []
    for _ in range(steps):
        idx = torch.randint(len(images), (cfg.train.batch_size,))
        global_crops, _ = crops.batch([images[i] for i in idx], [random.Random(rng.random()) for _ in idx])
        logits = classifier(backbone(global_crops))  # [2·B, classes]: both global crops
        target = labels[idx].repeat(2)  # [2·B], crop-major like the crops
        loss = F.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        hits.append((logits.argmax(1) == target).float().mean().item())
    print(f"supervised: training-crop accuracy over the last 50 steps {100 * np.mean(hits[-50:]):.1f}%")
    return backbone


def main() -> None:
    from dinokit.eval.significance import paired_bootstrap, percent_of

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="textures", help="the classes (see the docstring)")
    p.add_argument("--steps", type=int, default=None, help="default: the preset's train.steps")
    p.add_argument("--out", default=None, help="work folder (default /tmp/ssl_learns_<family>)")
    p.add_argument("--colour", action="store_true", help="textures: random colours instead of grey levels")
    p.add_argument(
        "--supervised",
        choices=["backbone", "cnn"],
        help="train with the pretraining images' labels instead (the ceiling at this budget): the recipe's "
        "backbone, or a plain CNN for reference",
    )
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. teacher.target=sinkhorn_knopp")
    args = p.parse_args()
    classes, size, per_class = FAMILIES[args.family]
    out = Path(args.out or f"/tmp/ssl_learns_{args.family}")
    if not (out / "unlabelled").exists():
        make_folder(out / "unlabelled", 100, seed=0, labelled=False, colour=args.colour, family=args.family)
        make_folder(out / "heldout", per_class, seed=1, labelled=True, colour=args.colour, family=args.family)
    if args.supervised and not (out / "labelled").exists():  # the same images (same seed), in class folders
        make_folder(out / "labelled", 100, seed=0, labelled=True, colour=args.colour, family=args.family)
    cfg: PretrainConfig = load_config(
        PretrainConfig,
        Path(__file__).parents[1] / "configs/pretrain/tiny_cpu.yaml",
        [f"data.path={out / 'unlabelled'}", f"output_dir={out / 'run'}", *args.overrides]
        + ([f"train.steps={args.steps}"] if args.steps else []),
    )
    heldout = ImageList.from_source(out / "heldout")
    torch.manual_seed(cfg.seed)  # the initialisation the run starts from (train() seeds the same way)
    hits_random = knn_accuracy(
        plain_cnn() if args.supervised == "cnn" else build_backbone(cfg), heldout, cfg.crops.global_size
    )
    from dinokit.train.build import keep_freed_memory
    from dinokit.train.loop import train

    keep_freed_memory()  # as `dinokit train` does on CPU
    t0 = time.perf_counter()
    if args.supervised:
        trained = supervised(cfg, ImageList.from_source(out / "labelled"), cfg.train.steps, args.supervised)
    else:
        trained = load_backbone(train(cfg) / "teacher_backbone")
    minutes = (time.perf_counter() - t0) / 60
    hits_trained = knn_accuracy(trained, heldout, cfg.crops.global_size)
    low, high = paired_bootstrap(percent_of(hits_random), percent_of(hits_trained))
    acc_random, acc_trained = 100 * hits_random.mean().item(), 100 * hits_trained.mean().item()
    print(f"{args.family}: k-NN (k=20) accuracy on {len(heldout)} held-out images of {len(classes)} classes "
          f"(chance {100 / len(classes):.1f}%):")  # fmt: skip
    print(f"  random initialisation: {acc_random:.1f}%")
    kind = {None: "SSL", "backbone": "supervised", "cnn": "supervised plain-CNN"}[args.supervised]
    print(f"  after {cfg.train.steps} {kind} steps ({minutes:.1f} min): {acc_trained:.1f}%")
    print(f"  gain {acc_trained - acc_random:+.1f} points, 95% paired-bootstrap interval [{low:+.1f}, {high:+.1f}]")


if __name__ == "__main__":
    main()
