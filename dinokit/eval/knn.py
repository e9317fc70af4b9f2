"""Weighted k-nearest-neighbour classification on frozen CLS features (DINO, arXiv:2104.14294 §4.1; DINOv2 §7).

Features are L2-normalised; each test image takes the top-k training images by cosine similarity and every
neighbour votes for its class with weight `exp(sim / T)`, T = 0.07. Top-1 is reported for k ∈ {10, 20, 100,
200} from one search at the largest k. A k larger than the training set is capped at its size.

The search is exact: chunked matrix products in torch, or a faiss inner-product index when faiss is installed
and the gallery is large (`use_faiss=None` decides by size; both give the same neighbours up to ties).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import require
from .features import GlobalFeatures, align_classes, extract_global_features, labelled_sets, require_labels
from .metrics import top1_accuracy
from .significance import Scores, percent_of

KS = (10, 20, 100, 200)
TEMPERATURE = 0.07
FAISS_MIN_GALLERY = 50_000  # below this a torch matrix product is as fast and needs no extra package


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_neighbours(
    queries: torch.Tensor, gallery: torch.Tensor, k: int, use_faiss: bool | None = None, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product of `queries [M, D]` against `gallery [N, D]` → (sims, indices) `[M, k]`,
    best first."""
    k = min(k, gallery.shape[0])
    if use_faiss is None:
        use_faiss = gallery.shape[0] >= FAISS_MIN_GALLERY and _faiss_available()
    if use_faiss:
        faiss = require("faiss", "faiss", "k-NN search with faiss")
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery.float().contiguous().numpy())
        sims, idx = index.search(queries.float().contiguous().numpy(), k)
        return torch.from_numpy(sims), torch.from_numpy(idx).long()
    sims, idx = [], []
    for start in range(0, queries.shape[0], chunk):
        s, i = (queries[start : start + chunk] @ gallery.T).topk(k, dim=1)  # [m, k]
        sims.append(s)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def knn_vote(sims: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float = TEMPERATURE):
    """Class scores `[M, C]` = Σ over the given neighbours of `exp(sim / T)` into each neighbour's class.

    Computed as a softmax over the neighbours (the same ranking of classes, without overflow)."""
    weights = torch.softmax(sims.double() / temperature, dim=1)  # [M, k]
    votes = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64)
    return votes.scatter_add_(1, neighbour_labels, weights)


def knn_eval(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = KS,
    temperature: float = TEMPERATURE,
    num_classes: int | None = None,
    use_faiss: bool | None = None,
) -> Scores:
    """k-NN top-1 (percent) for each k: `{"top1_k10": …, "top1_k20": …}` from in-memory features `[N, D]`
    and integer labels `[N]` (e.g. the CLS features of a periodic evaluation during training); `.per_item` holds
    which test image each k got right (`significance.py`)."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one training and one test feature")
    train = F.normalize(train_features.float(), dim=1)
    test = F.normalize(test_features.float(), dim=1)
    train_labels, test_labels = train_labels.long().cpu(), test_labels.long().cpu()
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    sims, idx = nearest_neighbours(test.cpu(), train.cpu(), max(ks), use_faiss)  # [M, kmax]
    neighbour_labels = train_labels[idx]  # [M, kmax]
    results, items = {}, {}
    for k in ks:
        pred = knn_vote(sims[:, :k], neighbour_labels[:, :k], num_classes, temperature).argmax(dim=1)  # [M]
        results[f"top1_k{k}"] = top1_accuracy(pred, test_labels)
        items[f"top1_k{k}"] = percent_of(pred == test_labels)
    return Scores(results, items)


def knn_features(train: GlobalFeatures, val: GlobalFeatures, **kwargs) -> Scores:
    """k-NN on cached features of two labelled image sets (last-block CLS)."""
    require_labels(train, "training")
    require_labels(val, "validation")
    val = align_classes(train, val)
    n_classes = max(len(train.classes), int(train.labels.max()) + 1, int(val.labels.max()) + 1)
    return knn_eval(train.last_cls, train.labels, val.last_cls, val.labels, num_classes=n_classes, **kwargs)


def run_knn(model, train, val, size: int = 224, batch_size: int = 64, num_workers: int = 0, device=None, **kwargs):
    """The whole protocol from two labelled image folders (or lists): extract, then `knn_eval`."""
    common = dict(size=size, n_last_blocks=1, batch_size=batch_size, num_workers=num_workers, device=device)
    train, val = labelled_sets(train, val)  # a mismatch is found before the features are extracted
    train_f = extract_global_features(model, train, desc="k-NN train features", **common)
    val_f = extract_global_features(model, val, desc="k-NN val features", **common)
    return knn_features(train_f, val_f, **kwargs)
