"""ONNX export of a backbone with dynamic batch and image size, verified against onnxruntime.

The exported graph has one input `images [B, 3, H, W]` (normalised) and three outputs, in order:
`cls [B, D]`, `registers [B, R, D]`, `patches [B, h·w, D]` (h = H // patch, w = W // patch).

Dynamic image size needs the position information to be computed from the input size inside the graph:
- RoPE (DINOv3): the backbone's own `RopeEmbedding` builds its tables from the grid with `arange`, which the
  exporter records symbolically, so the model is exported as it is.
- Learned embedding (DINOv2): `F.interpolate` with the released `scale_factor` rule makes the exporter
  specialise the graph to the example size (the output size depends on a float scale). So the export computes
  the same bicubic resize as two interpolation matrices `A_h [h, 37]`, `A_w [w, 37]` built from the grid with
  tensor arithmetic (`pos = A_h · P · A_wᵀ`): the legacy rule (cubic a = −0.75, source coordinate
  `(i + 0.5)·37/(h + 0.1) − 0.5`, edge-clamped taps) and the antialiased rule (cubic a = −0.5 stretched by
  the downscale factor, normalised weights) of `F.interpolate`, and the untouched table at the native 37×37 grid.
  `resize_pos_embed` is checked against `models.layers.interpolate_pos_embed` in the tests.

ConvNeXt (DINOv3's distilled students): no position information at all, so the model's own `forward_features`
is exported as it is; `registers` is the empty `[B, 0, D]`, `patches` the last stage at stride 32 (h = ⌊H/32⌋,
as the PyTorch model computes it, for any size from 32 px up). A side under 32 px, which the PyTorch model refuses,
makes onnxruntime fail on an empty convolution input.

Deviation: the exported graph floors the image size to whole patches for both generations; the PyTorch
DINOv2 model rejects sides that are not multiples of the patch size instead.

int8: `quantize_onnx` applies onnxruntime's dynamic quantisation (int8 weights, activations quantised on the
fly), for CPU inference.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import UserError, require

OUTPUT_NAMES = ("cls", "registers", "patches")


# ----------------------------------------------------------------------------- position-embedding resize
def _cubic(x: torch.Tensor, a: float) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter `a` (zero for |x| ≥ 2)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _resize_matrix(n_out: int, n_in: int, rule: str, legacy_offset: float = 0.1) -> torch.Tensor:
    """The matrix `[n_out, n_in]` of a 1-D bicubic resize as `F.interpolate` computes it (align_corners=False).

    `n_out` may be symbolic during export: it is only used through `arange`."""
    i = torch.arange(n_out, dtype=torch.float32)  # [n_out]
    size = i[-1:] + 1  # n_out as a tensor, so no Python branch depends on it
    j = torch.arange(n_in, dtype=torch.float32)  # [n_in]
    if rule == "legacy":  # scale_factor (n_out + 0.1)/n_in drives the sampling; taps clamped to the edge
        scale = (n_in / (size.double() + legacy_offset)).float()  # in float64 first, as F.interpolate does
        src = scale * (i + 0.5) - 0.5  # [n_out]
        first = src.floor()
        t = src - first
        matrix = torch.zeros(n_out, n_in)
        for k in (-1, 0, 1, 2):
            tap = (first + k).clamp(0, n_in - 1)  # [n_out]
            matrix = matrix + _cubic(t - k, -0.75)[:, None] * (j[None] == tap[:, None]).float()
    elif rule == "antialias":  # size=(n_out,): a = −0.5 kernel widened by the downscale factor, normalised
        scale = n_in / size  # [1]
        stretch = scale.clamp_min(1.0)
        centre = scale * (i + 0.5)  # [n_out]
        matrix = _cubic((j[None] + 0.5 - centre[:, None]) / stretch, -0.5)  # [n_out, n_in]
        matrix = matrix / matrix.sum(-1, keepdim=True)
    else:
        raise ValueError(f"unknown position-embedding interpolation rule {rule!r}")
    return matrix


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], rule: str) -> torch.Tensor:
    """`pos_embed [1, 1 + M·M, D]` → `[1, 1 + h·w, D]` for the grid (h, w), with no Python branch on the grid
    size (export-friendly). Equals `models.layers.interpolate_pos_embed` to float round-off."""
    M = int(round((pos_embed.shape[1] - 1) ** 0.5))
    D = pos_embed.shape[-1]
    h, w = grid
    table = pos_embed[0, 1:].float().reshape(M, M, D)  # [M, M, D]
    a_h, a_w = _resize_matrix(h, M, rule), _resize_matrix(w, M, rule)  # [h, M], [w, M]
    rows, cols, m = torch.arange(h), torch.arange(w), torch.arange(M)
    native = (rows[-1] == M - 1) & (cols[-1] == M - 1)  # the released code uses the table as is at M×M
    a_h = torch.where(native, (rows[:, None] == m[None]).float(), a_h)
    a_w = torch.where(native, (cols[:, None] == m[None]).float(), a_w)
    patches = torch.einsum("hm,mnd,wn->hwd", a_h, table, a_w).reshape(1, -1, D)  # [1, h·w, D]
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1).to(pos_embed.dtype)


# ------------------------------------------------------------------------------------------------- export
@contextlib.contextmanager
def _quiet_logger(name: str | None):
    """Silence a logger below ERROR for the duration (None: the root logger)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class ExportableBackbone(nn.Module):
    """`images → (cls, registers, patches)` with the position embedding resized inside the graph.

    Mirrors `VisionTransformer.forward_features` (tokens `[cls, registers…, patches…]`, the learned embedding
    added to CLS and patches before the registers are inserted); the ONNX parity tests hold it to the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        # RoPE, or a ConvNeXt (no position embedding): the model's own forward already follows the input size
        if getattr(m, "pos_embed", None) is None:
            out = m.forward_features(images)
            return out.cls, out.registers, out.patches
        patches, grid = m.patch_embed(images)  # [B, h·w, D]
        cls = (m.cls_token + 0 * m.mask_token).expand(patches.shape[0], -1, -1)  # [B, 1, D]
        tokens = torch.cat([cls, patches], dim=1) + resize_pos_embed(m.pos_embed, grid, m.config.pos_interpolation)
        if m.register_tokens is not None:
            registers = m.register_tokens.expand(patches.shape[0], -1, -1)  # [B, R, D]
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        out = m.forward_tokens(tokens, grid)
        return out.cls, out.registers, out.patches


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    opset: int = 18,
    example_size: int | None = None,
    verify_sizes: list[tuple[int, int]] | None = None,
    quantize: bool = False,
) -> dict:
    """Export `model` (eval, fp32) to `path` with dynamic batch, height and width; check it with onnxruntime at
    `verify_sizes` (default: two resolutions) and return `{"path", "max_abs_diff": {size: {output: err}}}`.

    `quantize=True` also writes `<stem>.int8.onnx` (dynamic int8) and reports its cosine similarity to fp32."""
    if opset < 17:
        raise UserError(f"ONNX export needs opset 17 or newer (got {opset})")
    for package in ("onnx", "onnxscript", "onnxruntime"):  # the exporter, and the check of what it wrote
        require(package, "onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if any(t.dtype != torch.float32 for t in model.parameters()):
        model = copy.deepcopy(model).float()  # export in fp32 without changing the caller's model
    model = model.eval()
    p = model.patch_size
    size = example_size or 8 * p
    wrapper = ExportableBackbone(model)
    example = torch.randn(2, 3, size, size)
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    large = sum(t.numel() * 4 for t in model.state_dict().values()) > 1.8e9  # protobuf's 2 GB limit
    with (
        warnings.catch_warnings(),
        torch.inference_mode(False),
        contextlib.redirect_stdout(io.StringIO()),  # the exporter's progress lines
        _quiet_logger("torch.onnx._internal.exporter._registration"),  # notes on optional packages
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), input_names=["images"], output_names=list(OUTPUT_NAMES), opset_version=opset,
            dynamo=True, dynamic_shapes={"images": {0: batch, 2: height, 3: width}}, external_data=large,
            verbose=False,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
            program.save(str(Path(tmp) / path.name), external_data=large)  # the graph names its data file
            for f in Path(tmp).iterdir():
                os.replace(f, path.parent / f.name)
    sizes = verify_sizes or [(size, size), (6 * p, 10 * p)]
    report = {"path": str(path), "opset": opset, "max_abs_diff": verify_onnx(model, path, sizes)}
    if quantize:
        q_path = path.with_name(f"{path.stem}.int8.onnx")
        quantize_onnx(path, q_path)
        report["int8"] = {"path": str(q_path), "cosine": int8_cosine(path, q_path, sizes[0])}
    return report


# ------------------------------------------------------------------------------------------ onnxruntime
def _session(path: str | os.PathLike, threads: int | None = None):
    ort = require("onnxruntime", "onnx", "running an ONNX model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: list[tuple[int, int]], batch: int = 2) -> dict:
    """Max absolute difference of each output between onnxruntime and the PyTorch model (fp32, eval), per size."""
    session = _session(path)
    g = torch.Generator().manual_seed(0)
    result = {}
    for H, W in sizes:
        x = torch.randn(batch, 3, H, W, generator=g)
        ref = model.forward_features(x)
        outputs = session.run(list(OUTPUT_NAMES), {"images": x.numpy()})
        errs = {}
        for name, got in zip(OUTPUT_NAMES, outputs):
            want = getattr(ref, name).numpy()
            if got.shape != want.shape:
                raise RuntimeError(f"ONNX output {name} has shape {got.shape} at {H}×{W}, PyTorch {want.shape}")
            errs[name] = float(np.abs(got - want).max()) if want.size else 0.0
        result[f"{H}x{W}"] = errs
    return result


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised at run time) with onnxruntime."""
    q = require("onnxruntime.quantization", "onnx", "int8 quantisation")
    dst = Path(dst)
    with _quiet_logger(None):  # onnxruntime logs a generic suggestion to pre-process the model first
        return atomic_write(dst, lambda tmp: q.quantize_dynamic(str(src), str(tmp), weight_type=q.QuantType.QInt8))


def photo_input(size: tuple[int, int], batch: int = 1) -> np.ndarray:
    """A real photograph (or the generated scene), normalised, `[batch, 3, H, W]` float32."""
    from ..data.transforms import normalize, resize, to_float
    from ..demo_photo import sample_photo

    x = normalize(resize(to_float(sample_photo()[0]), size))  # [3, H, W]
    return x[None].expand(batch, -1, -1, -1).contiguous().numpy()


def int8_cosine(fp32_path, int8_path, size: tuple[int, int]) -> dict:
    """Cosine similarity of int8 to fp32 outputs on a photo: CLS, and the mean and minimum over patches."""
    x = photo_input(size)
    ref = _session(fp32_path).run(None, {"images": x})
    got = _session(int8_path).run(None, {"images": x})

    def cos(a, b):
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)

    patches = cos(ref[2], got[2])
    cls = float(cos(ref[0], got[0])[0])
    return {"cls": cls, "patches_mean": float(patches.mean()), "patches_min": float(patches.min())}


def time_session(path, x: np.ndarray, repeats: int = 10, threads: int | None = None) -> float:
    """Median seconds per run of an onnxruntime session on `x` (after one warm-up run)."""
    session = _session(path, threads)
    session.run(None, {"images": x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times))
