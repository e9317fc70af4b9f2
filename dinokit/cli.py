"""`dinokit <verb>`: the command line. Thin: parse, validate, call the API, print.

User mistakes (bad paths, options, files) end with one clear message and exit status 2; internal faults keep
their traceback. Each verb is one `_add_<verb>` function registering its parser and handler.
"""

from __future__ import annotations

import argparse
import os
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


# -------------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: run a photo through a backbone, write features and a PCA map")
    p.add_argument("--output", default="demo_out", help="output folder (default: demo_out/)")
    p.add_argument("--backbone", default="random:dinov3_vits16", help="checkpoint, or random:<preset>")
    p.add_argument("--image", default=None, help="an image file (default: a sample photo)")
    p.add_argument("--size", type=int, default=448, help="input size in pixels (default 448)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from .demo_photo import run_photo_demo

    run_photo_demo(Path(args.output), args.backbone, args.image, args.size, args.seed)
    return 0


# ------------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="self-supervised pretraining (DINOv2 recipe): dinokit train CONFIG.yaml [key=value ...] [--resume]",
        description="Train a backbone with DINO + iBOT + KoLeo and an EMA teacher. Settings come from the YAML "
        "file, overridden by key=value pairs (e.g. data.path=photos/ train.steps=1000). A run folder with "
        "checkpoints resumes automatically; use torchrun for several devices.",
    )
    p.add_argument("config", help="a YAML preset, e.g. configs/pretrain/tiny_cpu.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as YAML)")
    p.add_argument("--resume", action="store_true", help="require resuming from a checkpoint in output_dir")
    p.set_defaults(func=_train)


def _train(args) -> int:
    import logging

    from .config import PretrainConfig, load_config
    from .train import distributed
    from .train.loop import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    try:
        run = train(cfg, resume=args.resume)
    finally:
        distributed.shutdown()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run folder: {run} (teacher backbone: {run / 'teacher_backbone'})")
    return 0


# -------------------------------------------------------------------------------------------------- main
VERBS = [_add_info, _add_convert, _add_demo, _add_train]


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
