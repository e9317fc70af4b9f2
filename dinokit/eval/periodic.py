"""k-NN during training: the callback `dinokit train` runs every `eval.every` steps when `eval.knn.*` is set.

It extracts the teacher's last-block CLS for two labelled image sets and logs `knn/top1_k<k>` with the step's
losses. Only the main process evaluates (the others return nothing and wait at the next collective), and the
evaluation runs on a forked random state, so a run's weights are the same with or without it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..config import KnnEvalConfig
from ..errors import UserError
from .features import extract_global_features, labelled_sets
from .knn import knn_features


def knn_callback(cfg: KnnEvalConfig, device: torch.device):
    """`f(backbone, step) -> {"knn/top1_k10": …}` over `cfg.train` / `cfg.val`. The image lists are read
    now, so a missing or unlabelled folder is reported before training starts."""
    try:
        train_images, val_images = labelled_sets(cfg.train, cfg.val)
    except UserError as e:
        raise UserError(f"eval.knn.train={cfg.train}, eval.knn.val={cfg.val}: {e}") from None

    def evaluate(backbone: nn.Module, step: int) -> dict[str, float]:
        if dist.is_initialized() and dist.get_rank() != 0:
            return {}
        common = dict(size=cfg.size, n_last_blocks=1, batch_size=cfg.batch_size, device=device, progress=False)
        with torch.random.fork_rng(devices=[]):
            train = extract_global_features(backbone, train_images, **common)
            val = extract_global_features(backbone, val_images, **common)
        return {f"knn/{k}": v for k, v in knn_features(train, val, ks=cfg.ks).items()}

    return evaluate

