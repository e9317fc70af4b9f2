"""Few-shot class prototypes on frozen patch features: per-patch classification and out-of-distribution maps.

The prototype-based zero-shot OOD approach used on road-anomaly benchmarks: each known class is the mean of the
L2-normalised patch features of a few labelled images (all their patches, or those under a mask of the class
region), or — `per_class > 1` — the centres of a cosine k-means of them, for classes whose parts look unlike
each other (a whole street scene as one "known" class). A patch takes the class of its most similar prototype
(cosine); its OOD score is `1 − max_k cos(f, p_k)` (high = unlike every known prototype), and
`score > threshold` gives an anomaly mask. When prototypes are built,
the threshold defaults to the 99th percentile of the OOD scores of the labelled patches themselves, i.e. about
1 % of known-class patches are flagged. That calibration is in-sample, hence optimistic: new images of known
classes score a little higher, so set the threshold on a held-out image where false alarms matter.

Masks given in pixels are reduced to the patch grid by coverage: a patch belongs to the region when at least
half of its pixels do.

Text prototypes (dino.txt): `text_prototypes` makes one prototype per text prompt, the L2-normalised patch half
of its dino.txt text embedding. They live in the dino.txt head's patch space, not the backbone's, so the file
records the space (`meta["space"]`: "backbone" or "dinotxt_patches", absent = backbone) and `apply` compares them
with `DinoTxt.encode_patches` tokens, refusing a model of the other space (the released head and backbone are
both 1024 wide, so the width alone would not tell). No patches were seen, so there is no calibrated threshold:
`apply` gives the class map and scores, and the OOD mask only with an explicit threshold.

Building and applying run the backbone with the tools' compute settings (`compute.py`: device, dtype, images
per batch, grouped by shape); `apply_prototypes_to_images` streams results for long image lists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..atomic import atomic_write
from ..data.datasets import ImageList
from ..data.images import decode_image
from ..data.transforms import model_mean_std
from ..errors import UserError
from .compute import chunks, image_features, place
from .extract import Preprocess
from .viz import colormap, dinotxt_patch_maps, grid_canvas, prepare_images, text_patch_embeddings, to_uint8

BACKBONE_SPACE, DINOTXT_SPACE = "backbone", "dinotxt_patches"  # what `meta["space"]` of a prototypes file says


def mask_to_patches(mask: torch.Tensor, grid: tuple[int, int], min_fraction: float = 0.5) -> torch.Tensor:
    """Pixel mask `[H, W]` (bool or 0/1) → patch mask `[h, w]`: patches covered at least `min_fraction`."""
    coverage = F.adaptive_avg_pool2d(mask.float()[None, None], grid)[0, 0]  # [h, w]
    return coverage >= min_fraction


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """`k` unit centres of unit vectors `x [N, D]` (cosine k-means, seeded random initial points)."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(len(x), generator=g)[:k]].clone()  # [k, D]
    for _ in range(iters):
        assign = (x @ centres.T).argmax(1)  # [N]
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=k) > 0
        centres[filled] = F.normalize(sums[filled], dim=-1)  # an empty cluster keeps its centre
    return centres


class Prototypes:
    """Named classes, each with `per_class` unit prototypes (the mean, or cosine k-means centres for classes
    that look different in different places), built incrementally from patch maps."""

    def __init__(self, dim: int, per_class: int = 1) -> None:
        self.dim, self.per_class = dim, per_class
        self.names: list[str] = []
        self.counts: list[int] = []
        self._feats: dict[str, list[torch.Tensor]] = {}  # unit features seen, until saved
        self._vectors: torch.Tensor | None = None  # [K, D]
        self.owner = torch.zeros(0, dtype=torch.long)  # [K]: class of each prototype
        self.threshold: float | None = None
        self.meta: dict = {}

    def add(self, name: str, patch_map: torch.Tensor, mask: torch.Tensor | None = None) -> int:
        """Add the patches of `patch_map [h, w, D]` (those where `mask [h, w]` is True) to class `name`."""
        feats = F.normalize(patch_map.reshape(-1, self.dim).float(), dim=-1)  # [h·w, D]
        if mask is not None:
            feats = feats[mask.reshape(-1).bool()]
        if name not in self.names:
            self.names.append(name)
            self.counts.append(0)
        self.counts[self.names.index(name)] += len(feats)
        self._feats.setdefault(name, []).append(feats)
        self._vectors = None  # refit on next use
        return len(feats)

    @property
    def vectors(self) -> torch.Tensor:
        """The prototypes `[K, D]`, L2-normalised; `owner[k]` is the class of prototype k."""
        if self._vectors is None:
            empty = [n for n, c in zip(self.names, self.counts) if c == 0]
            if not self.names or empty:
                raise UserError(f"no patches for class(es) {empty or 'any'}; check the masks or images")
            centres, owner = [], []
            for k, name in enumerate(self.names):
                x = torch.cat(self._feats[name])  # [n, D]
                c = F.normalize(x.mean(0, keepdim=True), dim=-1) if self.per_class == 1 else (
                    spherical_kmeans(x, min(self.per_class, len(x))))  # fmt: skip
                centres.append(c)
                owner += [k] * len(c)
            self._vectors, self.owner = torch.cat(centres), torch.tensor(owner)
        return self._vectors

    def calibrate(self, quantile: float = 0.99) -> float:
        """Set the OOD threshold to the `quantile` of the OOD scores of the patches used to build the prototypes."""
        if not self._feats:
            raise UserError("calibration needs the patches the prototypes were built from (not kept in files)")
        seen = torch.cat([f for feats in self._feats.values() for f in feats])
        self.threshold = float(torch.quantile(self.ood_score(seen), quantile))
        return self.threshold

    def similarities(self, patch_map: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each patch to each prototype: `[..., D]` → `[..., K]`."""
        return F.normalize(patch_map.float(), dim=-1) @ self.vectors.T

    def classify(self, patch_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch class index `[...]` and the cosine similarity to its nearest prototype `[...]`."""
        best, nearest = self.similarities(patch_map).max(-1)
        return self.owner[nearest], best

    def ood_score(self, patch_map: torch.Tensor) -> torch.Tensor:
        """`1 − max_k cos(patch, prototype_k)`, `[...]`."""
        return 1 - self.similarities(patch_map).max(-1).values

    @property
    def space(self) -> str:
        """The feature space of the prototypes: `"backbone"` (patch tokens) or `"dinotxt_patches"` (dino.txt)."""
        return self.meta.get("space", BACKBONE_SPACE)

    def ood_mask(self, patch_map: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Patches whose OOD score exceeds `threshold` (default: the calibrated one)."""
        t = self.threshold if threshold is None else threshold
        if t is None:
            raise UserError("no OOD threshold: pass one or calibrate() the prototypes")
        return self.ood_score(patch_map) > t

    # -------------------------------------------------------------------------------------------- disk
    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        meta = {"names": self.names, "counts": self.counts, "per_class": self.per_class, "threshold": self.threshold,
                **self.meta}  # fmt: skip
        tensors = {"prototypes": self.vectors.contiguous(), "owner": self.owner}
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"dinokit": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Prototypes:
        from safetensors import SafetensorError, safe_open

        if not Path(path).is_file():
            raise UserError(f"{path}: no such prototypes file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("dinokit", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (ValueError, SafetensorError) as e:  # not safetensors, or metadata that is not JSON
            raise UserError(f"{path}: not a dinokit prototypes file ({e}); give the file "
                            "`dinokit prototypes build` wrote") from None  # fmt: skip
        if "names" not in meta or "owner" not in tensors:
            raise UserError(f"{path}: not a dinokit prototypes file")
        protos = cls(tensors["prototypes"].shape[1], meta.pop("per_class"))
        protos.names, protos.counts, protos.threshold = meta.pop("names"), meta.pop("counts"), meta.pop("threshold")
        protos._vectors, protos.owner = tensors["prototypes"], tensors["owner"]
        protos.meta = meta
        return protos


# ------------------------------------------------------------------------------------ images → prototypes
def build_prototypes(
    model, source: str | os.PathLike, masks: str | os.PathLike | None = None, size: int | None = 448,
    per_class: int = 1, *, batch_size: int = 8, device: str | torch.device | None = None, dtype: str = "fp32",
    progress: bool = True,
) -> Prototypes:  # fmt: skip
    """Prototypes from labelled images: a folder with one sub-folder per class (or a `path,label` list). With
    `masks`, a folder of mask images named like the images (`<stem>.png`, white = the class region); images
    without a mask contribute all their patches. The backbone runs on `device` (default: CUDA when available)
    in `dtype`, `batch_size` images at a time (see `compute.py`)."""
    images = ImageList.from_source(source)
    if images.labels is None:
        raise UserError(f"{source}: prototypes need labelled images (class sub-folders or a path,label list)")
    device, compute = place(model.eval(), device, dtype)
    prep = Preprocess(model.patch_size, size, *model_mean_std(model))
    protos = Prototypes(model.embed_dim, per_class)
    items = list(zip(images.paths, images.labels))
    with tqdm(total=len(items), desc="prototypes", unit="img", disable=not progress) as bar:
        for chunk in chunks(items, batch_size):
            feats = image_features(model, [prep(decode_image(path)) for path, _ in chunk], device, compute, batch_size)
            for (path, label), f in zip(chunk, feats):  # in list order, so batching cannot change the result
                patch_map = f["patches"]  # [h, w, D]
                mask = None
                if masks is not None and (Path(masks) / f"{Path(path).stem}.png").exists():
                    pixels = decode_image(Path(masks) / f"{Path(path).stem}.png")[0] > 127  # [H, W]
                    mask = mask_to_patches(pixels, patch_map.shape[:2])
                protos.add(images.classes[label], patch_map, mask)
            bar.update(len(chunk))
    protos.calibrate()
    protos.meta = {"size": size}
    return protos


def text_prototypes(model, prompts: list[str] | tuple[str, ...], size: int | None = 448) -> Prototypes:
    """One prototype per text prompt (named by it): the L2-normalised patch half of its dino.txt text embedding, in
    the head's patch space (`meta["space"] = "dinotxt_patches"`). `model`: a `DinoTxt` with a tokenizer; `size`: the
    shorter side `apply` resizes images to."""
    if not prompts:
        raise UserError("text prototypes need at least one prompt")
    if len(set(prompts)) != len(prompts):
        raise UserError("the prompts must differ from each other (each one names a class)")
    vectors = text_patch_embeddings(model, prompts)  # [P, E/2]
    protos = Prototypes(vectors.shape[1], 1)
    protos.names, protos.counts = list(prompts), [0] * len(prompts)
    protos._vectors, protos.owner = vectors, torch.arange(len(prompts))
    protos.meta = {"size": size, "space": DINOTXT_SPACE}
    return protos


def _check_space(model, protos: Prototypes) -> bool:
    """Whether `model` is a dino.txt model, after checking that it computes the prototypes' feature space."""
    is_dinotxt = hasattr(model, "encode_patches")
    if protos.space not in (BACKBONE_SPACE, DINOTXT_SPACE):
        raise UserError(f"unknown prototype feature space {protos.space!r}")
    if is_dinotxt != (protos.space == DINOTXT_SPACE):
        raise UserError("these prototypes live in the dino.txt head's patch space: apply them with the dino.txt model "
                        "(--dinotxt)" if protos.space == DINOTXT_SPACE else "these prototypes were built from backbone "
                        "patch features: apply them with the backbone alone, not the dino.txt model")  # fmt: skip
    if protos.vectors.shape[1] != _width(model, is_dinotxt):
        raise UserError(f"the prototypes have width {protos.vectors.shape[1]}, the model's patch features "
                        f"{_width(model, is_dinotxt)}: use the model they were built with")  # fmt: skip
    return is_dinotxt


def _width(model, is_dinotxt: bool) -> int:
    return model.embed_dim // 2 if is_dinotxt else model.embed_dim


PALETTE = torch.tensor(  # class colours for label maps
    [[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16], [0.58, 0.4, 0.74],
     [0.55, 0.34, 0.29], [0.89, 0.47, 0.76], [0.5, 0.5, 0.5], [0.74, 0.74, 0.13], [0.09, 0.75, 0.81]]
)  # fmt: skip


def apply_prototypes_to_images(
    model, protos: Prototypes, images: Iterable[torch.Tensor], threshold: float | None = None, *,
    batch_size: int = 8, device: str | torch.device | None = None, dtype: str = "fp32",
) -> Iterator[dict[str, torch.Tensor | np.ndarray]]:  # fmt: skip
    """`apply_prototypes` over many images, lazily: images are read from the iterable `batch_size` at a time,
    run through the backbone batched by shape (on `device`, in `dtype`), and one result per image is yielded in
    order — so a long list never sits in memory. Prototypes of the dino.txt patch space (`text_prototypes`) need the
    `DinoTxt` model (its `encode_patches` tokens); without a threshold (given or calibrated) there is no `ood_mask`."""
    is_dinotxt = _check_space(model, protos)
    masked = threshold is not None or protos.threshold is not None
    device, compute = place(model.eval(), device, dtype)
    backbone = model.visual_model.backbone if is_dinotxt else model
    for chunk in chunks(images, batch_size):
        inputs = prepare_images(backbone, chunk, protos.meta.get("size"))  # preprocessed as when built
        xs = [x for x, _ in inputs]
        if is_dinotxt:
            maps = dinotxt_patch_maps(model, xs, batch_size, device, dtype)
        else:
            maps = [f["patches"] for f in image_features(model, xs, device, compute, batch_size)]
        for (_, shown), patch_map in zip(inputs, maps):  # patch_map [h, w, D]
            labels, best = protos.classify(patch_map)
            result = {"labels": labels, "similarity": best, "ood_score": 1 - best, "shown": shown}
            if masked:
                result["ood_mask"] = protos.ood_mask(patch_map, threshold)
            yield result


def apply_prototypes(
    model, protos: Prototypes, image: torch.Tensor, threshold: float | None = None, *,
    device: str | torch.device | None = None, dtype: str = "fp32",
) -> dict[str, torch.Tensor | np.ndarray]:  # fmt: skip
    """One uint8 image `[3, H, W]` → `labels [h, w]`, `similarity [h, w]`, `ood_score [h, w]`, `ood_mask [h, w]`
    at the patch grid, preprocessed as when the prototypes were built, and `shown` (the model input, uint8)."""
    return next(apply_prototypes_to_images(model, protos, [image], threshold, device=device, dtype=dtype))


def render_result(result: dict, num_classes: int = 2) -> np.ndarray:
    """Input | class map (if several classes) | OOD score | input with the OOD mask in red (when there is one), as
    one uint8 picture `[H, W, 3]`."""
    shown = result["shown"]
    size = shown.shape[:2]
    classes = to_uint8(PALETTE[result["labels"] % len(PALETTE)], size)
    score = to_uint8(colormap(result["ood_score"], 0.0, max(float(result["ood_score"].max()), 1e-6)), size)
    if "ood_mask" not in result:
        return grid_canvas([[shown, classes, score] if num_classes > 1 else [shown, score]])
    mask = F.interpolate(result["ood_mask"].float()[None, None], size=size)[0, 0].bool().numpy()  # [H, W]
    overlay = shown.copy()
    overlay[mask] = (0.5 * overlay[mask] + [127, 0, 0]).astype(np.uint8)
    return grid_canvas([[shown, classes, score, overlay] if num_classes > 1 else [shown, score, overlay]])
