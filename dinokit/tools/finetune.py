"""Parameter-efficient fine-tuning: LoRA adapters on the backbone trained together with a classifier head.

When a frozen backbone's features are not enough (a domain far from the pretraining data), adapting the
attention with low-rank updates (`lora.add_lora`) costs a few hundred thousand trainable parameters instead of
the whole model. Unlike `heads.train_head_on_images`, features cannot be cached: every step runs the backbone
(forward and backward through the adapters), so this suits the few-shot sets it is meant for. Images are
decoded and preprocessed once and kept in memory; a batch with images of several sizes runs one forward per
size. The backbone stays in eval mode (no stochastic depth); only the adapters and the head learn. Validation
images (`val`, `val_fraction`) and multi-label thresholds follow `heads.train_head_on_images`.

ViTs only, as LoRA here adapts attention: a ConvNeXt is refused before any image is read (`lora.require_attention`).
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from ..data.images import decode_image
from ..data.transforms import model_mean_std
from ..errors import UserError
from .compute import autocast, chunks, place, same_shape_groups
from .extract import Preprocess
from .heads import HeadConfig, create_head, head_loss, image_vector, tune_and_score, validation_split
from .lora import add_lora, parameter_counts, require_attention


def _vectors(model, images: list[torch.Tensor], source: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Classifier inputs `[B, in_dim]` (float32, on `device`) for preprocessed images of possibly different
    sizes (one forward per size, kept in order)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(images)
    for idx in same_shape_groups(images):
        with autocast(device, dtype):
            f = model.forward_features(torch.stack([images[i] for i in idx]).to(device))
        vec = image_vector({"cls": f.cls, "patches": f.patches.unflatten(1, f.grid)}, source)  # [b, in_dim]
        for j, i in enumerate(idx):
            out[i] = vec[j]
    return torch.stack(out)


def finetune_classifier(
    model, source: str, task: str = "single", kind: str = "linear", features: str = "cls", rank: int = 8,
    lora_targets: str = "qv", size: int | None = 224, epochs: int = 10, lr: float = 1e-3, batch_size: int = 8,
    backbone_name: str = "", seed: int = 0, progress: bool = True, *, val: str | None = None,
    val_fraction: float = 0.0, device: str | torch.device | None = None, dtype: str = "fp32",
) -> tuple[torch.nn.Module, HeadConfig, dict]:  # fmt: skip
    """Attach LoRA adapters to `model` (in place) and train them with a head on labelled images (`source`, `val`
    and `val_fraction` as for `train_head_on_images`, single- or multi-label). The backbone runs on `device`
    (default: CUDA when available; the model stays there) in `dtype` autocast (fp16 with a gradient scaler),
    `batch_size` images per step. Returns the head (on the CPU), its config and the metrics
    `{"training": …, "validation": …}` with the trainable parameter counts."""
    if task not in ("single", "multi"):
        raise UserError("LoRA fine-tuning trains classifiers (--task single or multi)")
    require_attention(model)  # before the images are decoded
    classes, (paths, targets), held = validation_split(source, task, val, val_fraction, seed)
    device, compute = place(model, device, dtype)
    prep = Preprocess(model.patch_size, size, *model_mean_std(model))

    def load(split: list[str], what: str) -> list[torch.Tensor]:
        return [prep(decode_image(p)) for p in tqdm(split, desc=f"load {what} images", disable=not progress)]

    images = load(paths, "training")
    val_images = None if held is None else load(held[0], "validation")  # before training: fail early
    torch.manual_seed(seed)
    add_lora(model, rank, targets=lora_targets)  # on the model's device
    in_dim = model.embed_dim * (1 if features == "cls" else 2)
    meta = {"backbone": backbone_name, "size": size, "lora": {"rank": rank, "targets": lora_targets}}
    config = HeadConfig(kind, task, in_dim, list(classes), features, meta=meta)
    head = create_head(config).to(device)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * math.ceil(len(images) / batch_size), 1))
    scaler = torch.amp.GradScaler(device.type, enabled=compute == torch.float16)  # fp16 gradients underflow
    model.eval()
    for _ in tqdm(range(epochs), desc=f"fine-tune LoRA r={rank} + {kind} head", unit="epoch", disable=not progress):
        for idx in torch.randperm(len(images)).split(batch_size):
            head.train()
            x = _vectors(model, [images[i] for i in idx], features, device, compute)
            loss = head_loss(task, head(x), targets[idx].to(device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
    head = head.cpu().eval()

    @torch.no_grad()
    def vectors(split: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([_vectors(model, part, features, device, compute).cpu() for part in chunks(split, batch_size)])

    validation = None if held is None else (vectors(val_images), held[1])
    metrics = tune_and_score(head, config, (vectors(images), targets), validation)
    lora_trainable, total = parameter_counts(model)
    counts = {"trainable_lora": lora_trainable, "trainable_head": sum(p.numel() for p in head.parameters()),
              "backbone_total": total}  # fmt: skip
    return head, config, {**metrics, **counts}
