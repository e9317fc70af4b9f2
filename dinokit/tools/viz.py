"""Pictures of features: PCA colouring, similarity maps and CLS attention, as in the DINO papers' figures.

- `pca_rgb`: patch features projected on their first three principal components, mapped to RGB. Fitting one
  PCA jointly over several images gives them consistent colours. The sign of each component is fixed (largest
  loading positive) so the picture is deterministic, and each channel is scaled by robust percentiles (1 %,
  99 %) rather than min/max so a few outlier patches (e.g. high-norm artefact tokens) do not wash it out.
  With a foreground threshold it follows the papers' two steps: the first component separates foreground from
  background (its sign chosen so that the image border is background), then a second PCA fitted on the
  foreground patches only colours them, and the background is black.
- `similarity_map`: cosine similarity of one query point's feature (bilinear on the patch grid) to every patch
  of the same or another image.
- `attention_maps`: the last block's attention from CLS to every patch, per head.
- `render_text_similarity` (dino.txt): per image, the cosine similarity of each head patch token to the patch half
  of each text prompt's embedding, one panel per prompt.

`render_pca`, `render_similarity` and `render_attention` run a backbone on images and return the picture as a
uint8 array `[H, W, 3]`, which `dinokit viz` saves as PNG. They take the tools' compute settings (`compute.py`):
`device`, `dtype` (fp32 | bf16 | fp16 autocast) and `batch_size` (images of one shape per forward).

ConvNeXt backbones: PCA and similarity pictures use their last-stage tokens (stride 32, so a coarser map than a
/16 ViT's at the same size). CLS attention maps need attention, which a ConvNeXt has none of (its "CLS" is the
average pool of the last map): `attention_maps` refuses one with a `UserError` naming the alternatives.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic import atomic_write
from ..data.transforms import model_mean_std
from ..errors import UserError
from .compute import autocast, chunks, image_features, place, same_shape_groups
from .extract import Preprocess, is_convnext
from .matching import sample_descriptors


# ------------------------------------------------------------------------------------------------ PCA
def _principal_components(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean `[D]` and first `k` principal directions `[D, k]` of `flat [N, D]`, sign-fixed."""
    flat = flat.double()
    mean = flat.mean(0)
    centred = flat - mean
    _, eigvecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues; deterministic, unlike SVD sampling
    components = eigvecs[:, -k:].flip(-1)  # [D, k], largest first
    signs = torch.sign(components.gather(0, components.abs().argmax(0, keepdim=True)))
    return mean, components * signs


def _robust_unit(proj: torch.Tensor) -> torch.Tensor:
    """Scale each column to [0, 1] between its 1st and 99th percentiles."""
    lo, hi = torch.quantile(proj, 0.01, dim=0), torch.quantile(proj, 0.99, dim=0)
    return ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)


def _split(flat: torch.Tensor, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    sizes = [m.shape[0] * m.shape[1] for m in maps]
    return [part.reshape(m.shape[0], m.shape[1], *flat.shape[1:]) for part, m in zip(flat.split(sizes), maps)]


def foreground_masks(maps: Sequence[torch.Tensor], threshold: float = 0.5) -> list[torch.Tensor]:
    """Boolean masks `[h, w]`: patches whose first principal component (fitted jointly, scaled to [0, 1]) is at
    least `threshold`. The component's sign is chosen so that patches on the image border score lower."""
    flat = torch.cat([m.reshape(-1, m.shape[-1]) for m in maps]).double()  # [N, D]
    mean, comp = _principal_components(flat, 1)
    first = (flat - mean) @ comp[:, 0]  # [N]
    border = torch.cat([_border(m.shape[0], m.shape[1]).flatten() for m in maps])
    if first[border].mean() > first[~border].mean():
        first = -first
    return [m[..., 0] >= threshold for m in _split(_robust_unit(first[:, None]), maps)]


def _border(h: int, w: int) -> torch.Tensor:
    edge = torch.zeros(h, w, dtype=torch.bool)
    edge[0], edge[-1], edge[:, 0], edge[:, -1] = True, True, True, True
    return edge


def pca_rgb(
    patches: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray], foreground_threshold: float | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Patch features `[h, w, D]` (or a list of them, fitted jointly) → RGB maps `[h, w, 3]` in [0, 1].

    With `foreground_threshold`, the background (see `foreground_masks`) is black and the colours come from a
    PCA of the foreground patches only. Accepts torch tensors or numpy arrays (as `read_features` returns)."""
    single = isinstance(patches, torch.Tensor | np.ndarray)
    maps = [torch.as_tensor(m) for m in ([patches] if single else patches)]
    flat = torch.cat([m.reshape(-1, m.shape[-1]) for m in maps]).double()  # [N, D]
    keep = torch.ones(len(flat), dtype=torch.bool)
    if foreground_threshold is not None:
        keep = torch.cat([m.flatten() for m in foreground_masks(maps, foreground_threshold)])
        if not keep.any():
            keep[:] = True
    mean, comp = _principal_components(flat[keep], 3)
    rgb = torch.zeros(len(flat), 3, dtype=torch.float64)
    rgb[keep] = _robust_unit((flat[keep] - mean) @ comp)
    out = [m.float() for m in _split(rgb, maps)]
    return out[0] if single else out


# ------------------------------------------------------------------------------------ similarity, attention
def similarity_map(
    patches: torch.Tensor | np.ndarray,
    query: tuple[float, float],
    target: torch.Tensor | np.ndarray | None = None,
    patch_size: int | None = None,
) -> torch.Tensor:
    """Cosine similarity `[h', w']` of the feature at `query` in `patches [h, w, D]` to every patch of `target`
    (default: the same map). `query` is `(row, col)` in patches, or `(y, x)` in input pixels if `patch_size`
    is given (sampled bilinearly)."""
    patches = torch.as_tensor(patches)
    p = patch_size or 1
    y, x = query
    if patch_size is None:  # patch coordinates → the pixel coordinates of a unit patch grid
        y, x = y + 0.5, x + 0.5
    q = sample_descriptors(patches, torch.tensor([[x, y]], dtype=torch.float32), p)[0]  # [D]
    target = patches if target is None else torch.as_tensor(target)
    return F.normalize(target.float(), dim=-1) @ q  # [h', w']


def require_attention(model) -> None:
    """Refuse, in one clear message, a backbone without self-attention (a ConvNeXt) where CLS attention is asked."""
    if is_convnext(model):
        raise UserError(
            "CLS attention maps need a vision transformer: this backbone is a ConvNeXt, which has no attention "
            "(its CLS token is the average pool of the last feature map). Use `dinokit viz pca` or "
            "`dinokit viz similarity` to look at its features."
        )


@torch.inference_mode()
def attention_maps(model, x: torch.Tensor) -> torch.Tensor:
    """Attention of CLS to every patch in the last block, per head: normalised images `[B, 3, H, W]` →
    `[B, heads, h, w]` (each head's row of the softmax, restricted to the patches). ViTs only."""
    require_attention(model)
    tokens, grid = model.prepare_tokens(x)
    rope = None if model.rope_embed is None else model.rope_embed(*grid)
    for block in model.blocks[:-1]:
        tokens = block(tokens, rope)
    last = model.blocks[-1]
    attn = last.attn.attention_map(last.norm1(tokens), rope)  # [B, heads, N, N]
    first_patch = 1 + model.num_registers
    return attn[:, :, 0, first_patch:].reshape(x.shape[0], -1, *grid)


# ------------------------------------------------------------------------------------------------ drawing
_ANCHORS = torch.tensor(  # a perceptually ordered dark-blue → teal → yellow ramp (viridis-like)
    [[0.27, 0.00, 0.33], [0.23, 0.32, 0.55], [0.13, 0.57, 0.55], [0.37, 0.79, 0.38], [0.99, 0.91, 0.14]]
)


def colormap(values: torch.Tensor, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
    """Scalars `[h, w]` → RGB `[h, w, 3]` in [0, 1] (range `[lo, hi]`, default the values' min and max)."""
    v = values.float()
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    t = ((v - lo) / max(hi - lo, 1e-12)).clamp(0, 1) * (len(_ANCHORS) - 1)
    i = t.floor().long().clamp(max=len(_ANCHORS) - 2)
    frac = (t - i)[..., None]
    return _ANCHORS[i] * (1 - frac) + _ANCHORS[i + 1] * frac


def upsample_map(rgb: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """`[h, w, C]` → `[H, W, C]`."""
    return F.interpolate(rgb.permute(2, 0, 1)[None].float(), size=size, mode=mode)[0].permute(1, 2, 0)


def to_uint8(rgb: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """RGB in [0, 1] `[h, w, 3]` (upsampled to `size` if given) → uint8 `[H, W, 3]`."""
    if size is not None:
        rgb = upsample_map(rgb, size)
    return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def grid_canvas(rows: Sequence[Sequence[np.ndarray]], gap: int = 8) -> np.ndarray:
    """Panels (uint8 `[H, W, 3]`, same height within a row) laid out in rows on white."""
    heights = [max(p.shape[0] for p in row) for row in rows]
    widths = [sum(p.shape[1] for p in row) + gap * (len(row) - 1) for row in rows]
    canvas = np.full((sum(heights) + gap * (len(rows) - 1), max(widths), 3), 255, dtype=np.uint8)
    top = 0
    for row, h in zip(rows, heights):
        left = 0
        for panel in row:
            canvas[top : top + panel.shape[0], left : left + panel.shape[1]] = panel
            left += panel.shape[1] + gap
        top += h + gap
    return canvas


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 `[H, W, 3]` array as PNG, atomically (creating its folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def save_side_by_side(image: torch.Tensor, feature_rgb: torch.Tensor, path: str | os.PathLike, gap: int = 8) -> None:
    """Save `image` (uint8 `[3, H, W]`) beside a feature map `[h, w, 3]` upsampled to the same size."""
    left = image.permute(1, 2, 0).numpy()
    save_png(grid_canvas([[left, to_uint8(feature_rgb, tuple(image.shape[-2:]))]], gap), path)


# ----------------------------------------------------------------------------------- backbone → pictures
def prepare_images(model, images: Sequence[torch.Tensor], size: int | None) -> list[tuple[torch.Tensor, np.ndarray]]:
    """uint8 images `[3, H, W]` → (normalised model input, what the model saw as uint8 `[H', W', 3]`)."""
    prep = Preprocess(model.patch_size, size, *model_mean_std(model))
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (prep.mean, prep.std))
    out = []
    for img in images:
        x = prep(img)  # [3, H', W']
        shown = ((x * std + mean).clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
        out.append((x, shown))
    return out


def _patch_maps(model, inputs: Sequence[torch.Tensor], batch_size: int, device, dtype: str) -> list[torch.Tensor]:
    """Patch maps `[h, w, D]` (float32, CPU) of normalised inputs, batched by shape on `device`."""
    device, compute = place(model.eval(), device, dtype)
    return [f["patches"] for f in image_features(model, inputs, device, compute, batch_size)]


def render_pca(
    model, images: Sequence[torch.Tensor], size: int | None = 448, foreground_threshold: float | None = None, *,
    batch_size: int = 8, device: str | torch.device | None = None, dtype: str = "fp32",
) -> np.ndarray:  # fmt: skip
    """One row per image: the input | its patch features' PCA colours (fitted jointly over all images).
    The backbone runs on `device` (default: CUDA when available) in `dtype`, `batch_size` images at a time."""
    inputs = prepare_images(model, images, size)
    maps = pca_rgb(_patch_maps(model, [x for x, _ in inputs], batch_size, device, dtype), foreground_threshold)
    return grid_canvas([[shown, to_uint8(rgb, shown.shape[:2])] for (_, shown), rgb in zip(inputs, maps)])


def render_similarity(
    model, images: Sequence[torch.Tensor], query: tuple[float, float] | None = None, size: int | None = 448, *,
    batch_size: int = 8, device: str | torch.device | None = None, dtype: str = "fp32",
) -> np.ndarray:  # fmt: skip
    """The first image with the query point `(y, x)` (pixels of the original first image; default its centre)
    marked, then the cosine-similarity map of that point to every patch of each image (shared colour range).
    `batch_size`, `device`, `dtype` as for `render_pca`."""
    inputs = prepare_images(model, images, size)
    H0, W0 = images[0].shape[-2:]
    y, x = query if query is not None else (H0 / 2, W0 / 2)
    if not (0 <= y < H0 and 0 <= x < W0):
        raise UserError(f"query point (y={y}, x={x}) lies outside the first image ({H0}×{W0} px)")
    h_in, w_in = inputs[0][0].shape[-2:]
    qy, qx = y * h_in / H0, x * w_in / W0  # in model-input pixels
    maps = _patch_maps(model, [x_ for x_, _ in inputs], batch_size, device, dtype)
    sims = [similarity_map(maps[0], (qy, qx), m, model.patch_size) for m in maps]
    lo, hi = min(float(s.min()) for s in sims), max(float(s.max()) for s in sims)
    rows = []
    for i, ((_, shown), sim) in enumerate(zip(inputs, sims)):
        shown = shown.copy()
        if i == 0:
            _mark(shown, int(qy), int(qx))
        rows.append([shown, to_uint8(colormap(sim, lo, hi), shown.shape[:2])])
    return grid_canvas(rows)


def _mark(img: np.ndarray, y: int, x: int, r: int = 6) -> None:
    """Draw a red cross at (y, x), in place."""
    H, W = img.shape[:2]
    img[max(y - 1, 0) : y + 2, max(x - r, 0) : min(x + r + 1, W)] = (255, 0, 0)
    img[max(y - r, 0) : min(y + r + 1, H), max(x - 1, 0) : x + 2] = (255, 0, 0)


def render_attention(
    model, images: Sequence[torch.Tensor], size: int | None = 448, *, batch_size: int = 8,
    device: str | torch.device | None = None, dtype: str = "fp32",
) -> np.ndarray:  # fmt: skip
    """One row per image: the input | the mean over heads | each head's CLS attention (own colour range).
    `batch_size`, `device`, `dtype` as for `render_pca`."""
    require_attention(model)  # before any image is preprocessed
    inputs = prepare_images(model, images, size)
    device, compute = place(model.eval(), device, dtype)
    maps: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
    for group in same_shape_groups([x for x, _ in inputs]):
        for part in chunks(group, batch_size):
            with autocast(device, compute):
                attn = attention_maps(model, torch.stack([inputs[i][0] for i in part]).to(device))  # [b, heads, h, w]
            for j, i in enumerate(part):
                maps[i] = attn[j].float().cpu()
    rows = []
    for (_, shown), attn in zip(inputs, maps):
        panels = [attn.mean(0)] + list(attn)
        rows.append([shown] + [to_uint8(colormap(a), shown.shape[:2]) for a in panels])
    return grid_canvas(rows)


# ------------------------------------------------------------------------------------- dino.txt: text prompts
def text_patch_embeddings(model, prompts: Sequence[str]) -> torch.Tensor:
    """Unit vectors `[P, E/2]`: the patch half of each prompt's dino.txt text embedding (the part aligned with
    `encode_patches`, as the released segmentation notebook uses it), L2-normalised. Needs the model's tokenizer."""
    if not prompts:
        raise UserError("no text prompts")
    with torch.inference_mode():
        text = model.encode_text(model.tokenize(list(prompts))).float()  # [P, E]
    return F.normalize(text[:, text.shape[1] // 2 :], dim=-1).cpu()


def dinotxt_patch_maps(
    model, inputs: Sequence[torch.Tensor], batch_size: int = 8, device=None, dtype: str = "fp32"
) -> list[torch.Tensor]:
    """dino.txt head patch tokens `[h, w, E/2]` (float32, CPU; `encode_patches`) of normalised inputs, batched by
    shape on `device`."""
    device, compute = place(model.eval(), device, dtype)
    maps: list[torch.Tensor] = [torch.empty(0)] * len(inputs)
    for group in same_shape_groups(inputs):
        for part in chunks(group, batch_size):
            with torch.inference_mode(), autocast(device, compute):
                out = model.encode_patches(torch.stack([inputs[i] for i in part]).to(device))  # [b, h, w, E/2]
            for j, i in enumerate(part):
                maps[i] = out[j].float().cpu()
    return maps


def text_similarity(patch_map: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each patch `[h, w, D]` to each unit text vector `[P, D]` → `[P, h, w]`."""
    return torch.einsum("hwd,pd->phw", F.normalize(patch_map.float(), dim=-1), text.float())


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    """A copy of `panel` with `title` written in its top-left corner (white on a dark box)."""
    from PIL import ImageDraw, ImageFont

    img = Image.fromarray(panel)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((4, 3), title, font=font)
    draw.rectangle((left - 3, top - 2, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((4, 3), title, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def render_text_similarity(
    model, images: Sequence[torch.Tensor], prompts: Sequence[str], size: int | None = 448, *, batch_size: int = 8,
    device: str | torch.device | None = None, dtype: str = "fp32",
) -> np.ndarray:  # fmt: skip
    """dino.txt: one row per image, the input | one panel per prompt: the cosine similarity of each head patch token
    to the patch half of the prompt's text embedding, upsampled (bilinear) over the image, in one colour range
    shared by all panels (so prompts and images compare). `model` is a `DinoTxt` with a tokenizer."""
    text = text_patch_embeddings(model, prompts)  # [P, E/2]; a missing tokenizer fails before any image work
    inputs = prepare_images(model.visual_model.backbone, images, size)
    maps = dinotxt_patch_maps(model, [x for x, _ in inputs], batch_size, device, dtype)
    sims = [text_similarity(m, text) for m in maps]  # [P, h, w] each
    lo, hi = min(float(s.min()) for s in sims), max(float(s.max()) for s in sims)
    rows = []
    for (_, shown), sim in zip(inputs, sims):
        up = F.interpolate(sim[None], size=shown.shape[:2], mode="bilinear", align_corners=False)[0]  # [P, H, W]
        panels = [_titled(to_uint8(colormap(s, lo, hi)), p) for s, p in zip(up, prompts)]
        rows.append([shown, *panels])
    return grid_canvas(rows)


def render_matches(
    image_a: np.ndarray, image_b: np.ndarray, kp_a: torch.Tensor, kp_b: torch.Tensor, pairs: torch.Tensor,
    correct: torch.Tensor | None = None, gap: int = 8,
) -> np.ndarray:  # fmt: skip
    """Two uint8 images `[H, W, 3]` side by side with lines between matched keypoints (`kp [N, 2]` x/y,
    `pairs [K, 2]`); green for correct and red for wrong matches when `correct [K]` is given, else yellow."""
    from PIL import ImageDraw

    canvas = Image.fromarray(grid_canvas([[image_a, image_b]], gap))
    draw = ImageDraw.Draw(canvas)
    offset = image_a.shape[1] + gap
    for k, (i, j) in enumerate(pairs.tolist()):
        colour = (255, 220, 0) if correct is None else ((40, 200, 60) if correct[k] else (230, 40, 40))
        (xa, ya), (xb, yb) = kp_a[i].tolist(), kp_b[j].tolist()
        draw.line([(xa, ya), (xb + offset, yb)], fill=colour, width=1)
    return np.asarray(canvas)
