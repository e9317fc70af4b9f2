"""`dinokit <verb>`: the command line. Thin: parse, validate, call the API, print.

User mistakes (bad paths, options, files) end with one clear message and exit status 2; internal faults keep
their traceback. Each verb is one `_add_<verb>` function registering its parser and handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


# -------------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the architecture a checkpoint holds")
    p.add_argument("path", help="released .pth, dinokit folder/.safetensors, HF folder")
    p.set_defaults(func=_info)


def _info(args) -> int:
    from .models.presets import match_preset
    from .models.weights import LICENCES, infer_config, read_checkpoint

    sd, stored, info = read_checkpoint(args.path)
    config = stored or infer_config(sd, info.get("path", ""))
    c = config
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(("bias_mask", "rope_embed.periods")))
    pos = f"learned {c.pos_grid}×{c.pos_grid} ({c.pos_interpolation} resizing)" if c.pos_embed == "learned" else (
        f"RoPE (head dim {c.head_dim})"
    )
    rows = [
        ("file", args.path),
        ("format", info["format"]),
        ("generation", c.generation),
        ("matches preset", match_preset(c) or "none (custom architecture)"),
        ("width / depth / heads", f"{c.embed_dim} / {c.depth} / {c.num_heads}"),
        ("patch size", c.patch_size),
        ("feed-forward", f"{c.ffn}, hidden {c.ffn_hidden}"),
        ("registers", c.num_registers),
        ("position", pos),
        ("extra norms", ", ".join(n for n in ("cls_norm", "local_cls_norm") if getattr(c, n)) or "none"),
        ("parameters", f"{n_params / 1e6:.1f} M"),
        ("licence family", LICENCES[c.generation]),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# ----------------------------------------------------------------------------------------------- convert
def _add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between dinokit, released and HF layouts")
    p.add_argument("source", help="any checkpoint load_backbone reads")
    p.add_argument("output", help="output folder (dinokit, hf), .safetensors file (dinokit) or .pth (official)")
    p.add_argument("--format", choices=["dinokit", "official", "hf"], default="dinokit")
    p.set_defaults(func=_convert)


def _convert(args) -> int:
    from .models import load_backbone, save_backbone

    model = load_backbone(args.source)
    try:
        out = save_backbone(model, args.output, format=args.format)
    except ValueError as e:  # an architecture the target format cannot express
        raise UserError(str(e)) from None
    print(f"wrote {out} ({args.format} format)")
    return 0


# -------------------------------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluation protocols on frozen features (docs/formats.md)")
    protocols = p.add_subparsers(dest="protocol", required=True, metavar="<protocol>")

    def protocol(name: str, help: str, size: int):
        q = protocols.add_parser(name, help=help)
        q.add_argument("--backbone", required=True, help="any checkpoint load_backbone reads, or random:<preset>")
        q.add_argument("--seed", type=int, default=0, help="seed of random:<preset> and of the protocol")
        q.add_argument("--size", type=int, default=size, help=f"image size in pixels (default {size})")
        q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
        q.add_argument("--output", default=None, help="also write the metrics to this JSON file")
        q.set_defaults(func=_eval)
        return q

    def image_sets(q, what: str) -> None:
        q.add_argument("--train", required=True, help=f"training {what}")
        q.add_argument("--val", required=True, help=f"evaluation {what}")

    def loader(q) -> None:
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--workers", type=int, default=4, help="data-loading processes (default 4)")

    def dense(q, iterations: int) -> None:
        q.add_argument("--crop", type=int, default=None, help="training crop / sliding window (default: --size)")
        q.add_argument("--iterations", type=int, default=iterations, help=f"head training steps ({iterations})")
        q.add_argument("--crops-per-image", type=int, default=1, help="cached random crops per training image")
        q.add_argument("--max-images", type=int, default=None, help="use only the first N training images")

    classes = "images: class sub-folders (ImageNet style) or a path,label list"
    for name, help in (("knn", "weighted k-NN on CLS features"), ("linear", "linear probe grid"),
                       ("logreg", "logistic regression with a C grid")):  # fmt: skip
        q = protocol(name, help, 224)
        image_sets(q, classes)
        loader(q)
        if name == "linear":
            q.add_argument("--epochs", type=int, default=10)
    q = protocol("seg", "dense linear segmentation (mIoU)", 512)
    image_sets(q, "image folder (ADE20K: images/training) or `image label` list")
    q.add_argument("--train-labels", default=None, help="label folder (default: images → annotations in the path)")
    q.add_argument("--val-labels", default=None)
    q.add_argument("--num-classes", type=int, default=None, help="default: largest training label + 1")
    q.add_argument("--reduce-zero-label", action="store_true", help="ADE20K: 0 is 'other' (ignored), 1…150 → 0…149")
    dense(q, 40000)
    q = protocol("depth", "dense linear depth (RMSE, AbsRel, δ1)", 480)
    image_sets(q, "RGB folder (NYU style: train/rgb) or `rgb depth` list")
    q.add_argument("--train-depth", default=None, help="depth folder (default: rgb → depth in the path)")
    q.add_argument("--val-depth", default=None)
    q.add_argument("--min-depth", type=float, default=1e-3)
    q.add_argument("--max-depth", type=float, default=10.0)
    q.add_argument("--depth-scale", type=float, default=1000.0, help="PNG units per metre (default 1000: mm)")
    q.add_argument("--eigen-crop", action="store_true", help="score inside the standard NYU crop only")
    dense(q, 40000)
    q = protocol("retrieval", "instance retrieval (mAP)", 224)
    q.add_argument("--data", required=True, help="retrieval JSON: gallery, queries with positives and junk")
    q = protocol("correspondence", "keypoint correspondence (recall at pixel thresholds)", 224)
    q.add_argument("--pairs", required=True, help="pairs JSON: image_a, image_b, keypoints_a, keypoints_b")
    q.add_argument("--thresholds", type=float, nargs="+", default=[5, 10, 20], help="pixels (default 5 10 20)")


def _eval(args) -> int:
    import json
    import os

    import torch

    from . import eval as E

    if args.size < 1:
        raise UserError("--size must be positive")
    model = _backbone(args.backbone, args.seed)
    torch.manual_seed(args.seed)
    common = dict(size=args.size, device=args.device)
    if args.protocol in ("knn", "linear", "logreg"):
        common.update(batch_size=args.batch_size, num_workers=args.workers)
    if args.protocol in ("seg", "depth"):
        common.update(crop=args.crop or args.size, iterations=args.iterations, crops_per_image=args.crops_per_image,
                      max_images=args.max_images, seed=args.seed)  # fmt: skip
    p = args.protocol
    if p == "knn":
        metrics = E.run_knn(model, args.train, args.val, **common)
    elif p == "linear":
        metrics = E.run_linear(model, args.train, args.val, epochs=args.epochs, seed=args.seed, **common)
    elif p == "logreg":
        metrics = E.run_logreg(model, args.train, args.val, seed=args.seed, **common)
    elif p == "seg":
        metrics = E.run_segmentation(model, args.train, args.val, args.train_labels, args.val_labels,
                                     args.num_classes, args.reduce_zero_label, **common)  # fmt: skip
    elif p == "depth":
        metrics = E.run_depth(model, args.train, args.val, args.train_depth, args.val_depth, args.min_depth,
                              args.max_depth, args.depth_scale, args.eigen_crop, **common)  # fmt: skip
    elif p == "retrieval":
        metrics = E.run_retrieval(model, args.data, **common)
    else:
        metrics = E.run_correspondence(model, args.pairs, thresholds=args.thresholds, **common)
    width = max(len(k) for k in metrics)
    print(f"{p} · {args.backbone}")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4g}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


def _backbone(spec: str, seed: int):
    """`--backbone` → model; a missing path or unknown preset is the user's mistake."""
    from .models import backbone_from_spec

    if not spec.startswith("random:") and not spec.startswith(("http://", "https://")) and not Path(spec).exists():
        raise UserError(f"--backbone {spec}: no such file or folder (or use random:<preset>)")
    try:
        return backbone_from_spec(spec, seed=seed)
    except ValueError as e:
        raise UserError(f"--backbone {spec}: {e}") from None


# -------------------------------------------------------------------------------------------------- data
def _add_data(sub) -> None:
    p = sub.add_parser("data", help="datasets: the offline synthetic benchmark")
    verbs = p.add_subparsers(dest="data_command", required=True, metavar="<command>")
    q = verbs.add_parser("synth", help="write the synthetic benchmark in every evaluation layout")
    q.add_argument("output", help="output folder (created; must not exist or be empty)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    q.add_argument("--scale", type=float, default=1.0, help="multiply every image count (default 1: ~3,300 items)")
    q.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    q.set_defaults(func=_data_synth)


def _data_synth(args) -> int:
    from .data.synthetic import SynthConfig, write_synthetic

    if args.size < 32 or args.scale <= 0:
        raise UserError("--size must be at least 32 pixels and --scale positive")
    config = SynthConfig(size=args.size).scaled(args.scale)
    try:
        out = write_synthetic(args.output, args.seed, config, workers=args.workers)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out} (see {out / 'README.md'})")
    return 0


# -------------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: synthetic data → pretrain a tiny ViT → evaluate random vs trained → report",
        description="Without --backbone/--image: generate the synthetic benchmark, pretrain a tiny ViT with the "
        "DINOv2 recipe, evaluate it against a random one and write DIR/report.md + report.html. With --backbone "
        "or --image: the photo demo (one image's features and the PCA picture of its patches).",
    )
    p.add_argument("--output", default="demo_out", help="output folder (default: demo_out/)")
    p.add_argument("--seed", type=int, default=0)
    photo = p.add_argument_group("photo demo")
    photo.add_argument("--backbone", default=None, help="checkpoint, or random:<preset> (default random:dinov3_vits16)")
    photo.add_argument("--image", default=None, help="an image file (default: a sample photo)")
    photo.add_argument("--size", type=int, default=448, help="input size in pixels (default 448)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    if args.backbone is not None or args.image is not None:
        from .demo_photo import run_photo_demo

        run_photo_demo(Path(args.output), args.backbone or "random:dinov3_vits16", args.image, args.size, args.seed)
        return 0
    from .demo import run_demo

    run_demo(Path(args.output), seed=args.seed)
    return 0


# -------------------------------------------------------------------------------------------------- main
VERBS = [_add_info, _add_convert, _add_eval, _add_data, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinokit", description="DINOv2 / DINOv3 backbones, training and tools")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit with status 2 by argparse's convention
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"dinokit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dinokit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
