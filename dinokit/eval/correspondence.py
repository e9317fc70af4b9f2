"""Keypoint correspondence with frozen patch features: what SLAM / visual-odometry users of DINO features rely on
(Probe3D-style evaluation, El Banani et al. 2024; DINOv3 §6).

For each pair (A, B) with ground-truth keypoints, both images are resized (shorter side `size`, sides rounded
to the patch size) and their final-normed patch maps computed. A's feature at each keypoint is sampled
bilinearly from its patch map (a patch's feature sits at the patch centre); B's patch map is upsampled
bilinearly to every pixel of the resized B; each keypoint is matched to the B pixel of highest cosine
similarity (nearest neighbour, no ratio test, no mutual check). The error is the distance between the match
and the true position, in pixels of the original image B; `recall@t` is the percentage of keypoints with error
≤ t pixels (defaults 5, 10, 20).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.images import decode_image
from ..data.transforms import model_mean_std, normalize, resize, round_to_patch, to_float
from ..errors import UserError
from ..tools.matching import sample_descriptors
from .dense import patch_features
from .features import default_device, model_size
from .metrics import recall_at
from .significance import Scores, percent_of

THRESHOLDS = (5, 10, 20)


def load_pairs_json(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        pairs = json.loads(path.read_text())["pairs"]
        out = []
        for p in pairs:
            a, b = _keypoints(p["keypoints_a"]), _keypoints(p["keypoints_b"])
            if a.shape != b.shape:
                raise ValueError("keypoints_a and keypoints_b differ in length")
            out.append({"a": path.parent / p["image_a"], "b": path.parent / p["image_b"], "kp_a": a, "kp_b": b})
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a pairs file as described in docs/formats.md ({type(e).__name__}: {e})") from None
    if not out:
        raise UserError(f"{path}: no pairs")
    return out


def _keypoints(value) -> torch.Tensor:
    """A JSON list of [x, y] as `[N, 2]` float64; anything else (e.g. [x, y, score]) is a ValueError."""
    points = torch.tensor(value, dtype=torch.float64)
    if points.numel() and (points.ndim != 2 or points.shape[1] != 2):
        raise ValueError(f"keypoints are lists of [x, y]; found an array of shape {list(points.shape)}")
    if not points.isfinite().all():
        raise ValueError("a keypoint is NaN or infinite")
    return points.reshape(-1, 2)


def prepare(model, path: Path, size: int, keypoints: torch.Tensor) -> tuple[torch.Tensor, tuple[float, float]]:
    """Normalised model input `[3, h, w]` and the (x, y) scale from original to resized pixels. `keypoints`
    `[N, 2]` (x, y) must lie inside the image: a point outside it has no feature to sample or to find."""
    image = to_float(decode_image(path))
    H, W = image.shape[-2:]
    outside = (keypoints < 0).any(dim=1) | (keypoints[:, 0] > W) | (keypoints[:, 1] > H)
    if outside.any():
        x, y = keypoints[outside][0].tolist()
        raise UserError(f"{path}: {int(outside.sum())} keypoints lie outside the {W}×{H} image, e.g. ({x:g}, {y:g}); "
                        "keypoints are (x, y) pixels from the top-left corner")  # fmt: skip
    scale = size / min(H, W)
    h, w = round_to_patch(H * scale, model.patch_size), round_to_patch(W * scale, model.patch_size)
    mean, std = model_mean_std(model)
    return normalize(resize(image, (h, w), mode="bilinear"), mean, std), (w / W, h / H)


@torch.inference_mode()
def match_pair(model, pair: dict, size: int, device) -> torch.Tensor:
    """Pixel errors `[N]` (in image B) of nearest-neighbour matches of A's keypoints."""
    xa, sa = prepare(model, pair["a"], size, pair["kp_a"])
    xb, sb = prepare(model, pair["b"], size, pair["kp_b"])
    fa = patch_features(model, xa[None].to(device))[0].float()  # [D, ha, wa]
    fb = patch_features(model, xb[None].to(device))[0].float()  # [D, hb, wb]
    points = pair["kp_a"] * torch.tensor(sa, dtype=torch.float64)  # resized-A pixels
    query = sample_descriptors(fa.permute(1, 2, 0), points, model.patch_size)  # [N, D], L2-normalised
    Hb, Wb = xb.shape[-2:]
    dense = F.interpolate(fb[None], size=(Hb, Wb), mode="bilinear", align_corners=False)[0]  # [D, Hb, Wb]
    dense = F.normalize(dense.flatten(1), dim=0)  # [D, Hb·Wb]
    best = (query @ dense).argmax(dim=1).cpu()  # [N]
    match = torch.stack([best % Wb + 0.5, best // Wb + 0.5], dim=1).double()  # resized-B pixel centres
    match = match / torch.tensor(sb, dtype=torch.float64)  # → original B pixels
    return (match - pair["kp_b"]).norm(dim=1)


def run_correspondence(model, pairs_json: str | Path, size: int = 224, thresholds=THRESHOLDS, device=None):
    """The protocol from a pairs JSON: `{"recall@5": …, "recall@10": …, "recall@20": …}` (percent); `.per_item`
    holds the matched and total keypoints of each pair."""
    pairs = load_pairs_json(pairs_json)
    model_size(model, size)  # warns when the size is below one patch (every image is raised to one)
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    errors = [match_pair(model, p, size, device) for p in tqdm(pairs, desc="correspondence", unit="pair", leave=False)]
    counts = torch.tensor([len(e) for e in errors])
    items = {f"recall@{t:g}": percent_of(torch.stack([(e <= t).sum() for e in errors]), counts) for t in thresholds}
    return Scores(recall_at(torch.cat(errors), thresholds), items)
