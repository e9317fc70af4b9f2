"""Does dino.txt training align text with images at small scale? Train `configs/dinotxt/tiny_cpu.yaml` on the
captioned synthetic classify/train pairs over a frozen backbone, then classify classify/val zero-shot from
class-name prompts alone, against the same model whose text tower is left at its initialisation, and chance.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/dinotxt_learns.py \
        --backbone /tmp/curation_gain/run_random/teacher_backbone [--work /tmp/dinotxt_learns] [--steps 400]
        [--per-class 150] [--seed 0]

The backbone: a ViT-T/16 pretrained with `configs/pretrain/tiny_cpu.yaml` on 64-px synthetic images (any
`--backbone` source works; a random one has little to align). The set: `dinokit data synth --size 64 --captions`
with `--per-class` training and 40 validation images per material (captions: material, shape, tone;
dinokit/data/captions.py). Zero-shot: for each of the ten materials the mean of the L2-normalised text
embeddings of five prompts ("a photo of {m}", "a picture of {m}", "an image of {m}", "{m} pattern", "a card with
{m}"), renormalised; each validation image goes to the most similar class (cosine on the full embedding).
Compared, on the same 400 validation images: the trained model, the same vision head and backbone with a
freshly initialised text tower (the released initialisation, seeded: trained head, untrained text), and chance
(10 %); the interval is the paired bootstrap (dinokit/eval/significance.py) of trained − untrained top-1.

What it claims: after a few hundred CPU steps, text embeddings of the class names (words the captions use, in
prompts the captions never had) land near the images of that class, well above chance and above an untrained
text tower. What it does not claim: anything about real captions, open vocabulary beyond the caption words, or
the released model's numbers; one seed, one run; the prompts share words with the captions (the vocabulary
holds only the caption and prompt words), so this measures alignment, not language generalisation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dinokit.config import load_train_config
from dinokit.data.datasets import ImageList
from dinokit.data.synthetic import MATERIALS, SynthConfig, write_synthetic
from dinokit.eval.significance import paired_bootstrap, percent_of
from dinokit.text import load_dinotxt
from dinokit.train.dinotxt import init_weights
from dinokit.train.loop import train

PROMPTS = ("a photo of {}", "a picture of {}", "an image of {}", "{} pattern", "a card with {}")


@torch.no_grad()
def class_embeddings(model) -> torch.Tensor:
    rows = []
    for m in MATERIALS:
        e = F.normalize(model.encode_text(model.tokenize([p.format(m) for p in PROMPTS])), dim=-1)
        rows.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(rows)  # [10, E]


@torch.no_grad()
def zero_shot_hits(model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    classes = class_embeddings(model)
    feats = torch.cat([F.normalize(model.encode_image(b), dim=-1) for b in images.split(100)])  # [N, E]
    return ((feats @ classes.T).argmax(1) == labels).float()


def load_images(folder: Path, size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    from dinokit.data.images import decode_image
    from dinokit.data.transforms import center_crop, normalize, resize, to_float

    items = ImageList.from_source(folder)
    x = torch.stack([normalize(center_crop(resize(to_float(decode_image(p)), size), size), mean, std)
                     for p in items.paths])  # fmt: skip
    names = [items.classes[i] for i in items.labels]
    return x, torch.tensor([MATERIALS.index(n) for n in names])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--work", default="/tmp/dinotxt_learns")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--per-class", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(args.work)
    t0 = time.perf_counter()
    config = SynthConfig(size=64, pretrain=1, train_per_class=args.per_class, val_per_class=40, dense_train=1,
                         dense_val=1, pairs=1, landmarks=1, views=2, distractors=1, captions=True)  # fmt: skip
    synth = write_synthetic(work / "synth", seed=args.seed, config=config, workers=2, progress=False)
    run = work / "run"
    cfg = load_train_config("configs/dinotxt/tiny_cpu.yaml", [
        f"data.path={synth / 'classify' / 'train'}", f"dinotxt.backbone={args.backbone}", f"output_dir={run}",
        f"train.steps={args.steps}", f"seed={args.seed}"])  # fmt: skip
    t1 = time.perf_counter()
    train(cfg)
    t2 = time.perf_counter()

    model = load_dinotxt(run / "dinotxt.pth", backbone=args.backbone, vocab=run / "captions_vocab.txt")
    images, labels = load_images(synth / "classify" / "val", cfg.data.image_size, cfg.data.mean, cfg.data.std)
    trained = zero_shot_hits(model, images, labels)
    scale = float(model.logit_scale.detach())
    torch.manual_seed(args.seed)  # a fresh text tower (the released init, seeded); the head keeps its trained weights
    fresh = load_dinotxt(run / "dinotxt.pth", backbone=args.backbone, vocab=run / "captions_vocab.txt")
    head = {k: v.clone() for k, v in fresh.visual_model.head.state_dict().items()}
    init_weights(fresh, cfg.dinotxt.logit_scale_init)
    fresh.visual_model.head.load_state_dict(head)
    untrained = zero_shot_hits(fresh, images, labels)

    a, b = percent_of(untrained), percent_of(trained)
    low, high = paired_bootstrap(a, b, seed=args.seed)
    rows = {"trained": b.value(), "untrained_text": a.value(), "chance": 100.0 / len(MATERIALS)}
    result = {**rows, "interval_trained_minus_untrained": [low, high], "val_images": len(labels),
              "train_pairs": args.per_class * len(MATERIALS), "steps": args.steps, "batch": cfg.train.batch_size,
              "logit_scale": float(torch.tensor(scale).exp()), "synth_s": t1 - t0, "train_s": t2 - t1,
              "total_s": time.perf_counter() - t0}  # fmt: skip
    (work / "results.json").write_text(json.dumps(result, indent=1))
    print("| model | zero-shot top-1 (%) |\n|---|---|")
    print(f"| trained head + trained text tower | {rows['trained']:.1f} |")
    print(f"| trained head + text tower at init | {rows['untrained_text']:.1f} |")
    print(f"| chance | {rows['chance']:.1f} |")
    print(f"\ntrained − untrained: {b.value() - a.value():+.1f} points, 95 % paired-bootstrap interval "
          f"[{low:+.1f}, {high:+.1f}]; {len(labels)} val images, {args.steps} steps × batch {cfg.train.batch_size}, "
          f"train {t2 - t1:.0f} s, total {result['total_s']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
