"""How much does one patch token of the demo's backbones say about the material under it? A diagnostic for the
demo's segmentation row (docs/training.md, "What a short run does not learn").

On the demo's dense scenes (`demo_out/data/seg`), every 16 × 16 patch gets the majority label of its pixels
(the 255 boundary band left out), and a linear softmax probe (standardised features, full-batch Adam, 300
epochs) is trained on the training scenes' patches and scored on the validation scenes' patches: patch accuracy
and mIoU over the 12 classes (10 materials, ground, wall). The features compared:
- the final patch tokens (after the final norm, as the segmentation protocol reads them) of the randomly
  initialised backbone (`DemoConfig.random_backbone`) and of trained ones (`RUN/teacher_backbone`);
- the CLS token of the same backbones for a 48 px window centred on the patch (the demo's local-crop size;
  the scene reflected at its borders): whether the texture features a network learned reach the patch in
  another form; and for a 24 px window enlarged to 48 px, which shows the dense scenes' patterns (cards 1.2–3.5 m
  away) at about the scale of the object images (cards about 1 m away) the backbone learned its materials on;
- hand-made local features of the same patch: its mean colour, the magnitude of its grey-level spectrum (a
  phase-invariant texture descriptor) and its row; and its raw pixels.
If hand-made texture features separate the materials and the backbones' tokens do no better than raw pixels,
the segmentation probe is limited by the backbone's patch features, not by the task or the probe.

Then, for each trained run, what its iBOT targets follow: the teacher's most likely iBOT prototype of each
patch (what the student is taught to predict at a masked patch) is predicted from the patch's mean colour and,
separately, from its spectrum, by the same linear probe. Targets that follow the colour rather than the
texture teach the student to inpaint colours.

    PYTHONPATH=. python benchmarks/patch_features.py demo_out [more run folders ...]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinokit.config import PretrainConfig, load_config
from dinokit.data.synthetic import IGNORE, SEG_CLASSES
from dinokit.data.transforms import model_mean_std, normalize
from dinokit.demo import DemoConfig
from dinokit.eval.metrics import confusion_matrix, mean_iou
from dinokit.models import load_backbone
from dinokit.models.heads import DINOHead
from dinokit.train.checkpoint import checkpoint_files

PATCH = 16
CLASSES = len(SEG_CLASSES)


def load_split(seg: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `[N, 3, H, W]` in [0, 1] and label maps `[N, H, W]`."""
    paths = sorted((seg / "images" / split).glob("*.png"))
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    labels = np.stack([np.asarray(Image.open(seg / "annotations" / split / p.name)) for p in paths])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(labels.astype(np.int64))


def patches(images: torch.Tensor) -> torch.Tensor:
    """`[N, 3, H, W]` → `[N, h, w, 3, P, P]`."""
    return images.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH).permute(0, 2, 3, 1, 4, 5)


def patch_labels(labels: torch.Tensor) -> torch.Tensor:
    """The majority label of each patch, ignoring the boundary band: `[N·h·w]`."""
    blocks = labels.unfold(1, PATCH, PATCH).unfold(2, PATCH, PATCH).flatten(3)  # [N, h, w, P·P]
    counts = F.one_hot(torch.where(blocks == IGNORE, CLASSES, blocks), CLASSES + 1)[..., :CLASSES].sum(-2)
    return counts.argmax(-1).flatten()


def handmade(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-patch hand-made features, each `[N·h·w, D]`."""
    p = patches(images)  # [N, h, w, 3, P, P]
    n, h, w = p.shape[:3]
    grey = p.mean(3)  # [N, h, w, P, P]
    spectrum = torch.fft.rfft2(grey - grey.mean((-2, -1), keepdim=True)).abs().flatten(-2)  # [N, h, w, P·(P/2+1)]
    spectrum = spectrum / spectrum.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # contrast-invariant
    colour = p.mean((-2, -1))  # [N, h, w, 3]
    row = F.one_hot(torch.arange(h), h).float().view(1, h, 1, h).expand(n, h, w, h)
    flat = lambda t: t.reshape(n * h * w, -1)  # noqa: E731
    return {
        "mean colour": flat(colour),
        "raw pixels": flat(p),
        "spectrum magnitude": flat(spectrum),
        "colour + spectrum + row": flat(torch.cat([colour, spectrum, row], -1)),
    }


@torch.no_grad()
def patch_tokens(model, images: torch.Tensor, batch: int = 50) -> torch.Tensor:
    """Final-normed patch tokens `[N·h·w, D]`."""
    mean, std = model_mean_std(model)
    chunks = images.split(batch)
    return torch.cat([model.forward_features(normalize(x, mean, std)).patches for x in chunks]).flatten(0, 1)


@torch.no_grad()
def window_cls(model, images: torch.Tensor, window: int = 48, size: int = 48, batch: int = 500) -> torch.Tensor:
    """The CLS token of a `window`-pixel crop centred on each patch, resized to `size` pixels: `[N·h·w, D]`."""
    mean, std = model_mean_std(model)
    pad = (window - PATCH) // 2
    padded = F.pad(normalize(images, mean, std), (pad, pad, pad, pad), mode="reflect")  # [N, 3, H+2p, W+2p]
    crops = padded.unfold(2, window, PATCH).unfold(3, window, PATCH)  # [N, 3, h, w, win, win]
    crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, window, window)  # [N·h·w, 3, win, win]
    resized = (F.interpolate(x, size=(size, size), mode="bicubic") if window != size else x for x in crops.split(batch))
    return torch.cat([model.forward_features(x).cls for x in resized])


def fit_predict(train_x, train_y, val_x, classes: int, epochs: int = 300) -> torch.Tensor:
    """A linear softmax classifier on standardised features (full-batch Adam): its predictions for `val_x`."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, val_x = (train_x - mu) / sd, (val_x - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(head(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return head(val_x).argmax(-1)


def probe(train_x, train_y, val_x, val_y) -> tuple[float, float, list[float]]:
    """Patch accuracy, mIoU (as the segmentation protocol scores it) and per-class IoU, all in percent."""
    pred = fit_predict(train_x, train_y, val_x, CLASSES)
    conf = confusion_matrix(pred, val_y, CLASSES).double()  # [C, C], the protocol's own scoring
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag()).clamp_min(1)
    return 100 * (pred == val_y).float().mean().item(), mean_iou(conf), (100 * iou).tolist()


@torch.no_grad()
def ibot_targets(run: Path, *image_sets: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """The teacher's most likely iBOT prototype for each patch `[N·h·w]` of each image set, from the newest
    checkpoint of a run, and the number of prototypes."""
    config = load_config(PretrainConfig, run / "config.yaml")
    head_config = config.model.ibot_head or config.model.dino_head  # null: iBOT shares the DINO head
    name = "ibot_head" if config.model.ibot_head is not None else "dino_head"
    teacher = torch.load(checkpoint_files(run / "checkpoints")[-1], map_location="cpu", weights_only=True)["teacher"]
    backbone = load_backbone(run / "teacher_backbone")
    head = DINOHead(backbone.embed_dim, **dataclasses.asdict(head_config))
    head.load_state_dict({k[len(name) + 1 :]: v for k, v in teacher.items() if k.startswith(name + ".")})
    return [head(patch_tokens(backbone, images)).argmax(-1) for images in image_sets], head.n_prototypes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo", type=Path, help="a `dinokit demo` output folder (data/seg, run/teacher_backbone)")
    parser.add_argument("runs", type=Path, nargs="*", help="more `dinokit train` run folders to compare")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (for the random backbone)")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    (train_images, train_labels), (val_images, val_labels) = (
        load_split(args.demo / "data" / "seg", split) for split in ("training", "validation")
    )
    train_y, val_y = patch_labels(train_labels), patch_labels(val_labels)
    share = torch.bincount(val_y, minlength=CLASSES).float() / len(val_y)
    print(f"{len(train_y)} training and {len(val_y)} validation patches; validation share of ground "
          f"{100 * share[-2]:.0f} %, wall {100 * share[-1]:.0f} %")  # fmt: skip
    features = {name: (a, b) for (name, a), b in zip(handmade(train_images).items(), handmade(val_images).values())}
    models = {"random backbone": DemoConfig().random_backbone(args.seed)}
    for run in [args.demo / "run", *args.runs]:
        models[f"trained ({run})"] = load_backbone(run / "teacher_backbone")
    for name, model in models.items():
        features[name] = (patch_tokens(model, train_images), patch_tokens(model, val_images))
        features[f"{name}, CLS of a 48 px window"] = (window_cls(model, train_images), window_cls(model, val_images))
        features[f"{name}, CLS of a 24 px window enlarged to 48 px"] = (
            window_cls(model, train_images, window=24), window_cls(model, val_images, window=24)
        )
    print(f"| features | patch accuracy % | patch mIoU % | IoU per class ({', '.join(SEG_CLASSES)}) |")
    print("|---|---|---|---|")
    for name, (train_x, val_x) in features.items():
        accuracy, miou, per_class = probe(train_x, train_y, val_x, val_y)
        print(f"| {name} | {accuracy:.1f} | {miou:.1f} | {' '.join(f'{v:.0f}' for v in per_class)} |")

    print("\n| run | prototypes in use | iBOT target predicted from the mean colour | from the spectrum | "
          "most common target |")  # fmt: skip
    print("|---|---|---|---|---|")
    train_hand, val_hand = handmade(train_images), handmade(val_images)
    for run in [args.demo / "run", *args.runs]:
        (train_t, val_t), k = ibot_targets(run, train_images, val_images)
        accuracy = {f: 100 * (fit_predict(train_hand[f], train_t, val_hand[f], k) == val_t).float().mean().item()
                    for f in ("mean colour", "spectrum magnitude")}  # fmt: skip
        majority = 100 * (val_t == train_t.mode().values).float().mean().item()
        colour, spectrum = accuracy["mean colour"], accuracy["spectrum magnitude"]
        used = f"{train_t.unique().numel()} of {k}"
        print(f"| {run} | {used} | {colour:.1f} % | {spectrum:.1f} % | {majority:.1f} % |")


if __name__ == "__main__":
    main()
