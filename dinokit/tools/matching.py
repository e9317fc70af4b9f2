"""Keypoint descriptors from frozen patch features, and mutual-nearest-neighbour matching with a ratio test.

For SLAM / visual odometry front ends that already have keypoints (corners, a detector) or want one per patch:
- `sample_descriptors`: bilinear interpolation of the patch map at arbitrary pixel coordinates. Patch (i, j)
  describes the pixel square whose centre is `((j + 0.5)·p, (i + 0.5)·p)`; between centres the features are
  interpolated, beyond the outer centres the edge patch is used. Descriptors are L2-normalised.
- `grid_keypoints`: the patch centres, whose descriptors are exactly the patch tokens (no interpolation).
- `describe`: image → patch map (final output, or an intermediate block, which often matches better across
  viewpoints) → descriptors.
- `match_keypoints`: cosine similarity; a pair (i, j) is kept when j is i's nearest neighbour and i is j's
  (mutual), and the nearest is clearly closer than the second nearest (Lowe's ratio test on the Euclidean
  distance of unit vectors, `d = sqrt(2 − 2·cos)`).
- `warp_image`, `project_points`: a homography applied to an image and to points, to check a matcher on a
  pair with known correspondences.

ConvNeXt backbones: the final output is the last stage at stride 32 (`patch_size`); `layer` is a stage index
(0–3), and stage i's map is finer, stride 4·2^i, and narrower (`dims[i]`), so `describe` samples it on its own
grid and the default keypoints are that grid's cell centres. Only the last stage has a norm (as released).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from .extract import layer_stride


def grid_keypoints(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """Pixel coordinates `(x, y)` of the patch centres, row-major, `[h·w, 2]`."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * patch_size


def sample_descriptors(
    patch_map: torch.Tensor, keypoints: torch.Tensor, patch_size: int, normalize: bool = True
) -> torch.Tensor:
    """Patch features `[h, w, D]` sampled bilinearly at pixel coordinates `keypoints [N, 2]` (x, y) → `[N, D]`."""
    h, w, D = patch_map.shape
    kp = keypoints.to(patch_map.device, torch.float32)
    grid = torch.stack([2 * kp[:, 0] / (w * patch_size) - 1, 2 * kp[:, 1] / (h * patch_size) - 1], -1)  # [N, 2]
    fmap = patch_map.permute(2, 0, 1)[None].float()  # [1, D, h, w]
    out = F.grid_sample(fmap, grid[None, None], mode="bilinear", padding_mode="border", align_corners=False)
    desc = out[0, :, 0].T  # [N, D]
    return F.normalize(desc, dim=-1) if normalize else desc


@torch.inference_mode()
def describe(
    model, image: torch.Tensor, keypoints: torch.Tensor | None = None, layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of a normalised image `[3, H, W]` at `keypoints [N, 2]` (pixels, x/y; default: the patch
    centres) from the final output or block `layer` (0-based, final-normed; a ConvNeXt stage, see the module
    docstring). Returns `(keypoints, [N, D])`."""
    depth = model.n_blocks  # what get_intermediate_layers counts: blocks (ViT) or stages (ConvNeXt)
    block = depth - 1 if layer is None else layer
    if not 0 <= block < depth:
        raise UserError(f"layer {layer} is outside [0, {depth}) for this backbone")
    p = layer_stride(model, block)  # pixels per token of that layer
    grid = (image.shape[-2] // p, image.shape[-1] // p)
    (patches,) = model.get_intermediate_layers(image[None], n=[block])  # [1, h·w, D]
    patch_map = patches[0].reshape(*grid, -1)  # [h, w, D]
    if keypoints is None:
        keypoints = grid_keypoints(grid, p)
    return keypoints, sample_descriptors(patch_map, keypoints, p)


def match_keypoints(
    desc_a: torch.Tensor, desc_b: torch.Tensor, ratio: float | None = 0.9, mutual: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Match unit descriptors `[N, D]` to `[M, D]`. Returns index pairs `[K, 2]` (into a, into b) and their
    cosine similarities `[K]`. `ratio=None` disables the ratio test, `mutual=False` the cycle check."""
    if len(desc_a) == 0 or len(desc_b) == 0:
        return torch.zeros(0, 2, dtype=torch.long), torch.zeros(0)
    sim = desc_a.float() @ desc_b.float().T  # [N, M]
    k = min(2, sim.shape[1])
    top, idx = sim.topk(k, dim=1)  # [N, k]
    keep = torch.ones(len(desc_a), dtype=torch.bool)
    if mutual:
        back = sim.argmax(0)  # [M]: nearest a for every b
        keep &= back[idx[:, 0]] == torch.arange(len(desc_a))
    if ratio is not None and k == 2:
        dist = (2 - 2 * top).clamp_min(0).sqrt()  # [N, 2] Euclidean distances of unit vectors
        keep &= dist[:, 0] < ratio * dist[:, 1]
    pairs = torch.stack([torch.arange(len(desc_a)), idx[:, 0]], -1)[keep]  # [K, 2]
    return pairs, top[keep, 0]


def project_points(H: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates `[N, 2]` (x, y) mapped by a 3×3 homography."""
    p = torch.cat([points.float(), torch.ones(len(points), 1)], 1) @ H.T  # [N, 3]
    return p[:, :2] / p[:, 2:]


def warp_image(img: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Warp a float image `[3, S, T]` by the homography H (pixel coordinates, x/y): output pixel q shows the
    input at H⁻¹q (bilinear, zeros outside). For checking matchers on pairs with known correspondences."""
    _, S, T = img.shape
    ys, xs = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(T) + 0.5, indexing="ij")
    src = project_points(torch.linalg.inv(H), torch.stack([xs, ys], -1).reshape(-1, 2))  # [S·T, 2]
    grid = torch.stack([2 * src[:, 0] / T - 1, 2 * src[:, 1] / S - 1], -1).reshape(1, S, T, 2)
    return F.grid_sample(img[None].float(), grid, mode="bilinear", align_corners=False)[0]
