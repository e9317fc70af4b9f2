"""`dinokit <verb>`: the command line. Thin: parse, validate, call the API, print.

User mistakes (bad paths, options, files) end with one clear message and exit status 2: a `UserError`, an
argparse usage error, or an `OSError` the system raised on a path (its message and the path); internal faults
keep their traceback. Each verb is one `_add_<verb>` function registering its parser and handler.

Building the parser imports nothing heavy (tests/test_cli_startup.py checks it): torch, numpy and the models are
imported inside the handlers, so `dinokit --help` and `dinokit --version` answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from . import __version__
from .atomic import atomic_write_text
from .errors import UserError


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (a usage error, exit status 2, otherwise)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer ≥ 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (float() also accepts `nan` and `inf`, which no option means)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device this machine has (`cpu`, `cuda`, `cuda:1`, `mps` …)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device name (cpu, cuda, cuda:1, mps …)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError("no CUDA device here (this PyTorch has no CUDA, or no GPU is visible)")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError("no MPS device here")
    return text


BACKBONE_HELP = "a checkpoint path or URL, hf:<org>/<name>, official:<preset> or random:<preset>"


def _compute_options(p) -> None:
    """--batch-size, --device and --dtype, the same on every tool verb that runs a backbone."""
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward (default 8)")
    p.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="compute precision")


# -------------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the architecture a checkpoint holds")
    p.add_argument("path", help="released .pth, dinokit folder/.safetensors, HF folder")
    p.set_defaults(func=_info)


def _info(args) -> int:
    import torch

    from .models.architectures import ARCHITECTURES
    from .models.presets import match_preset
    from .models.weights import LICENCES, check_state_dict, infer_config, read_checkpoint
    from .text.checkpoint import describe_dinotxt, is_dinotxt_state_dict

    sd, stored, info = read_checkpoint(args.path)
    if stored is None and is_dinotxt_state_dict(sd):  # a dino.txt vision head + text encoder, not a backbone
        return _print_rows([("file", args.path), ("format", info["format"]), *describe_dinotxt(sd)])
    c = stored or infer_config(sd, info.get("path", ""))
    with torch.device("meta"):  # the architecture without memory, to check the file as load_backbone does
        check_state_dict(ARCHITECTURES[c.kind].model(c).state_dict(), sd)
    n_params = sum(v.numel() for k, v in sd.items() if not k.endswith(("bias_mask", "rope_embed.periods")))
    if c.kind == "convnext":
        rows = [
            ("file", args.path),
            ("format", info["format"]),
            ("generation", c.generation),
            ("kind", "ConvNeXt (DINOv3 distilled student)"),
            ("matches preset", match_preset(c) or "none (custom architecture)"),
            ("depths", " / ".join(map(str, c.depths))),
            ("dims", " / ".join(map(str, c.dims))),
            ("output", f"stride {c.patch_size}, width {c.embed_dim}, CLS = average pool, no registers"),
            ("parameters", f"{n_params / 1e6:.1f} M"),
            ("licence family", LICENCES[c.generation]),
        ]
        return _print_rows(rows)
    if c.pos_embed == "learned":
        pos = f"learned {c.pos_grid}×{c.pos_grid} ({c.pos_interpolation} resizing)"
    else:
        pos = f"RoPE (head dim {c.head_dim})"
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
    return _print_rows(rows)


def _print_rows(rows: list[tuple[str, object]]) -> int:
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
        q.add_argument("--backbone", required=True, help=BACKBONE_HELP)
        q.add_argument("--seed", type=non_negative_int, default=0, help="seed of random:<preset> and of the protocol")
        q.add_argument("--size", type=positive_int, default=size, help=f"image size in pixels (default {size})")
        q.add_argument(
            "--device", type=device_name, default=None, help="cpu, cuda, cuda:1 … (default: cuda when available)"
        )
        q.add_argument("--output", default=None, help="also write the metrics to this JSON file")
        q.set_defaults(func=_eval)
        return q

    def image_sets(q, what: str, val: str | None = None) -> None:
        q.add_argument("--train", required=True, help=f"training {what}")
        q.add_argument("--val", required=True, help=f"evaluation {val or what}")

    def loader(q) -> None:
        q.add_argument("--batch-size", type=positive_int, default=64)
        q.add_argument("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1),
                       help="data-loading processes (default: 4, or the CPU count when smaller)")  # fmt: skip

    def dense(q, iterations: int) -> None:
        q.add_argument("--crop", type=positive_int, help="training crop / sliding window (default: --size)")
        q.add_argument("--iterations", type=positive_int, default=iterations, help=f"head steps ({iterations})")
        q.add_argument("--crops-per-image", type=positive_int, default=1, help="cached random crops per training image")
        q.add_argument("--max-images", type=positive_int, default=None, help="use only the first N training images")

    classes = "images: class sub-folders (ImageNet style) or a path,label list"
    for name, help in (("knn", "weighted k-NN on CLS features"), ("linear", "linear probe grid"),
                       ("logreg", "logistic regression with a C grid")):  # fmt: skip
        q = protocol(name, help, 224)
        image_sets(q, classes)
        loader(q)
        if name == "linear":
            q.add_argument("--epochs", type=positive_int, default=10)
    q = protocol("seg", "dense linear segmentation (mIoU)", 512)
    image_sets(q, "image folder (ADE20K: images/training) or `image label` list",
               "image folder (ADE20K: images/validation) or `image label` list")  # fmt: skip
    q.add_argument("--train-labels", default=None, help="label folder (default: images → annotations in the path)")
    q.add_argument("--val-labels", default=None)
    q.add_argument("--num-classes", type=positive_int, default=None, help="default: largest training label + 1")
    q.add_argument("--reduce-zero-label", action="store_true", help="ADE20K: 0 is 'other' (ignored), 1…150 → 0…149")
    dense(q, 40000)
    q = protocol("depth", "dense linear depth (RMSE, AbsRel, δ1)", 480)
    image_sets(q, "RGB folder (NYU style: train/rgb) or `rgb depth` list",
               "RGB folder (NYU style: test/rgb) or `rgb depth` list")  # fmt: skip
    q.add_argument("--train-depth", default=None, help="depth folder (default: rgb → depth in the path)")
    q.add_argument("--val-depth", default=None)
    q.add_argument("--min-depth", type=finite_float, default=1e-3)
    q.add_argument("--max-depth", type=finite_float, default=10.0)
    q.add_argument("--depth-scale", type=positive_float, default=1000.0, help="PNG units per metre (default 1000: mm)")
    q.add_argument("--eigen-crop", action="store_true", help="score inside the standard NYU crop only")
    dense(q, 40000)
    q = protocol("retrieval", "instance retrieval (mAP)", 224)
    q.add_argument("--data", required=True, help="retrieval JSON: gallery, queries with positives and junk")
    q = protocol("correspondence", "keypoint correspondence (recall at pixel thresholds)", 224)
    q.add_argument("--pairs", required=True, help="pairs JSON: image_a, image_b, keypoints_a, keypoints_b")
    q.add_argument("--thresholds", type=positive_float, nargs="+", default=[5, 10, 20], help="pixels (default 5 10 20)")

    def text(q, names: str) -> None:  # dino.txt protocols: the text model and its prompts
        q.add_argument("--dinotxt", required=True, help=DINOTXT_HELP)
        q.add_argument("--vocab", default=None, help=VOCAB_HELP)
        q.add_argument("--classnames", default=None, help=names)
        q.add_argument("--templates", default=None,
                       help="prompt templates, one per line with {} for the class (default: the 80 ImageNet ones)")

    q = protocol("zeroshot", "dino.txt zero-shot classification (top-1, top-5)", 512)
    q.add_argument("--val", required=True, help=classes)
    text(q, "class names, one per line in sorted folder order, or JSON (a list, or folder → name); `imagenet`: the "
         "release's ImageNet-1k names; default: the folder names with _ as spaces")  # fmt: skip
    loader(q)
    q = protocol("openseg", "dino.txt open-vocabulary segmentation, no training (mIoU)", 512)
    q.add_argument("--val", required=True, help="image folder (ADE20K: images/validation) or `image label` list")
    q.add_argument("--val-labels", default=None, help="label folder (default: images → annotations in the path)")
    text(q, "class names of labels 0, 1, …: one per line or a JSON list; ade20k or cityscapes: the release's names "
         "(default: classes.json near the images)")  # fmt: skip
    q.add_argument("--reduce-zero-label", action="store_true", help="ADE20K: 0 is 'other' (ignored), 1…150 → 0…149")
    q.add_argument("--mode", choices=["slide", "whole"], default="slide",
                   help="sliding windows (the release's default) or the whole image at once")  # fmt: skip
    q.add_argument("--window", type=positive_int, default=384, help="slide: window side in px (default 384)")
    q.add_argument("--stride", type=positive_int, default=192, help="slide: window step in px (default 192)")


def _eval(args) -> int:
    import json

    import torch

    from . import eval as E

    out = Path(args.output) if args.output else None
    if out is not None:  # before the work, not after it: a long evaluation must not end in an unwritable path
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--output {out}: cannot create its folder ({e.strerror})") from None
        if out.is_dir():
            raise UserError(f"--output {out} is a folder; give a file name such as {out / 'metrics.json'}")
    model = _backbone(args.backbone, args.seed)
    if args.protocol in ("zeroshot", "openseg"):
        model = _dinotxt(args.dinotxt, model, args.vocab)
    torch.manual_seed(args.seed)
    common = dict(size=args.size, device=args.device)
    if args.protocol in ("knn", "linear", "logreg", "zeroshot"):
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
    elif p == "zeroshot":
        from .eval.zeroshot import run_zeroshot

        metrics = run_zeroshot(model, args.val, args.classnames, args.templates, **common)
    elif p == "openseg":
        from .eval.openseg import run_openseg

        metrics = run_openseg(model, args.val, args.val_labels, args.classnames, args.templates, args.reduce_zero_label,
                              mode=args.mode, side=args.window, stride=args.stride, **common)  # fmt: skip
    else:
        metrics = E.run_correspondence(model, args.pairs, thresholds=args.thresholds, **common)
    width = max(len(k) for k in metrics)
    print(f"{p} · {args.backbone}")
    for k, v in metrics.items():
        print(f"  {k:<{width}}  {v:.4g}")
    if out is not None:
        try:
            atomic_write_text(out, json.dumps(metrics, indent=2) + "\n")
        except OSError as e:  # the metrics were printed above, so nothing is lost
            raise UserError(f"--output {out}: could not write the metrics ({e.strerror})") from None
        print(f"wrote {out}")
    return 0


DINOTXT_HELP = "dino.txt vision head + text encoder file (dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth)"
VOCAB_HELP = "CLIP's bpe_simple_vocab_16e6.txt.gz (default: the one inside an installed open_clip_torch)"


def _dinotxt(path: str, backbone, vocab: str | None = None, need_vocab: bool = True):
    """`--dinotxt` (+ the backbone module, + `--vocab` when prompts are tokenized) → a DinoTxt model."""
    from .text import find_vocab, load_dinotxt

    if not Path(path).expanduser().is_file():
        raise UserError(f"--dinotxt {path}: no such file (the released dino.txt vision-head-and-text-encoder .pth)")
    if need_vocab and vocab is None:
        vocab = find_vocab()
        if vocab is None:
            raise UserError("text prompts need CLIP's BPE vocabulary: pass --vocab <path of "
                            "bpe_simple_vocab_16e6.txt.gz> (shipped in the open_clip_torch wheel)")  # fmt: skip
    return load_dinotxt(path, backbone=backbone, vocab=vocab)


def _backbone(spec: str, seed: int):
    """`--backbone` → model; a missing path or unknown preset is the user's mistake."""
    from .models import backbone_from_spec

    if not spec.startswith(("random:", "official:", "hf:", "http://", "https://")) and not Path(spec).exists():
        raise UserError(f"--backbone {spec}: no such file or folder (or use random:<preset>, official:<preset>, "
                        "hf:<org>/<name> or a URL)")  # fmt: skip
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
    q.add_argument("--seed", type=non_negative_int, default=0)
    q.add_argument("--family", choices=["materials", "shapes"], default="materials",
                   help="materials: the full benchmark (every layout); shapes: eight flat shapes in random colours, "
                   "pretrain/ and classify/ only (size 64 unless --size)")  # fmt: skip
    q.add_argument("--size", type=int, default=None, help="image side in pixels, 32–2048 (default 128; shapes: 64)")
    q.add_argument("--scale", type=positive_float, default=1.0,
                   help="multiply every image count (default 1: ~3,300 items)")  # fmt: skip
    q.add_argument("--workers", type=positive_int, default=None, help="processes (default: CPU count, at most 8)")
    q.add_argument("--long-tail", type=finite_float, nargs="?", const=1.5, default=None, metavar="EXPONENT",
                   help="a long-tailed pretrain pool: object images whose material follows a Zipf law with this "
                   "exponent (≥ 0; 1.5 when given bare)")  # fmt: skip
    q.add_argument("--duplicates", type=finite_float, default=0.0, metavar="FRACTION",
                   help="fraction of the pretrain pool, in [0, 1), that are planted near-duplicates: edited copies "
                   "of earlier pool images, listed in pretrain.json (default 0)")  # fmt: skip
    q.add_argument("--captions", action="store_true",
                   help="also write a same-named .txt caption (material, shape, tone) beside every classify/ image "
                   "and pretrain/ object image, and captions_vocab.txt, a BPE vocabulary for them "
                   "(dino.txt training)")  # fmt: skip
    q.set_defaults(func=_data_synth)


def _data_synth(args) -> int:
    from .data.synthetic import SynthConfig, write_synthetic

    size = args.size if args.size is not None else (64 if args.family == "shapes" else 128)
    if not 32 <= size <= 2048:  # beyond 2048 px a scene's buffers outgrow a laptop
        raise UserError(f"--size must be 32–2048 pixels, got {size}")
    if args.family == "shapes":
        return _synth_shapes(args, size)
    if args.long_tail is not None and args.long_tail < 0:
        raise UserError(f"--long-tail must be a Zipf exponent ≥ 0, got {args.long_tail:g}")
    if not 0 <= args.duplicates < 1:
        raise UserError(f"--duplicates must be a fraction in [0, 1), got {args.duplicates:g}")
    config = SynthConfig(size=size, long_tail=args.long_tail, duplicates=args.duplicates,
                         captions=args.captions).scaled(args.scale)  # fmt: skip
    try:
        out = write_synthetic(args.output, args.seed, config, workers=args.workers)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out} (see {out / 'README.md'})")
    return 0


def _synth_shapes(args, size: int) -> int:
    from .data.shapes import ShapesConfig, write_shapes

    given = [name for name, on in (("--long-tail", args.long_tail is not None), ("--duplicates", args.duplicates > 0),
                                   ("--captions", args.captions)) if on]  # fmt: skip
    if given:
        raise UserError(f"{', '.join(given)} belong to the materials family, not to --family shapes")
    try:
        out = write_shapes(args.output, args.seed, ShapesConfig(size=size).scaled(args.scale), workers=args.workers)
    except FileExistsError as e:
        raise UserError(str(e)) from None
    print(f"wrote {out}: pretrain/ (unlabelled) and classify/{{train,val}}/<shape>/")
    return 0


# -------------------------------------------------------------------------------------------------- demo
def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="end-to-end demo: synthetic data → pretrain a tiny ViT → evaluate random vs trained → report",
        description="Without --backbone/--image: generate the synthetic benchmark, pretrain a tiny ViT with the "
        "DINOv2 recipe, evaluate it against a random one and write DIR/report.md + report.html. With --backbone "
        "or --image: the photo demo (one image's features and the PCA picture of its patches).",
    )
    p.add_argument("--output", default=None, help="output folder (default: demo_out/; the photo demo: photo_demo/)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    photo = p.add_argument_group("photo demo")
    photo.add_argument("--backbone", default=None, help=f"{BACKBONE_HELP} (default random:dinov3_vits16)")
    photo.add_argument("--image", default=None, help="an image file (default: a sample photo)")
    photo.add_argument("--size", type=positive_int, default=448, help="input size in pixels (default 448)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    if args.backbone is not None or args.image is not None:
        from .demo_photo import run_photo_demo

        # a folder of its own: demo_out/pca.png is a figure of the training demo's report
        out = Path(args.output or "photo_demo")
        run_photo_demo(out, args.backbone or "random:dinov3_vits16", args.image, args.size, args.seed)
        return 0
    from .demo import run_demo

    run_demo(Path(args.output or "demo_out"), seed=args.seed)
    return 0


# ------------------------------------------------------------------------------------------------- train
def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="self-supervised pretraining and the DINOv3 stages: dinokit train RECIPE [key=value ...] [--resume]",
        description="Train a backbone with DINO + iBOT + KoLeo (+ Gram anchoring) and an EMA teacher. Settings come "
        "from a YAML file or a shipped recipe by name (tiny_cpu, dinov3_vits16, stages/gram, …), overridden by "
        "key=value pairs (e.g. data.path=photos/ train.steps=1000); init.run=RUN_DIR starts a stage from an "
        "earlier run. A run folder with checkpoints resumes automatically; use torchrun for several devices.",
    )
    p.add_argument("config", help="a YAML file or a shipped recipe's name, e.g. tiny_cpu or configs/stages/gram.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as YAML)")
    p.add_argument("--resume", action="store_true", help="require resuming from a checkpoint in output_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    p.set_defaults(func=_train)


def _train(args) -> int:
    import logging

    import torch

    from .config import DinoTxtRunConfig, load_train_config, to_dict
    from .train import distributed
    from .train.loop import train

    logging.getLogger("dinokit").setLevel(logging.INFO)  # the run's messages; main() prints them above the bar
    cfg = load_train_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None), end="")
        return 0
    if not torch.cuda.is_available():
        from .train.build import keep_freed_memory

        keep_freed_memory()
    try:
        run = train(cfg, resume=args.resume)
    finally:
        distributed.shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if isinstance(cfg, DinoTxtRunConfig):  # a text-alignment run
        print(f"run folder: {run} (dino.txt weights: {run / 'dinotxt.pth'}; load_dinotxt(..., backbone="
              f"{cfg.dinotxt.backbone!r}, vocab=<the vocabulary file in the run folder>))")
    else:
        made = [run / "teacher_backbone"] if cfg.distill is None else [run / "students" / s.name / "backbone"
                                                                        for s in cfg.distill.students]  # fmt: skip
        print(f"run folder: {run} (backbones: {', '.join(map(str, made))})")
    return 0


# ----------------------------------------------------------------------------------------------- extract
def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="frozen features of images → shards + index (resumable)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, or .txt/.csv file lists")
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--output", required=True, help="output folder (rerun to resume)")
    p.add_argument("--size", type=positive_int, default=None, help="shorter side in px (default: native size)")
    p.add_argument("--tile", type=positive_int, default=None, help="tile size in px for huge images (maps stitched)")
    p.add_argument("--overlap", type=non_negative_int, default=0, help="tile overlap in px (overlaps are averaged)")
    p.add_argument("--layers", type=int, nargs="*", default=[],
                   help="also store these blocks' patch tokens (0-based; for a ConvNeXt: its stages)")
    _compute_options(p)
    p.add_argument("--store-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--format", choices=["safetensors", "npy"], default="safetensors")
    p.add_argument("--shard-size", type=positive_int, default=256, help="images per shard")
    p.add_argument("--workers", type=non_negative_int, default=2, help="image-decoding processes")
    p.set_defaults(func=_extract)


def _extract(args) -> int:
    from .models import backbone_from_spec
    from .tools.extract import extract_features

    model = backbone_from_spec(args.backbone)
    out = extract_features(
        model, args.inputs, args.output, size=args.size, tile=args.tile, overlap=args.overlap, layers=args.layers,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, store_dtype=args.store_dtype,
        format=args.format, shard_size=args.shard_size, num_workers=args.workers, backbone_name=args.backbone,
    )  # fmt: skip
    print(f"features in {out} (read them with dinokit.read_features({str(out)!r}))")
    return 0


# ------------------------------------------------------------------------------------------------ export
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a backbone (ONNX with dynamic batch and image size)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="<format>")
    q = kinds.add_parser("onnx", help="ONNX: images [B,3,H,W] → cls, registers, patches; checked with onnxruntime")
    q.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    q.add_argument("--output", required=True, help="FILE.onnx")
    q.add_argument("--opset", type=positive_int, default=18)
    q.add_argument("--size", type=positive_int, default=None, help="example and check size in px (default 8 patches)")
    q.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx (dynamic int8 quantisation)")
    q.set_defaults(func=_export)


def _export(args) -> int:
    from .models import backbone_from_spec
    from .tools.export import export_onnx

    model = backbone_from_spec(args.backbone)
    size = None if args.size is None else max(1, args.size // model.patch_size) * model.patch_size
    report = export_onnx(model, args.output, opset=args.opset, example_size=size, quantize=args.int8)
    print(f"wrote {report['path']} (opset {report['opset']}; dynamic batch, height, width)")
    for res, errs in report["max_abs_diff"].items():
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in errs.items())
        print(f"  onnxruntime vs PyTorch fp32 at {res}: max abs diff {diffs}")
    if "int8" in report:
        c = report["int8"]["cosine"]
        print(f"wrote {report['int8']['path']} (int8): cosine to fp32 cls {c['cls']:.4f}, patches mean "
              f"{c['patches_mean']:.4f} / min {c['patches_min']:.4f}")  # fmt: skip
    return 0


# --------------------------------------------------------------------------------------------------- viz
def _add_viz(sub) -> None:
    p = sub.add_parser("viz", help="pictures of features: PCA colours, similarity maps, CLS attention, text prompts")
    p.add_argument("kind", choices=["pca", "similarity", "attention", "text"])
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--output", required=True, help="PNG file")
    p.add_argument("--size", type=non_negative_int, default=448, help="shorter side in px (0: native)")
    p.add_argument("--foreground", type=finite_float, default=None,
                   help="pca: black out the background below this value")  # fmt: skip
    p.add_argument("--query", default=None, help="similarity: Y,X pixel in the first image (default: its centre)")
    p.add_argument("--dinotxt", default=None, help=f"text: {DINOTXT_HELP}")
    p.add_argument("--prompt", action="append", default=None, help="text: a text prompt, one panel each (repeat)")
    p.add_argument("--vocab", default=None, help=f"text: {VOCAB_HELP}")
    _compute_options(p)
    p.set_defaults(func=_viz)


def _viz(args) -> int:
    from .data.images import decode_image
    from .models import backbone_from_spec
    from .tools import viz

    text = args.kind == "text"
    if text and not (args.dinotxt and args.prompt):
        raise UserError("viz text needs --dinotxt CKPT and at least one --prompt TEXT")
    if not text and (args.dinotxt or args.prompt or args.vocab):
        raise UserError("--dinotxt, --prompt and --vocab belong to `dinokit viz text`")
    model = _backbone(args.backbone, 0) if text else backbone_from_spec(args.backbone)
    if text:
        model = _dinotxt(args.dinotxt, model, args.vocab)
    images = [decode_image(path) for path in args.images]
    size = args.size or None
    compute = dict(batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    if text:
        picture = viz.render_text_similarity(model, images, args.prompt, size, **compute)
    elif args.kind == "pca":
        picture = viz.render_pca(model, images, size, args.foreground, **compute)
    elif args.kind == "similarity":
        try:
            query = None if args.query is None else tuple(float(v) for v in args.query.split(","))
        except ValueError:
            query = ()
        if query is not None and len(query) != 2:
            raise UserError(f"--query must be Y,X in pixels, got {args.query!r}")
        picture = viz.render_similarity(model, images, query, size, **compute)
    else:
        picture = viz.render_attention(model, images, size, **compute)
    viz.save_png(picture, args.output)
    print(f"wrote {args.output} ({picture.shape[1]}×{picture.shape[0]} px)")
    return 0


# ------------------------------------------------------------------------------------------------- index
def _add_index(sub) -> None:
    p = sub.add_parser("index", help="image search: a faiss index over CLS or pooled patch features")
    ops = p.add_subparsers(dest="op", required=True, metavar="<build|search>")
    b = ops.add_parser("build", help="index images (or a folder from `dinokit extract`); extends an existing index")
    b.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, file lists, or one features folder")
    b.add_argument("--output", required=True, help="index folder")
    b.add_argument("--backbone", default=None, help=f"{BACKBONE_HELP} (not needed for features)")
    b.add_argument("--kind", choices=["exact", "ivf", "hnsw"], default="exact")
    b.add_argument("--source", choices=["cls", "patches"], default="cls", help="CLS, or mean-pooled patches")
    b.add_argument("--size", type=positive_int, default=224, help="shorter side in px when embedding images")
    b.add_argument("--nlist", type=positive_int, default=None, help="ivf: number of clusters")
    b.set_defaults(func=_index_build)
    s = ops.add_parser("search", help="top-k most similar indexed images for query images")
    s.add_argument("index", help="index folder")
    s.add_argument("queries", nargs="+", metavar="QUERY", help="query images, folders or file lists")
    s.add_argument("--k", type=positive_int, default=5)
    s.add_argument("--backbone", default=None, help="default: the backbone the index was built with")
    s.add_argument("--json", default=None, help="also write the results to this JSON file")
    s.set_defaults(func=_index_search)


def _index_build(args) -> int:
    from .tools.index import build_index

    settings = {"nlist": args.nlist} if args.nlist else {}
    index = build_index(args.inputs, args.output, args.backbone, args.kind, args.source, args.size, **settings)
    print(f"{args.output}: {index.kind} index over {index.source} of {len(index)} images (dim {index.dim})")
    return 0


def _index_search(args) -> int:
    import json

    from .tools.index import search_index

    results = search_index(args.index, args.queries, args.k, args.backbone)
    for query, hits in results.items():
        print(query)
        for rank, (path, score) in enumerate(hits, 1):
            print(f"  {rank:>3}  {score:.4f}  {path}")
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
    return 0


# -------------------------------------------------------------------------------------------- prototypes
def _add_prototypes(sub) -> None:
    p = sub.add_parser("prototypes", help="few-shot class prototypes: per-patch classes and OOD masks")
    ops = p.add_subparsers(dest="op", required=True, metavar="<build|apply>")

    b = ops.add_parser("build", help="prototypes from labelled images (class sub-folders or a path,label list), "
                       "or from text prompts with dino.txt")  # fmt: skip
    b.add_argument("source", nargs="?", default=None, help="folder with one sub-folder per class, or a .txt/.csv list")
    b.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    b.add_argument("--dinotxt", default=None, help=f"text prototypes (with --prompt): {DINOTXT_HELP}")
    b.add_argument("--prompt", action="append", default=None, help="a text prompt, one class each (repeat; --dinotxt)")
    b.add_argument("--vocab", default=None, help=VOCAB_HELP)
    b.add_argument("--output", required=True, help="prototypes file (.safetensors)")
    b.add_argument("--masks", default=None, help="folder of masks named <image stem>.png (white = class region)")
    b.add_argument("--size", type=non_negative_int, default=448, help="shorter side in px (0: native)")
    b.add_argument("--per-class", type=positive_int, default=1, help="prototypes per class (cosine k-means when > 1)")
    _compute_options(b)
    b.set_defaults(func=_prototypes_build)
    a = ops.add_parser("apply", help="class map, OOD score and OOD mask for images")
    a.add_argument("images", nargs="+", metavar="IMAGE")
    a.add_argument("--prototypes", required=True, help="file from `dinokit prototypes build`")
    a.add_argument("--output", required=True, help="output folder (a PNG and an .npz per image)")
    a.add_argument("--threshold", type=finite_float, default=None, help="OOD threshold (default: the calibrated one)")
    a.add_argument("--backbone", default=None, help="default: the backbone the prototypes were built with")
    a.add_argument("--dinotxt", default=None, help="text prototypes: the dino.txt file (default: the one recorded)")
    _compute_options(a)
    a.set_defaults(func=_prototypes_apply)


def _prototypes_build(args) -> int:
    from .models import backbone_from_spec
    from .tools.prototypes import build_prototypes

    if args.prompt or args.dinotxt:
        return _prototypes_from_text(args)
    if args.source is None:
        raise UserError("give labelled images (SOURCE), or text prompts: --dinotxt CKPT --prompt TEXT …")
    if args.vocab:
        raise UserError("--vocab belongs to text prototypes (--dinotxt with --prompt)")
    model = backbone_from_spec(args.backbone)
    protos = build_prototypes(model, args.source, args.masks, args.size or None, args.per_class,
                              batch_size=args.batch_size, device=args.device, dtype=args.dtype)  # fmt: skip
    protos.meta["backbone"] = args.backbone
    protos.save(args.output)
    counts = ", ".join(f"{n} ({c} patches)" for n, c in zip(protos.names, protos.counts))
    print(f"wrote {args.output}: {counts}; OOD threshold {protos.threshold:.4f} (99th percentile of known patches)")
    return 0


def _prototypes_from_text(args) -> int:
    from .tools.prototypes import text_prototypes

    if not (args.dinotxt and args.prompt):
        raise UserError("text prototypes need both --dinotxt CKPT and at least one --prompt TEXT")
    if args.source is not None or args.masks or args.per_class != 1:
        raise UserError("text prototypes come from --prompt alone: drop SOURCE, --masks and --per-class")
    model = _dinotxt(args.dinotxt, _backbone(args.backbone, 0), args.vocab)
    protos = text_prototypes(model, args.prompt, args.size or None)
    protos.meta.update(backbone=args.backbone, dinotxt=str(Path(args.dinotxt).expanduser().resolve()))
    protos.save(args.output)
    print(f"wrote {args.output}: {len(protos.names)} text prototypes ({', '.join(protos.names)}) in the dino.txt patch "
          "space; no calibrated OOD threshold (pass --threshold to `prototypes apply` for a mask)")  # fmt: skip
    return 0


def _prototypes_apply(args) -> int:
    import numpy as np

    from .data.images import decode_image
    from .models import backbone_from_spec
    from .tools.prototypes import DINOTXT_SPACE, Prototypes, apply_prototypes_to_images, render_result
    from .tools.viz import save_png

    protos = Prototypes.load(args.prototypes)
    spec = args.backbone or protos.meta.get("backbone")
    if not spec:
        raise UserError("the prototypes file does not record its backbone; pass --backbone")
    model = backbone_from_spec(spec)
    if protos.space == DINOTXT_SPACE or args.dinotxt:  # the space is checked against the model when applied
        ckpt = args.dinotxt or protos.meta.get("dinotxt")
        if not ckpt:
            raise UserError("these text prototypes do not record their dino.txt file; pass --dinotxt")
        model = _dinotxt(ckpt, model, need_vocab=False)  # the prompts are already embedded: no tokenizer needed
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    images = (decode_image(path) for path in args.images)  # decoded as the batches need them
    results = apply_prototypes_to_images(model, protos, images, args.threshold, batch_size=args.batch_size,
                                         device=args.device, dtype=args.dtype)  # fmt: skip
    for path, result in zip(args.images, results):
        stem = Path(path).stem
        save_png(render_result(result, len(protos.names)), out / f"{stem}.png")
        arrays = {k: np.asarray(v) for k, v in result.items() if k != "shown"}
        np.savez_compressed(out / f"{stem}.npz", classes=np.array(protos.names), **arrays)
        if "ood_mask" in result:
            share = float(result["ood_mask"].float().mean())
            print(f"{path}: {share:.1%} of patches out of distribution → {out / (stem + '.png')}")
        else:
            print(f"{path}: class map and scores (no OOD threshold: pass --threshold for a mask) → "
                  f"{out / (stem + '.png')}")  # fmt: skip
    return 0


# -------------------------------------------------------------------------------------------------- head
def _add_head(sub) -> None:
    p = sub.add_parser("head", help="train heads on frozen features (classifiers, segmentation) and predict")
    ops = p.add_subparsers(dest="op", required=True, metavar="<train|predict>")

    t = ops.add_parser("train", help="train a head on the frozen features of labelled images")
    t.add_argument("source", help="single: class folders or path,label list; multi: CSV path,<label>…(0/1); "
                                  "segment: images (with --masks)")  # fmt: skip
    t.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    t.add_argument("--output", required=True, help="head file (.safetensors); features cached beside it")
    t.add_argument("--kind", choices=["linear", "mlp", "conv"], default="linear")
    t.add_argument("--task", choices=["single", "multi", "segment"], default="single")
    t.add_argument("--features", choices=["cls", "cls+avg"], default="cls", help="classifier input")
    t.add_argument("--masks", default=None, help="segment: folder of <image stem>.png label maps (255 = ignore)")
    t.add_argument("--classes", default=None, help="segment: comma-separated class names")
    t.add_argument("--size", type=non_negative_int, default=224, help="shorter side in px (0: native)")
    t.add_argument("--epochs", type=positive_int, default=100)
    t.add_argument("--lr", type=positive_float, default=1e-3)
    t.add_argument("--lora", type=non_negative_int, default=0, metavar="RANK", help="also fine-tune LoRA adapters")
    t.add_argument("--lora-targets", choices=["qv", "qkv"], default="qv")
    t.add_argument("--val", default=None, help="validation images, given like SOURCE (multi-label thresholds are "
                                              "chosen on them; metrics reported)")  # fmt: skip
    t.add_argument("--val-fraction", type=finite_float, default=0.0,
                   help="instead of --val: hold out this share of SOURCE (seeded; per class for single-label)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="seed of the head and the validation split")
    _compute_options(t)
    t.set_defaults(func=_head_train)
    q = ops.add_parser("predict", help="classify or segment images with a trained head")
    q.add_argument("images", nargs="+", metavar="IMAGE")
    q.add_argument("--head", required=True, help="file from `dinokit head train`")
    q.add_argument("--backbone", default=None, help="default: the backbone the head was trained on")
    q.add_argument("--output", default=None, help="classification: JSON file; segmentation: folder of PNG masks")
    q.add_argument("--tile", type=positive_int, default=None, help="tile size in px for huge images")
    q.add_argument("--overlap", type=non_negative_int, default=0)
    _compute_options(q)
    q.set_defaults(func=_head_predict)


def _head_train(args) -> int:
    import json

    from .models import backbone_from_spec
    from .tools.heads import save_head, train_head_on_images

    model = backbone_from_spec(args.backbone)
    classes = args.classes.split(",") if args.classes else None
    common = dict(val=args.val, val_fraction=args.val_fraction, seed=args.seed, batch_size=args.batch_size,
                  device=args.device, dtype=args.dtype)  # fmt: skip
    if args.lora:
        from .tools.finetune import finetune_classifier
        from .tools.lora import save_adapter

        head, config, metrics = finetune_classifier(
            model, args.source, args.task, args.kind, args.features, args.lora, args.lora_targets,
            args.size or None, args.epochs, args.lr, backbone_name=args.backbone, **common,
        )  # fmt: skip
        adapter = Path(args.output).with_suffix(".lora.safetensors")
        save_adapter(model, adapter)
        config.meta["adapter"] = adapter.name  # found beside the head file
    else:
        head, config, metrics = train_head_on_images(
            model, args.source, args.output, args.kind, args.task, args.features, args.masks, classes,
            args.size or None, args.epochs, args.lr, backbone_name=args.backbone, **common,
        )  # fmt: skip
    save_head(head, config, args.output)
    summary = dict(metrics)
    if config.thresholds:
        summary["thresholds"] = dict(zip(config.classes, config.thresholds))
        summary["thresholds_tuned_on"] = config.meta["thresholds_tuned_on"]
    report = Path(args.output).with_suffix(".metrics.json")  # the metrics are in the head's metadata too
    atomic_write_text(report, json.dumps(summary, indent=1))
    trainable = sum(p.numel() for p in head.parameters())
    print(f"wrote {args.output}: {args.kind} head, {args.task}-label, {len(config.classes)} classes, "
          f"{trainable} parameters; metrics in {report}")  # fmt: skip

    def rounded(value):
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        return round(value, 4) if isinstance(value, float) else value

    for key, value in summary.items():
        print(f"  {key}: {rounded(value)}")
    return 0


def _head_predict(args) -> int:
    import json

    import numpy as np

    from .data.images import decode_image
    from .models import backbone_from_spec
    from .tools.heads import load_head, predict_images, summarise

    head, config = load_head(args.head)
    spec = args.backbone or config.meta.get("backbone")
    if not spec:
        raise UserError("the head file does not record its backbone; pass --backbone")
    model = backbone_from_spec(spec)
    if config.meta.get("adapter"):
        from .tools.lora import load_adapter

        load_adapter(model, Path(args.head).parent / config.meta["adapter"])
    results = {}
    images = (decode_image(path) for path in args.images)  # decoded as the batches need them
    outs = predict_images(model, head, config, images, args.tile, args.overlap, batch_size=args.batch_size,
                          device=args.device, dtype=args.dtype)  # fmt: skip
    for path, out in zip(args.images, outs):
        if config.task == "segment" and args.output:
            from .tools.viz import save_png

            Path(args.output).mkdir(parents=True, exist_ok=True)
            labels = out["labels"].numpy().astype(np.uint8)  # class index per pixel
            save_png(np.repeat(labels[..., None], 3, axis=-1), Path(args.output) / f"{Path(path).stem}.png")
        results[path] = summarise(out, config)
        print(f"{path}: {results[path]}")
    if args.output and config.task != "segment":
        atomic_write_text(args.output, json.dumps(results, indent=1))
    return 0


# -------------------------------------------------------------------------------------------------- curate
def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers (`10000,1000,100`)."""
    return [positive_int(t) for t in text.split(",")]


def _add_curate(sub) -> None:
    p = sub.add_parser("curate", help="data curation: embed, dedup, decontaminate, retrieve, hierarchical k-means, "
                                      "sampling")  # fmt: skip
    ops = p.add_subparsers(dest="op", required=True, metavar="<embed|dedup|decontaminate|retrieve|cluster|sample>")
    emb = ("a `curate embed` folder, a .npy [N, D] (rows named by <stem>.names.txt beside it, else by index) or a "
           "`dinokit extract` folder")
    c = ops.add_parser("cluster", help="hierarchical k-means of embeddings → a tree of clusters (resumable)")
    c.add_argument("embeddings", metavar="EMB", help=emb)
    c.add_argument("--levels", type=int_list, required=True, help="clusters per level, decreasing: 10000,1000,100")
    c.add_argument("--resampling-steps", type=int_list, default=None, help="per level (default 1 each: plain k-means)")
    c.add_argument("--sample-sizes", type=int_list, default=None,
                   help="per level: points nearest each centroid refitted in resampling steps (default 1 each)")
    c.add_argument("--iters", type=non_negative_int, default=50, help="Lloyd iterations per k-means (default 50)")
    c.add_argument("--init", choices=["auto", "k-means++", "k-means-parallel"], default="auto",
                   help="seeding: k-means++ (as released, two passes over the pool per centre), k-means-parallel "
                        "(k-means||, about eight passes in all) or auto (k-means|| beyond 32 rows per cluster)")
    c.add_argument("--seed", type=non_negative_int, default=0)
    c.add_argument("--subset", default=None, help="keep.txt of names (or row indices) to restrict EMB to")
    c.add_argument("--device", type=device_name, default=None, help="cpu, cuda, cuda:1 … (default cpu)")
    c.add_argument("--output", required=True, help="output folder: the tree, names.txt, summary.json")
    c.set_defaults(func=_curate_cluster)
    s = ops.add_parser("sample", help="balanced sample of a cluster tree → keep.txt")
    s.add_argument("tree", metavar="TREE_DIR", help="a folder written by `dinokit curate cluster`")
    s.add_argument("--size", type=positive_int, required=True, help="number of images to keep")
    s.add_argument("--strategy", choices=["random", "closest"], default="random",
                   help="points taken from each leaf cluster: at random or nearest its centroid")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--embeddings", metavar="EMB", default=None, help="the clustered embeddings (for closest)")
    s.add_argument("--output", required=True, help="output folder: keep.txt, summary.json")
    s.set_defaults(func=_curate_sample)
    d = ops.add_parser("dedup", help="near-duplicate groups of embeddings → keep.txt with one image per group")
    d.add_argument("embeddings", metavar="EMB", help=emb)
    _search_options(d)
    d.add_argument("--output", required=True, help="output folder: keep.txt, groups.json, summary.json")
    d.set_defaults(func=_curate_dedup)
    x = ops.add_parser("decontaminate", help="drop pool images near evaluation images → keep.txt, dropped.txt")
    x.add_argument("embeddings", metavar="EMB", help=emb)
    x.add_argument("--against", nargs="+", required=True, metavar="EVAL_EMB",
                   help="embeddings of the evaluation sets (same forms as EMB)")
    _search_options(x)
    x.add_argument("--output", required=True, help="output folder: keep.txt, dropped.txt, summary.json")
    x.set_defaults(func=_curate_decontaminate)
    r = ops.add_parser("retrieve", help="pool images nearest to seed images (DINOv2's retrieval) → keep.txt")
    r.add_argument("embeddings", metavar="POOL", help=emb)
    r.add_argument("--seeds", required=True, metavar="SEED_EMB", help="embeddings of the seed images (same forms)")
    r.add_argument("--mode", choices=["per-seed", "clusters"], default="per-seed",
                   help="the k nearest pool images of each seed, or images of k-means clusters holding enough seeds")
    # mode options default to None so that one given to the other mode is refused, not silently ignored
    r.add_argument("--k", type=positive_int, default=None,
                   help="per-seed: pool images per seed (default 4; DINOv2 used 32 for a single seed)")
    r.add_argument("--threshold", type=finite_float, default=None,
                   help="per-seed: keep only neighbours with cosine similarity ≥ this (default: no threshold)")
    r.add_argument("--index", choices=["auto", "exact", "ivf", "hnsw"], default=None,
                   help="per-seed: faiss search (default auto: exact up to 200k rows, else ivf)")
    r.add_argument("--clusters", type=positive_int, default=None, help="clusters: k-means clusters of the pool")
    r.add_argument("--per-cluster", type=positive_int, default=None,
                   help="clusters: pool images taken from each chosen cluster, nearest its centroid first")
    r.add_argument("--min-seeds", type=positive_int, default=None,
                   help="clusters: seeds a cluster must hold to be taken (default 3)")
    r.add_argument("--iters", type=non_negative_int, default=None, help="clusters: Lloyd iterations (default 50)")
    r.add_argument("--seed", type=non_negative_int, default=0, help="seed of the ivf sample or of k-means")
    r.add_argument("--subset", default=None, help="keep.txt of names (or row indices) to restrict POOL to")
    r.add_argument("--output", required=True, help="output folder: keep.txt, summary.json")
    r.set_defaults(func=_curate_retrieve)
    e = ops.add_parser("embed", help="images → L2-normalised embeddings (.npy + names) for the other steps (resumable)")
    e.add_argument("inputs", nargs="+", metavar="INPUT", help="images, folders, or .txt/.csv file lists")
    e.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    e.add_argument("--output", required=True, help="output folder: embeddings.npy, embeddings.names.txt, features/")
    e.add_argument("--size", type=positive_int, default=224, help="shorter side in px (default 224)")
    _compute_options(e)
    e.add_argument("--store-dtype", choices=["float16", "float32"], default="float16")
    e.add_argument("--source", choices=["cls", "patches"], default="cls", help="CLS token or mean patch token")
    e.add_argument("--workers", type=non_negative_int, default=2, help="image-decoding processes")
    e.set_defaults(func=_curate_embed)


def _search_options(p) -> None:
    """The near-duplicate search options shared by `curate dedup` and `curate decontaminate`."""
    p.add_argument("--threshold", type=finite_float, required=True,
                   help="cosine similarity joining two images (depends on the backbone: measure it)")
    p.add_argument("--k", type=positive_int, default=64, help="nearest neighbours searched per image (default 64)")
    p.add_argument("--index", choices=["auto", "exact", "ivf", "hnsw"], default="auto",
                   help="faiss search: exact, or approximate ivf/hnsw for large pools (auto: exact up to 200k rows)")
    p.add_argument("--codes", choices=["fp16", "sq8"], default="fp16",
                   help="ivf/hnsw storage: fp16 (2 bytes a dimension) or sq8 (1 byte; similarities off by up to 0.01)")
    p.add_argument("--scratch-dir", default=None,
                   help="ivf: keep the index's lists on disk in a temporary folder under this one (memory not bounded "
                        "by the pool)")  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the ivf training sample")
    p.add_argument("--subset", default=None, help="keep.txt of names (or row indices) to restrict EMB to")


def _curate_cluster(args) -> int:
    from .curate.steps import cluster
    from .train.distributed import init_distributed, shutdown

    info = init_distributed()  # under torchrun: one share of the rows per rank (nothing without it)
    device = args.device or (info.device if info.world_size > 1 else None)
    try:
        summary = cluster(args.embeddings, args.output, args.levels, args.resampling_steps, args.sample_sizes,
                          args.iters, args.seed, args.subset, device, info.is_main, args.init)  # fmt: skip
    finally:
        shutdown()
    if not info.is_main:
        return 0
    done = "reused the finished tree in" if summary["reused"] else "wrote"
    print(f"{done} {args.output}: {summary['input']['points']} points")
    for level, stats in summary["levels"].items():
        print(f"  level {level}: {stats['clusters']} clusters, sizes {stats['min']:g} / {stats['median']:g} / "
              f"{stats['max']:g} (min / median / max)")  # fmt: skip
    return 0


def _curate_sample(args) -> int:
    from .curate.steps import sample

    summary = sample(args.tree, args.output, args.size, args.strategy, args.seed, args.embeddings)
    top = str(len(summary["after"]))
    b, a = summary["before"][top], summary["after"][top]
    print(f"wrote {Path(args.output) / 'keep.txt'}: {summary['sampled']} of {summary['pool']} images; top-level "
          f"cluster sizes {b['min']:g}–{b['max']:g} before, {a['min']:g}–{a['max']:g} after")  # fmt: skip
    return 0


def _curate_dedup(args) -> int:
    from .curate.steps import dedup

    summary = dedup(args.embeddings, args.output, args.threshold, args.k, args.index, args.subset, args.seed,
                    args.codes, args.scratch_dir)  # fmt: skip
    done = "reused the finished result in" if summary["reused"] else "wrote"
    print(f"{done} {Path(args.output) / 'keep.txt'}: {summary['kept']} of {summary['rows']} images kept; "
          f"{summary['groups']} groups of near-duplicates, the largest of {summary['largest_group']}")  # fmt: skip
    return 0


def _curate_embed(args) -> int:
    from .curate.embed import embed
    from .train.distributed import init_distributed, shutdown

    info = init_distributed()  # under torchrun: every rank embeds its share of the images on its own device
    device = args.device or (info.device if info.world_size > 1 else None)
    try:
        summary = embed(args.inputs, args.backbone, args.output, size=args.size, dtype=args.dtype, device=device,
                        batch_size=args.batch_size, store_dtype=args.store_dtype, source=args.source,
                        num_workers=args.workers)  # fmt: skip
    finally:
        shutdown()
    if not info.is_main:
        return 0
    done = "reused the finished embeddings in" if summary["reused"] else "wrote"
    print(f"{done} {summary['embeddings']}: {summary['images']} images × {summary['dim']} ({args.source}, "
          f"{args.store_dtype}); {summary['skipped']} skipped")  # fmt: skip
    return 0


def _curate_decontaminate(args) -> int:
    from .curate.steps import decontaminate

    summary = decontaminate(args.embeddings, args.against, args.output, args.threshold, args.k, args.index,
                            args.subset, args.seed, args.codes, args.scratch_dir)  # fmt: skip
    done = "reused the finished result in" if summary["reused"] else "wrote"
    print(f"{done} {Path(args.output) / 'keep.txt'}: {summary['kept']} of {summary['rows']} images kept, "
          f"{summary['dropped']} near evaluation images dropped")  # fmt: skip
    return 0


def _curate_retrieve(args) -> int:
    from .curate.steps import retrieve

    summary = retrieve(args.embeddings, args.seeds, args.output, args.mode, args.k, args.threshold, args.index,
                       args.clusters, args.per_cluster, args.min_seeds, args.iters, args.subset, args.seed)  # fmt: skip
    done = "reused the finished result in" if summary["reused"] else "wrote"
    how = (f"from {summary['clusters']['used']} clusters" if "clusters" in summary
           else f"{summary['settings']['k']} per seed")  # fmt: skip
    print(f"{done} {Path(args.output) / 'keep.txt'}: {summary['retrieved']} of {summary['rows']} pool images near "
          f"{summary['seeds']['rows']} seeds ({how})")  # fmt: skip
    return 0


# -------------------------------------------------------------------------------------------------- main
VERBS = [_add_info, _add_convert, _add_demo]
VERBS += [_add_extract, _add_export, _add_viz, _add_index, _add_prototypes, _add_head]
VERBS += [_add_train, _add_eval, _add_data, _add_curate]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinokit", description="DINOv2 / DINOv3 backbones, training and tools")
    parser.add_argument("--version", action="version", version=f"dinokit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<verb>")
    for add in VERBS:
        add(sub)
    return parser


def _say(message: str) -> None:
    """Print to stderr on a line of its own: a progress bar the error interrupted is moved out of the way
    (printed plainly, the message would continue the bar's line and the bar's clean-up would follow it)."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """argparse's parsing plus one rule: `train` takes key=value overrides after its options too
    (`dinokit train tiny_cpu --print-config a=1`). Usage errors exit with status 2 by argparse's convention."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "train" and not any(e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _complete(parser: argparse.ArgumentParser) -> None:
    """Tab completion through argcomplete, an optional extra (`pip install 'dinokit[completion]'`, then
    `eval "$(register-python-argcomplete dinokit)"`); without it the shell just gets no completions."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (argcomplete's protocol; it exits here)
        _complete(parser)
    args = parse_args(parser, argv)
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():  # a warning is printed above a progress bar, not at the end of its line
            return int(args.func(args) or 0)
    except UserError as e:
        _say(f"dinokit {args.command}: error: {e}")
        return 2
    except OSError as e:
        # a path the user named cannot be read or written (missing folder, a file where a folder should be,
        # permissions, a full disk): the system's message and the path say it all; a traceback adds nothing
        if e.strerror is None:
            raise
        where = f": {e.filename}" if e.filename else ""
        _say(f"dinokit {args.command}: error: {e.strerror}{where}")
        return 2
    except KeyboardInterrupt:
        _say(f"dinokit {args.command}: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
