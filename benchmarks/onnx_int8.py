"""int8 dynamic quantisation vs fp32 in onnxruntime: speed ratio and feature cosine, in one process.

    PYTHONPATH=. python benchmarks/onnx_int8.py [--backbone random:dinov3_vits16] [--size 224] [--batch 1]

Both sessions run the same exported graph (fp32, and its int8 dynamic quantisation) on the same normalised
photo with the same thread count; the timings are medians of `--repeats` runs after one warm-up. Prints the
ratio fp32 time / int8 time (> 1: int8 is faster) and the cosine similarity of int8 to fp32 features.

Random backbones are initialised with LayerScale 1e-5, which makes every block nearly the identity and the
int8 error invisible; their gammas are set to `--layerscale` (default 0.5) so that the blocks contribute as in
trained models. Released weights (`--backbone path/to/dinov3_vits16_pretrain.pth`) give the figures that count.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from dinokit.models import backbone_from_spec
from dinokit.tools.export import export_onnx, int8_cosine, photo_input, quantize_onnx, time_session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", nargs="+", default=["random:dinov3_vits16", "random:dinov2_vits14"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: all)")
    ap.add_argument("--layerscale", type=float, default=0.5, help="LayerScale gammas of random backbones")
    args = ap.parse_args()
    print("| backbone | input | fp32 ms | int8 ms | speed-up (fp32/int8) | cosine CLS | cosine patches mean / min |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.backbone:
        model = backbone_from_spec(spec)
        if spec.startswith("random:"):
            with torch.no_grad():
                for name, gamma in model.named_parameters():
                    if name.endswith("gamma"):
                        gamma.fill_(args.layerscale)
        p = model.patch_size
        side = args.size // p * p
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = Path(tmp) / "model.onnx"
            export_onnx(model, fp32, example_size=side, verify_sizes=[(side, side)])
            int8 = quantize_onnx(fp32, Path(tmp) / "model.int8.onnx")
            x = photo_input((side, side), args.batch)
            t32 = time_session(fp32, x, args.repeats, args.threads)
            t8 = time_session(int8, x, args.repeats, args.threads)
            c = int8_cosine(fp32, int8, (side, side))
        print(
            f"| {spec} | {args.batch}×{side}² | {t32 * 1e3:.1f} | {t8 * 1e3:.1f} | {t32 / t8:.2f}× | {c['cls']:.4f} | "
            f"{c['patches_mean']:.4f} / {c['patches_min']:.4f} |"
        )


if __name__ == "__main__":
    main()
