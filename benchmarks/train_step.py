"""Time one full SSL training step on CPU — dinokit's and the released DINOv3 code's, in one process — for the
same work: teacher forward, student forward / backward, losses and targets, per-module gradient clipping, AdamW
step, EMA update, with the batch already in memory.

Work measured (the DINOv3 recipe at ViT-S scale, REFERENCE §6): ViT-S/16 with RoPE (train-time coordinate
rescale 2) and 4 registers, Sinkhorn-Knopp targets, separate DINO / iBOT heads with K = 65536 and a plain last
layer, B = 4 images with 2 global crops at 224 and 2 local crops at 96, iBOT masking as released (half the
global crops, stratified ratios 0.1–0.5), stochastic depth 0.1, KoLeo, fp32.

Peer: the released training code (github.com/facebookresearch/dinov3), imported from the checkout that
`--released` names: its `SSLMetaArch`, built from its `ssl_default_config.yaml` with RELEASED_OVERRIDES (the
recipe of OVERRIDES in its keys), driven as its `train/train.py` loop drives it — schedules, `zero_grad`,
`forward_backward`, `clip_grad_norm_` per student module, AdamW over its fused parameter groups, `update_ema`
(the loop's metric reductions and logging are left out). Both get the same batch tensors: dinokit's batch, whose
crop-major layout and mask tensors are those of the released collate. The two steps alternate, one warm-up step
each first; the figures are medians over the timed steps.

What running the released step on a CPU-only machine takes, and nothing more: its requirements omegaconf and
termcolor (`pip install omegaconf termcolor`); placeholder torchvision modules while it is imported, where
torchvision is missing (only its augmentation and dataset classes name torchvision); `Tensor.cuda` as the
identity inside its step; a gloo process group of world size 1 (its iBOT Sinkhorn-Knopp calls `all_reduce`
unconditionally; dinokit's steps see the same group); the model built on the meta device and materialised on
the CPU as `train.py` does on the GPU, without FSDP; and its iBOT Sinkhorn-Knopp run eagerly (it compiles that
module unconditionally; both steps run eager, `train.compile=false`).

    PYTHONPATH=. python benchmarks/train_step.py --released PATH/TO/dinov3 [--steps 5] [--threads N] [--breakdown]

Without `--released` it times dinokit alone. Output: each one's step times, FLOPs per step (PyTorch's FLOP
counter: matmuls, convolutions, attention) and median ÷ compute bound (FLOPs / the rate of a plain fp32 GEMM,
the best of the measurements taken between the steps of the same run); the ratio dinokit / released of the
medians; the peak resident memory of the process (with `--released`, both models with their optimiser states).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

OVERRIDES = [
    "model.backbone=dinov3_vits16",  # RoPE with rope_rescale 2.0, 4 registers
    "model.backbone_options={drop_path_rate: 0.1}",
    "model.dino_head={n_prototypes: 65536, last_layer: plain}",
    "model.ibot_head={n_prototypes: 65536, last_layer: plain}",
    "teacher.target=sinkhorn_knopp",
    "masking.style=dinov3",
    "crops.global_size=224",
    "crops.local_size=96",
    "crops.local_number=2",
    "train.batch_size=4",
    "optim.warmup_steps=0",
    "optim.freeze_last_layer_steps=0",
    "data.num_workers=0",
]
RELEASED_OVERRIDES = [  # OVERRIDES in the released config's keys, over its ssl_default_config.yaml
    "student.arch=vit_small",
    "student.patch_size=16",
    "student.n_storage_tokens=4",
    "student.pos_embed_rope_rescale_coords=2",
    "student.pos_embed_rope_dtype=fp32",  # default bf16
    "student.mask_k_bias=true",
    "student.norm_layer=layernormbf16",  # LayerNorm eps 1e-5 as in the released DINOv3 backbones (fp32 here)
    "student.layerscale=1e-5",
    "student.drop_path_rate=0.1",
    "student.fp8_enabled=false",
    "dino.head_n_prototypes=65536",  # its heads' last layer is always a plain linear layer
    "dino.head_bottleneck_dim=256",
    "dino.head_hidden_dim=2048",
    "ibot.separate_head=true",
    "ibot.head_n_prototypes=65536",
    "ibot.head_bottleneck_dim=256",
    "ibot.head_hidden_dim=2048",
    "train.centering=sinkhorn_knopp",
    "train.batch_size_per_gpu=4",
    "train.compile=false",
    "train.checkpointing=false",
    "compute_precision.param_dtype=fp32",
    "crops.global_crops_size=224",
    "crops.local_crops_size=96",
    "crops.local_crops_number=2",
    "optim.warmup_epochs=0",
    "optim.freeze_last_layer_epochs=0",
]
NO_PEER = ("released step not timed: pass --released PATH, a checkout of the public dinov3 repository "
           "(github.com/facebookresearch/dinov3), with `pip install omegaconf termcolor`")  # fmt: skip


def make_parts(tmp: Path):
    from dinokit.config import PretrainConfig, load_config
    from dinokit.data.stream import SSLStream
    from dinokit.train.build import build
    from dinokit.train.distributed import DistInfo

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(tmp / f"{i}.png")
    cfg = load_config(PretrainConfig, None, [*OVERRIDES, f"data.path={tmp}", f"output_dir={tmp / 'run'}"])
    cfg.validate()
    parts = build(cfg, DistInfo())
    batch = SSLStream(**parts.stream_args).batch(0)
    return parts, batch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="timed steps of each (after one warm-up step each)")
    p.add_argument("--released", type=Path, default=None, help="a checkout of the dinov3 repository: time its step too")
    p.add_argument("--breakdown", action="store_true", help="also time the phases of one dinokit step")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from dinokit.train.build import keep_freed_memory
    from dinokit.train.loop import train_step

    keep_freed_memory()  # as `dinokit train` does on CPU; process-wide, so the released step has it too
    released = import_released(args.released) if args.released else None

    with tempfile.TemporaryDirectory() as tmp:
        parts, batch = make_parts(Path(tmp))
    meta, opt = parts.meta, parts.optimizer
    meta.train()
    steps = {"dinokit": lambda i: train_step(meta, opt, [batch], i, 3.0, contextlib.nullcontext(), torch.device("cpu"))}
    if released:
        steps["released"] = ReleasedStep(*released, batch)
    torch.manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    rates = []
    for i in range(args.steps + 1):  # alternating, step by step
        for name, step in steps.items():
            t0 = time.perf_counter()
            step(i)
            times[name].append(time.perf_counter() - t0)
        rates.append(gemm_rate())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    flops = {name: step_flops(lambda step=step: step(args.steps + 1)) for name, step in steps.items()}
    rate = max(rates)  # the least disturbed of the measurements between the steps
    if args.breakdown:
        breakdown(meta, opt, batch)
    med = {name: statistics.median(t[1:]) for name, t in times.items()}  # the first step of each is the warm-up
    print(f"{torch.get_num_threads()} threads; {batch.mask_indices.numel()} masked patches; a plain fp32 GEMM of "
          f"the MLP's shape ran at {min(rates) / 1e9:.0f}–{rate / 1e9:.0f} GFLOP/s between the steps "
          f"(bounds below at {rate / 1e9:.0f})")  # fmt: skip
    for name in steps:
        bound = flops[name] / rate
        print(f"{name + ':':<9} step times (s) " + ", ".join(f"{t:.2f}" for t in times[name][1:])
              + f"; median {med[name]:.2f}; {flops[name] / 1e9:.0f} GFLOP per step → compute bound {bound:.2f} s, "
              f"step / bound = {med[name] / bound:.2f}")  # fmt: skip
    if released:
        print(f"dinokit / released step time: {med['dinokit'] / med['released']:.2f} "
              f"(released {med['released'] / med['dinokit']:.2f}× dinokit's); FLOPs released / dinokit: "
              f"{flops['released'] / flops['dinokit']:.3f}")  # fmt: skip
    else:
        print(NO_PEER)
    print("ViT-S/16 B=4 2×224+2×96 K=65536: " + ", ".join(f"{name} {med[name]:.2f} s/step" for name in steps)
          + f"; peak memory of the process {peak_mb:.0f} MB")  # fmt: skip


class ReleasedStep:
    """The released training step on the CPU, on dinokit's batch; `step(i)` runs step i."""

    def __init__(self, get_default_config, train, batch) -> None:
        from omegaconf import OmegaConf

        default = get_default_config()
        OmegaConf.set_struct(default, True)  # an override naming a key the release lacks is an error
        cfg = OmegaConf.merge(default, OmegaConf.from_dotlist(RELEASED_OVERRIDES))
        if not dist.is_initialized():  # its iBOT Sinkhorn-Knopp all-reduces unconditionally
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        with torch.device("meta"):  # as train.py: build on meta, materialise, init_weights
            model = train.SSLMetaArch(cfg)
        model.to_empty(device="cpu")
        model.init_weights()
        model.ibot_patch_loss.sinkhorn_knopp_teacher._compiled_call_impl = None  # undo its .compile(): eager
        model.train()
        self.model, self.train, self.clip_grad = model, train, cfg.optim.clip_grad
        self.optimizer = train.build_optimizer(cfg, model.get_params_groups())
        self.schedules = train.build_schedulers(cfg)  # lr, wd, momentum, teacher temperature, last-layer lr
        n_masked = batch.mask_indices.numel()
        self.data = {  # the released collate's keys, from dinokit's batch (same layout)
            "collated_global_crops": batch.global_crops,
            "collated_local_crops": batch.local_crops,
            "collated_masks": batch.masks,
            "mask_indices_list": batch.mask_indices,
            "masks_weight": batch.masks_weight,
            "n_masked_patches": torch.full((1,), n_masked, dtype=torch.long),
            "upperbound": n_masked,  # Σ int(N · ratio) over the masked crops: the masked patches here (unused)
            "global_batch_size": batch.batch_size,
        }

    def __call__(self, i: int) -> None:
        """The body of train.py's loop for iteration i, less its metric reductions and logging."""
        lr, wd, momentum, teacher_temp, last_layer_lr = (schedule[i] for schedule in self.schedules)
        self.train.apply_optim_scheduler(self.optimizer, lr, wd, last_layer_lr)
        self.optimizer.zero_grad(set_to_none=True)
        with mock.patch.object(torch.Tensor, "cuda", lambda t, *args, **kwargs: t):  # it moves the batch to the GPU
            self.model.forward_backward(self.data, teacher_temp=teacher_temp, iteration=i)
        for module in self.model.student.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm=self.clip_grad).item()  # logged there
        self.optimizer.step()
        self.model.update_ema(momentum)


def import_released(checkout: Path):
    """`(dinov3.configs.get_default_config, dinov3.train.train)` from the checkout of the dinov3 repository."""
    if not (checkout / "dinov3" / "train" / "ssl_meta_arch.py").is_file():
        raise SystemExit(f"--released {checkout}: no dinov3/train/ssl_meta_arch.py there (a checkout of the "
                         "dinov3 repository is expected)")  # fmt: skip
    sys.path.insert(0, str(checkout.resolve()))
    try:
        with torchvision_placeholders():
            from dinov3.configs import get_default_config
            from dinov3.train import train
    except ModuleNotFoundError as e:
        raise SystemExit(f"--released: the released code needs {e.name} (pip install omegaconf termcolor)") from e
    return get_default_config, train


@contextlib.contextmanager
def torchvision_placeholders():
    """Placeholder torchvision modules while the released code is imported, if torchvision cannot be imported:
    its data package names torchvision's transforms and datasets in class bases, annotations and defaults."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # missing, or built for another torch
        pass
    else:
        yield
        return

    class Placeholder(type):  # any torchvision name: a class whose attributes are itself
        def __getattr__(cls, name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return cls

    def placeholder_module(name: str) -> types.ModuleType:
        def attribute(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return Placeholder(attr, (), {})

        module = types.ModuleType(name)
        module.__getattr__ = attribute
        return module

    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.v2", "torchvision.datasets"]
    modules = {name: placeholder_module(name) for name in names}
    for name in names[1:]:
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, modules[name])
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]


def step_flops(step) -> float:
    """Floating-point operations of one call of `step()`, counted by PyTorch's FLOP counter, which is taught
    oneDNN's fused linear (dinokit's no-grad CPU path, e.g. its teacher forward), an op it does not know."""
    from torch.utils.flop_counter import FlopCounterMode

    def fused_linear_flops(x_shape, weight_shape, *args, **kwargs) -> int:
        return 2 * math.prod(x_shape[:-1]) * weight_shape[0] * weight_shape[1]

    fused_linear = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    known = {fused_linear: fused_linear_flops} if fused_linear is not None else {}
    with FlopCounterMode(display=False, custom_mapping=known) as counter:
        step()
    return float(counter.get_total_flops())


def gemm_rate(repeats: int = 20) -> float:
    """FLOP/s of a plain fp32 GEMM shaped like the ViT-S MLP on 8 global crops ([1608, 384] × [384, 1536])."""
    a, b = torch.randn(1608, 384), torch.randn(384, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1608 * 384 * 1536 / best


def breakdown(meta, opt, batch) -> None:
    """Where the time of one step goes (each phase timed on its own)."""
    from dinokit.train.optim import clip_gradients

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0

    values = meta.schedules(1)
    t_out, t_teacher = timed(lambda: meta.teacher(batch))
    s_out, t_student = timed(lambda: meta.student(batch))

    def losses():
        total = 0
        for name, term in meta.terms.items():
            total = total + values[f"weight/{name}"] * term(s_out, t_out, batch, values)[0]
        return total

    loss, t_loss = timed(losses)
    _, t_backward = timed(lambda: loss.backward())
    _, t_clip = timed(lambda: clip_gradients(opt, 3.0))
    _, t_opt = timed(lambda: opt.step())
    _, t_ema = timed(lambda: meta.teacher.update(0.99))
    opt.zero_grad(set_to_none=True)
    for name, t in [("teacher forward", t_teacher), ("student forward", t_student), ("losses + targets", t_loss),
                    ("backward", t_backward), ("clip", t_clip), ("AdamW", t_opt), ("EMA", t_ema)]:  # fmt: skip
        print(f"  {name:<18}{t:6.2f} s")


if __name__ == "__main__":
    main()
