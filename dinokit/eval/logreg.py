"""Multinomial logistic regression on frozen CLS features with an L2 penalty (DINOv2 §7, "logistic regression").

For each C of the grid `10^linspace(−6, 5, 45)` the objective is, as in scikit-learn's multinomial
`LogisticRegression(C)`,

    min_{W, b}  C · Σ_i CE(W x_i + b, y_i) + ½ ‖W‖²        (the bias is not penalised)

solved in float64 with torch's L-BFGS (strong-Wolfe line search), each C warm-started from the previous one
(ascending C traces the regularisation path), at most 100 iterations per fit (scikit-learn's default). C is
chosen on a validation split held out from the training images (stratified, 10 % by default); the classifier is
then refitted on all training images with that C and its top-1 on the evaluation images is reported. No
scikit-learn needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import UserError
from .features import GlobalFeatures, align_classes, extract_global_features, labelled_sets, require_labels
from .linear import holdout_split
from .metrics import top1_accuracy

C_GRID = tuple(10.0**e for e in torch.linspace(-6, 5, 45, dtype=torch.float64).tolist())


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    C: float,
    num_classes: int,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise `C·Σ CE + ½‖W‖²` over `W [D, K]`, `b [K]` for features `x [N, D]` (float64) → (W, b)."""
    x = x.double()
    n, d = x.shape
    w = torch.zeros(d, num_classes, dtype=torch.float64) if init is None else init[0].clone()
    b = torch.zeros(num_classes, dtype=torch.float64) if init is None else init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    # divided by C·N: the same minimiser, with a loss of order one for the optimiser's tolerances
    reg = 1.0 / (2.0 * C * n)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + reg * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def logreg_eval(
    train: GlobalFeatures,
    val: GlobalFeatures,
    c_grid: Sequence[float] = C_GRID,
    holdout: float = 0.1,
    seed: int = 0,
    max_iter: int = 100,
    progress: bool = True,
) -> dict[str, float]:
    """Select C on a held-out split of `train`, refit on all of `train`, report top-1 (percent) on `val`.

    Returns `top1`, `holdout_top1` and the chosen `C`."""
    require_labels(train, "training")
    require_labels(val, "validation")
    val = align_classes(train, val)
    n_classes = max(len(train.classes), int(train.labels.max()) + 1, int(val.labels.max()) + 1)
    x, y = train.last_cls.double(), train.labels
    fit_idx, sel_idx = holdout_split(y, holdout, seed)
    if len(sel_idx) == 0:
        raise UserError("the training set is too small to hold out a validation split (two images per class)")

    def accuracy(params, features, labels) -> float:
        return top1_accuracy((features.double() @ params[0] + params[1]).argmax(1), labels)

    params, scores = None, []
    for C in tqdm(sorted(c_grid), desc="logistic regression C grid", disable=not progress, leave=False):
        params = fit_logreg(x[fit_idx], y[fit_idx], C, n_classes, init=params, max_iter=max_iter)
        scores.append((accuracy(params, x[sel_idx], y[sel_idx]), -C, params))  # ties: the smaller C
    best_acc, neg_c, best_params = max(scores, key=lambda s: s[:2])
    final = fit_logreg(x, y, -neg_c, n_classes, init=best_params, max_iter=max_iter)
    return {"top1": accuracy(final, val.last_cls, val.labels), "holdout_top1": best_acc, "C": -neg_c}


def run_logreg(model, train, val, size: int = 224, batch_size: int = 64, num_workers: int = 0, device=None, **kw):
    """The whole protocol from two labelled image folders (or lists)."""
    common = dict(size=size, n_last_blocks=1, batch_size=batch_size, num_workers=num_workers, device=device)
    train, val = labelled_sets(train, val)  # a mismatch is found before the features are extracted
    train_f = extract_global_features(model, train, desc="logreg train features", **common)
    val_f = extract_global_features(model, val, desc="logreg val features", **common)
    return logreg_eval(train_f, val_f, **kw)
