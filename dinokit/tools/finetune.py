"""Parameter-efficient fine-tuning: LoRA adapters on the backbone trained together with a classifier head.

When a frozen backbone's features are not enough (a domain far from the pretraining data), adapting the
attention with low-rank updates (`lora.add_lora`) costs a few hundred thousand trainable parameters instead of
the whole model. Unlike `heads.train_head_on_images`, features cannot be cached: every step runs the backbone
(forward and backward through the adapters), so this suits the few-shot sets it is meant for. Images are
decoded and preprocessed once and kept in memory; a batch with images of several sizes runs one forward per
size. The backbone stays in eval mode (no stochastic depth); only the adapters and the head learn.

ViTs only, as LoRA here adapts attention: a ConvNeXt is refused before any image is read (`lora.require_attention`).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..data.images import decode_image
from ..errors import UserError
from .extract import Preprocess
from .heads import (
    HeadConfig,
    best_f1_thresholds,
    create_head,
    f1_scores,
    head_loss,
    image_vector,
    predict,
    read_labels,
)
from .lora import add_lora, parameter_counts, require_attention


def _vectors(model, images: list[torch.Tensor], source: str) -> torch.Tensor:
    """Classifier inputs `[B, in_dim]` for preprocessed images of possibly different sizes (kept in order)."""
    out = [None] * len(images)
    by_shape: dict[tuple, list[int]] = {}
    for i, x in enumerate(images):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    for idx in by_shape.values():
        f = model.forward_features(torch.stack([images[i] for i in idx]))
        vec = image_vector({"cls": f.cls, "patches": f.patches.unflatten(1, f.grid)}, source)  # [b, in_dim]
        for j, i in enumerate(idx):
            out[i] = vec[j]
    return torch.stack(out)


def finetune_classifier(
    model, source: str, task: str = "single", kind: str = "linear", features: str = "cls", rank: int = 8,
    lora_targets: str = "qv", size: int | None = 224, epochs: int = 10, lr: float = 1e-3, batch_size: int = 8,
    backbone_name: str = "", seed: int = 0, progress: bool = True,
) -> tuple[torch.nn.Module, HeadConfig, dict]:  # fmt: skip
    """Attach LoRA adapters to `model` (in place) and train them with a head on labelled images (`source` as
    for `train_head_on_images`, single- or multi-label). Returns the head, its config and training metrics
    including the trainable parameter counts."""
    if task not in ("single", "multi"):
        raise UserError("LoRA fine-tuning trains classifiers (--task single or multi)")
    require_attention(model)  # before the images are decoded
    paths, classes, targets = read_labels(source, task)
    prep = Preprocess(model.patch_size, size)
    images = [prep(decode_image(p)) for p in tqdm(paths, desc="load images", disable=not progress)]
    torch.manual_seed(seed)
    add_lora(model, rank, targets=lora_targets)
    in_dim = model.embed_dim * (1 if features == "cls" else 2)
    meta = {"backbone": backbone_name, "size": size, "lora": {"rank": rank, "targets": lora_targets}}
    config = HeadConfig(kind, task, in_dim, list(classes), features, meta=meta)
    head = create_head(config)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * math.ceil(len(images) / batch_size), 1))
    model.eval()
    for _ in tqdm(range(epochs), desc=f"fine-tune LoRA r={rank} + {kind} head", unit="epoch", disable=not progress):
        for idx in torch.randperm(len(images)).split(batch_size):
            head.train()
            loss = head_loss(task, head(_vectors(model, [images[i] for i in idx], features)), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        x = _vectors(model, images, features)
    out = predict(head, config, x)
    lora_trainable, total = parameter_counts(model)
    metrics = {"trainable_lora": lora_trainable, "trainable_head": sum(p.numel() for p in head.parameters()),
               "backbone_total": total}  # fmt: skip
    if task == "multi":
        config.thresholds = best_f1_thresholds(out["probs"], targets)
        metrics["f1"] = dict(zip(classes, f1_scores(predict(head, config, x)["labels"], targets).tolist()))
    else:
        metrics["accuracy"] = float((out["labels"] == targets).float().mean())
    return head, config, metrics
