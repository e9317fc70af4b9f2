"""Linear probe on frozen features (DINOv2 §7, "linear evaluation").

A grid of linear classifiers is trained together, in one pass over the cached features: every feature
variant (CLS of the last 1 or 4 blocks, each with or without the average patch token appended) × every learning
rate of {1, 2, 5}×10^{-5…-2} and 0.1, scaled by batch/256; SGD with momentum 0.9, no weight decay, cosine
decay to zero; weights initialised N(0, 0.01²), biases zero. Each classifier has its own loss and parameters,
so summing the losses trains them all independently in the same step. The best (variant, learning rate) is
chosen on a validation split held out from the training images (stratified, 10 % by default) and its top-1 on
the evaluation images is reported.

Deviation from the released protocol: features are computed once from the centre crop (no random-resized-
crop / flip augmentation while training the classifiers), which makes the probe seconds instead of hours; the
released code also picks the best classifier on the evaluation set itself, here a held-out split is used.

ConvNeXt backbones: the feature cache holds the last stage only (`features.py` says why), so the last-4 variants
coincide with last-1 and the grid has two variants (with and without the average patch token); `n_blocks` is 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from .features import GlobalFeatures, align_classes, extract_global_features, labelled_sets, require_labels
from .metrics import top1_accuracy
from .significance import Scores, percent_of

LEARNING_RATES = tuple(m * 10.0**e for e in range(-5, -1) for m in (1, 2, 5)) + (0.1,)
VARIANTS = ((1, False), (1, True), (4, False), (4, True))  # (CLS of the last n blocks, + average patch token)


def holdout_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split of indices: `fraction` of each class (at least one image when the class has two or
    more) is held out; returns (kept, held_out)."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def linear_probe(
    train: GlobalFeatures,
    val: GlobalFeatures,
    epochs: int = 10,
    batch_size: int = 256,
    learning_rates: Sequence[float] = LEARNING_RATES,
    variants: Sequence[tuple[int, bool]] = VARIANTS,
    holdout: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> Scores:
    """Train the grid on `train` minus a held-out split, select on the split, report top-1 (percent) on `val`.

    Returns `top1`, `holdout_top1`, and the chosen `lr` (unscaled), `n_blocks` and `avgpool` (0/1); `.per_item`
    holds which validation image the chosen classifier got right."""
    require_labels(train, "training")
    require_labels(val, "validation")
    val = align_classes(train, val)
    n_classes = max(len(train.classes), int(train.labels.max()) + 1, int(val.labels.max()) + 1)
    variants = [(min(n, train.cls.shape[1]), pool) for n, pool in variants]
    variants = list(dict.fromkeys(variants))  # a shallow model may make last-4 equal last-1
    fit_idx, sel_idx = holdout_split(train.labels, holdout, seed)
    fit, sel = train.subset(fit_idx), train.subset(sel_idx)
    if len(sel) == 0:
        raise UserError("the training set is too small to hold out a validation split (two images per class)")

    # one weight tensor per variant holds the classifiers of every learning rate: [n_lr, dim, C]
    torch.manual_seed(seed)
    inputs = [fit.variant(n, pool) for n, pool in variants]  # [N, dim_v] each
    n_lr = len(learning_rates)
    weights = [(0.01 * torch.randn(n_lr, x.shape[1], n_classes)).requires_grad_() for x in inputs]
    biases = [torch.zeros(n_lr, 1, n_classes, requires_grad=True) for _ in inputs]
    params = weights + biases
    momenta = [torch.zeros_like(p) for p in params]
    lrs = torch.tensor(learning_rates).view(-1, 1, 1) * batch_size / 256  # the linear scaling rule
    total = epochs * -(-len(fit) // batch_size)
    g = torch.Generator().manual_seed(seed)
    step = 0
    for _ in tqdm(range(epochs), desc="linear probe", unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(fit), generator=g)
        for start in range(0, len(fit), batch_size):
            batch = order[start : start + batch_size]
            target = fit.labels[batch].repeat(n_lr)  # [n_lr·B]
            # the sum over classifiers of each one's mean cross-entropy: each gets its own gradient
            loss = sum(
                F.cross_entropy((torch.einsum("bd,ldc->lbc", x[batch], w) + b).flatten(0, 1), target) * n_lr
                for x, w, b in zip(inputs, weights, biases)
            )
            grads = torch.autograd.grad(loss, params)
            lr_now = lrs * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine decay to zero
            with torch.no_grad():
                for p, m, grad in zip(params, momenta, grads):  # SGD, momentum 0.9, no weight decay
                    m.mul_(0.9).add_(grad)
                    p.sub_(lr_now * m)
            step += 1

    @torch.no_grad()
    def predictions(features: GlobalFeatures) -> torch.Tensor:  # [n_variants · n_lr, B]
        out = []
        for (n, pool), w, b in zip(variants, weights, biases):
            out.append((torch.einsum("bd,ldc->lbc", features.variant(n, pool), w) + b).argmax(-1))  # [n_lr, B]
        return torch.cat(out)

    sel_acc = [top1_accuracy(p, sel.labels) for p in predictions(sel)]
    best = max(range(len(sel_acc)), key=lambda i: sel_acc[i])  # the first of equals: the smaller lr, fewer features
    n_blocks, pool = variants[best // n_lr]
    val_pred = predictions(val)[best]  # [B]
    metrics = {
        "top1": top1_accuracy(val_pred, val.labels),
        "holdout_top1": sel_acc[best],
        "lr": learning_rates[best % n_lr],
        "n_blocks": n_blocks,
        "avgpool": int(pool),
    }
    return Scores(metrics, {"top1": percent_of(val_pred == val.labels)})


def run_linear(model, train, val, size: int = 224, batch_size: int = 64, num_workers: int = 0, device=None, **kw):
    """The whole protocol from two labelled image folders (or lists): cache features once, then `linear_probe`."""
    common = dict(size=size, n_last_blocks=4, batch_size=batch_size, num_workers=num_workers, device=device)
    train, val = labelled_sets(train, val)  # a mismatch is found before the features are extracted
    train_f = extract_global_features(model, train, desc="linear train features", **common)
    val_f = extract_global_features(model, val, desc="linear val features", **common)
    return linear_probe(train_f, val_f, **kw)
