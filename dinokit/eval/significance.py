"""How sure a difference between two backbones is: a paired bootstrap over the validation items.

Every metric of the protocols is a function of a sum over validation items (images, or image pairs) of
per-item statistics: correct or not (k-NN, linear), a confusion matrix (segmentation), the image's errors
(depth), the keypoints matched within each threshold (correspondence). A protocol returns `Scores`: the usual
flat dict of metric → number, plus `per_item`, the `ItemStats` behind each metric. Two backbones scored on the
same items are compared by resampling the items with replacement — the same resample for both, which keeps the
pairing — and recomputing the change of the metric; the central 95 % of those changes is the interval that the
choice of validation items alone can explain (Efron & Tibshirani's percentile interval).

What it does not cover: training noise. A second pretraining run that differs only in float round-off gives a
different model; that spread is usually larger than this interval, and only repeated runs measure it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ItemStats:
    """Per-item statistics `[n_items, k]` (any numeric dtype) and how a metric follows from their sum: `reduce`
    maps summed statistics `[..., k]` to the metric `[...]` (batched, so that thousands of resamples cost one
    call)."""

    stats: torch.Tensor
    reduce: Callable[[torch.Tensor], torch.Tensor]

    def value(self) -> float:
        """The metric over all the items (what the protocol reports)."""
        return float(self.reduce(self.stats.sum(0)))


class Scores(dict):
    """A protocol's metrics (metric → number, what its JSON holds) and `per_item`: metric → `ItemStats` for the
    metrics that are sums over validation items."""

    def __init__(self, metrics: dict[str, float], per_item: dict[str, ItemStats] | None = None) -> None:
        super().__init__(metrics)
        self.per_item = dict(per_item or {})


def percent_of(hits: torch.Tensor, counts: torch.Tensor | None = None) -> ItemStats:
    """`100 · Σ hits / Σ counts`: accuracy when each item is one prediction (`hits` 0/1, counts 1), recall when
    an item holds `counts[i]` keypoints of which `hits[i]` are matched."""
    hits = hits.double().reshape(-1)
    counts = torch.ones_like(hits) if counts is None else counts.double().reshape(-1)
    return ItemStats(torch.stack([hits, counts], dim=1), lambda s: 100.0 * s[..., 0] / s[..., 1])


def mean_over_items(values: torch.Tensor) -> ItemStats:
    """The mean of one number per item (e.g. an image's RMSE, averaged over images)."""
    values = values.double().reshape(-1)
    return ItemStats(torch.stack([values, torch.ones_like(values)], dim=1), lambda s: s[..., 0] / s[..., 1])


def paired_bootstrap(
    a: ItemStats, b: ItemStats, samples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The `level` percentile interval of `metric(b) − metric(a)` when the items (shared by both, in the same
    order) are resampled with replacement."""
    n = a.stats.shape[0]
    if b.stats.shape[0] != n or n == 0:
        raise ValueError(f"a paired bootstrap needs the same items on both sides ({n} vs {b.stats.shape[0]})")
    g = torch.Generator().manual_seed(seed)
    drawn = torch.randint(n, (samples, n), generator=g)  # [S, n] item indices
    weights = torch.zeros(samples, n, dtype=torch.float64).scatter_add_(1, drawn, torch.ones(samples, n).double())
    change = b.reduce(weights @ b.stats.double()) - a.reduce(weights @ a.stats.double())  # [S]
    tail = (1.0 - level) / 2
    low, high = torch.quantile(change, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return float(low), float(high)


def beyond_noise(interval: tuple[float, float], higher_is_better: bool = True) -> bool:
    """Whether the whole interval of the change lies on the better side of zero."""
    low, high = interval
    return low > 0 if higher_is_better else high < 0
