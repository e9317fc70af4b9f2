"""Backbone inference throughput: dinokit vs Hugging Face transformers (sdpa), in one process, alternating.

For `dinov2_vits14` and `dinov3_vits16` at batch 8, 224×224, inference mode, it prints images/s of both and
their ratio, and the achieved GFLOP/s of dinokit against a plain GEMM run of the same matrix shapes (patch
embedding, qkv, projection, FFN, and the two attention products of every block) measured in the same run.

    python benchmarks/backbone_throughput.py                       # CPU, fp32 (the figures in docs/benchmarks.md)
    python benchmarks/backbone_throughput.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import dinokit


def hf_twin(model):
    """The HF transformers model with the same architecture and weights, via dinokit's HF export."""
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as folder:
        dinokit.save_backbone(model, folder, format="hf")
        return AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()


def gemm_shapes(model, batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """(batch count, M, K, N) of every matrix product of one forward."""
    c = model.config
    h, w = model.grid_size(size, size)
    tokens = batch * (1 + c.num_registers + h * w)
    n = 1 + c.num_registers + h * w
    d = c.embed_dim
    ffn_in = 2 * c.ffn_hidden if c.ffn != "mlp" else c.ffn_hidden
    shapes = [(1, batch * h * w, 3 * c.patch_size**2, d)]
    for _ in range(c.depth):
        shapes += [(1, tokens, d, 3 * d), (1, tokens, d, d), (1, tokens, d, ffn_in), (1, tokens, c.ffn_hidden, d)]
        shapes += [(batch * c.num_heads, n, c.head_dim, n), (batch * c.num_heads, n, n, c.head_dim)]
    return shapes


def flops(shapes) -> float:
    return sum(2.0 * b * m * k * n for b, m, k, n in shapes)


def gemm_runner(shapes, device, dtype):
    ops = [(torch.randn(b, m, k, device=device, dtype=dtype), torch.randn(b, k, n, device=device, dtype=dtype))
           for b, m, k, n in shapes]

    def run():
        for a, b in ops:
            torch.bmm(a, b) if a.shape[0] > 1 else torch.mm(a[0], b[0])

    return run


def best_time(fn, device, repeats: int) -> float:
    """Median wall time of `repeats` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name: str, batch: int, size: int, device, dtype, rounds: int, repeats: int) -> dict:
    torch.manual_seed(0)
    ours = dinokit.create_backbone(name).eval()
    theirs = hf_twin(ours).to(device=device, dtype=dtype)
    ours = ours.to(device=device, dtype=dtype)
    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    gemms = gemm_runner(gemm_shapes(ours, batch, size), device, dtype)
    with torch.inference_mode():
        diff = (ours(x).float() - theirs(pixel_values=x).pooler_output.float()).abs().max().item()
        t_ours, t_hf, t_gemm = [], [], []
        for _ in range(rounds):  # alternate so that machine noise hits all three alike
            t_ours.append(best_time(lambda: ours(x), device, repeats))
            t_hf.append(best_time(lambda: theirs(pixel_values=x), device, repeats))
            t_gemm.append(best_time(gemms, device, repeats))
    t_o, t_h, t_g = (statistics.median(t) for t in (t_ours, t_hf, t_gemm))
    f = flops(gemm_shapes(ours, batch, size))
    return dict(
        name=name, ours=batch / t_o, hf=batch / t_h, ratio=t_h / t_o, gflops=f / t_o / 1e9,
        gemm_gflops=f / t_g / 1e9, gemm_fraction=t_g / t_o, max_diff=diff,
    )  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["dinov2_vits14", "dinov3_vits16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"torch {torch.__version__}, {args.device}, {args.dtype}, threads {torch.get_num_threads()}, "
          f"batch {args.batch} at {args.size}px, {args.rounds} alternating rounds × {args.repeats} calls")
    for name in args.models:
        r = bench(name, args.batch, args.size, device, dtype, args.rounds, args.repeats)
        print(f"{r['name']:<15} dinokit {r['ours']:7.1f} img/s | HF {r['hf']:7.1f} img/s | ratio {r['ratio']:.2f}× | "
              f"{r['gflops']:.0f} GFLOP/s = {100 * r['gemm_fraction']:.0f}% of plain GEMM ({r['gemm_gflops']:.0f}) | "
              f"max |Δcls| {r['max_diff']:.1e}")


if __name__ == "__main__":
    main()
