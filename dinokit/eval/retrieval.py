"""Instance retrieval with frozen global features, scored by mAP (revisited Oxford / Paris style; DINOv2 §7).

Every image is resized so its shorter side is `size` (sides rounded to the patch size, no crop: landmarks fill
the frame differently from object photos); its final-normed CLS token, L2-normalised, is its descriptor.
Queries may carry a bounding box, cropped before resizing. The gallery is ranked by cosine similarity; each
query's positives and junk images are given, junk being left out of the ranking (`metrics.average_precision`).
The input is one JSON file (docs/formats.md); the Medium and Hard protocols of the revisited benchmarks are
two such files (Medium: easy + hard are positives; Hard: hard are positives, easy join the junk).
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
from .features import default_device, model_size
from .metrics import average_precision


def load_retrieval_json(path: str | Path) -> tuple[list[Path], list[dict]]:
    """Gallery paths and queries `{image, bbox?, positives: [int], junk: [int]}` with gallery indices."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
        gallery = [path.parent / _of_type(g, str, "gallery entries are paths") for g in spec["gallery"]]
        index = {g: i for i, g in enumerate(spec["gallery"])}
        queries = []
        for q in spec["queries"]:
            ref = lambda items: sorted(  # noqa: E731
                {_gallery_index(index, i, path) for i in _of_type(items, list, "positives and junk are lists")}
            )
            queries.append(
                {
                    "image": path.parent / q["image"],
                    "bbox": q.get("bbox"),
                    "positives": ref(q["positives"]),
                    "junk": ref(q.get("junk", [])),
                }
            )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path}: not a retrieval file as described in docs/formats.md ({type(e).__name__}: {e})"
        ) from None
    if not gallery or not queries:
        raise UserError(f"{path}: no {'gallery images' if not gallery else 'queries'}")
    if any(not q["positives"] for q in queries):
        raise UserError(f"{path}: every query needs at least one positive")
    for q in queries:
        wrong = [i for i in q["positives"] + q["junk"] if not 0 <= i < len(gallery)]
        if wrong:
            raise UserError(f"{path}: query {q['image'].name} names gallery index {wrong[0]}, but the gallery has "
                            f"{len(gallery)} images (0…{len(gallery) - 1})")  # fmt: skip
        box = q["bbox"]
        if box is not None and (len(box) != 4 or not (box[0] < box[2] and box[1] < box[3])):
            raise UserError(f"{path}: query {q['image'].name} has bbox {box}; expected [x0, y0, x1, y1] with x0 < x1 "
                            "and y0 < y1")  # fmt: skip
    return gallery, queries


def _gallery_index(index: dict[str, int], ref: str | int, path: Path) -> int:
    """A positive or junk entry (gallery path or index) as a gallery index."""
    if isinstance(ref, str):
        if ref not in index:
            raise UserError(f"{path}: {ref!r} is named as a positive or junk image but is not in the gallery")
        return index[ref]
    if isinstance(ref, bool) or not isinstance(ref, int):  # 1.5 or true would otherwise become an index
        raise TypeError(f"{ref!r} is neither a gallery path nor a gallery index")
    return ref


def _of_type(value, kind: type, what: str):
    """`value`, if it has the type the file format puts there."""
    if not isinstance(value, kind):
        raise TypeError(f"{what}; found {value!r}")
    return value


@torch.inference_mode()
def image_descriptor(model, path: Path, size: int, device, bbox=None) -> torch.Tensor:
    """L2-normalised CLS `[D]` of one image (optionally cropped to `bbox` = [x0, y0, x1, y1] pixels)."""
    image = to_float(decode_image(path))
    if bbox is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in bbox)
        image = image[:, max(y0, 0) : y1, max(x0, 0) : x1]
        if image.shape[-1] < 1 or image.shape[-2] < 1:
            raise UserError(f"{path}: bbox {bbox} lies outside the {tuple(image.shape[-2:])} image")
    H, W = image.shape[-2:]
    scale = size / min(H, W)
    p = model.patch_size
    image = resize(image, (round_to_patch(H * scale, p), round_to_patch(W * scale, p)), mode="bicubic")
    mean, std = model_mean_std(model)
    cls = model.forward_features(normalize(image, mean, std)[None].to(device)).cls[0]
    return F.normalize(cls.float(), dim=0).cpu()


def retrieval_map(query_features: torch.Tensor, gallery_features: torch.Tensor, queries: list[dict]) -> float:
    """mAP in percent of L2-normalised query features `[Q, D]` against the gallery `[N, D]`."""
    ranking = (query_features @ gallery_features.T).argsort(dim=1, descending=True)  # [Q, N]
    aps = [average_precision(r.tolist(), set(q["positives"]), set(q["junk"])) for r, q in zip(ranking, queries)]
    return 100.0 * sum(aps) / len(aps)


def run_retrieval(model, spec: str | Path, size: int = 224, device=None) -> dict[str, float]:
    """The protocol from a retrieval JSON: `{"map": …}` (percent)."""
    gallery, queries = load_retrieval_json(spec)
    model_size(model, size)  # warns when the size is below one patch (every image is raised to one)
    device = torch.device(device) if device is not None else default_device()
    model = model.eval().to(device)
    g = torch.stack([image_descriptor(model, p, size, device) for p in tqdm(gallery, desc="gallery", leave=False)])
    q = torch.stack(
        [
            image_descriptor(model, q["image"], size, device, q["bbox"])
            for q in tqdm(queries, desc="queries", leave=False)
        ]
    )
    return {"map": retrieval_map(q, g, queries)}
