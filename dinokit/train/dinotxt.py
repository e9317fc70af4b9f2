"""Text alignment (dino.txt, DINOv3 paper §dino.txt): train a vision head and a text tower on image–caption pairs
over a frozen backbone (released `dinov3/eval/text/train_dinotxt.py`, `clip_loss.py`). `dinokit train
configs/dinotxt/tiny_cpu.yaml data.path=PAIRS dinotxt.backbone=SOURCE`; `loop.train` hands over here when the
configuration is a `DinoTxtRunConfig` (a `dinotxt` section).

What is trained: the vision head blocks (self-attention + SwiGLU + layer scale, drop path as released) with their
final LayerNorm, the whole text tower (from scratch, or from `dinotxt.init`: a released dino.txt file or a run's
`dinotxt.pth`, to fine-tune) and the logit scale. The backbone stays frozen in eval mode.

Loss (symmetric InfoNCE over the batch gathered from every rank, as released): with L2-normalised image and text
embeddings I, T `[N, E]` and s = exp(logit_scale), logits = s · I Tᵀ and
    L = ½ [ CE(logits, diag) + CE(logitsᵀ, diag) ].
The features are all-gathered with gradients (backward: the sum over ranks of the gradient, this rank's slice);
every rank computes the same global loss, and the parameter gradients are averaged over ranks (as DDP would), so
a step on W ranks equals a step on one process with the concatenated batch. After each step the logit scale is
clamped to [0, ln 100] (the release's trick from OpenCLIP). Optimiser: AdamW, no weight decay on parameters
with fewer than 2 dimensions, biases and the logit scale; LR linear warm-up from 0 then cosine to 0.

Initialisation from scratch (released `init_weights`): head linears truncated-normal 0.02 with zero biases, layer
scale 1e-5; text token embedding N(0, 0.02), positions N(0, 0.01), qkv N(0, w^-½), output projections
N(0, w^-½ (2·depth)^-½), first MLP layer N(0, (2w)^-½), text projection N(0, w^-½); logit scale log(1/0.07).

Data: `data/pairs.py`. Global batch b is a fixed slice of a per-epoch permutation (seeded by the run's seed and
the epoch; the last incomplete global batch of an epoch is dropped), each rank taking its part, so batch b is the
same on every world size and a resumed run reads exactly the batches it had not seen. Images: shorter side to
`data.image_size` (bicubic), centre crop, normalised; no augmentation.

Run folder: `config.yaml`, `metrics.jsonl`, `checkpoints/step_*.pt` (with digests; `model` holds the trained
weights in the released key layout, so `load_dinotxt` reads a checkpoint file too), and at the end `dinotxt.pth`
(the released layout: `visual_model.head.*`, `text_model.*`, `logit_scale`) and a copy of the vocabulary.
Load with `load_dinotxt(RUN/dinotxt.pth, backbone=SOURCE, vocab=RUN/<vocabulary>)`.

Deviations: no Gram loss on patch tokens (off in the released config), no memory-efficient ring loss (the
gathered N×N logits are formed at once), fp32 on CPU, no gradient clipping (none released).
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write, remove_stale_temporaries
from ..config import ConfigError, DinoTxtRunConfig, changed_keys, save_config, to_dict
from ..config.dinotxt import require_backbone
from ..data.pairs import PairList, open_pairs
from ..data.transforms import center_crop, normalize, resize, round_to_patch, to_float
from ..errors import UserError
from ..text import DinoTxt, Tokenizer, find_vocab, load_dinotxt
from ..text.checkpoint import BACKBONE
from ..text.text_transformer import TextBackbone, TextEncoder, TextHead
from ..text.vision_head import VisionHead, VisionTower
from . import distributed as D
from .checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from .logging import RunLog
from .run_lock import RunLock

log = logging.getLogger("dinokit.train")
REQUIRED = ("kind", "step", "model", "optimizer", "data", "rng", "world_size", "config")
MAX_LOGIT_SCALE = math.log(100)


# ----------------------------------------------------------------------------------------------------- loss
def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """½ [CE(s·I Tᵀ, diag) + CE(s·T Iᵀ, diag)], s = exp(logit_scale); `image`, `text`: `[N, E]`, L2-normalised."""
    logits = logit_scale.exp() * image @ text.T  # [N, N]
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' `[n, E]` → `[W·n, E]` in rank order; backward: this rank's slice of the gradient summed over
    ranks (every rank's loss reads every rank's features)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _GatherWithGrad.apply(x) if D.is_enabled() and dist.get_world_size() > 1 else x


def average_gradients(params: list[nn.Parameter]) -> None:
    """Mean of the gradients over ranks (one all-reduce of the flattened gradients)."""
    if not (D.is_enabled() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


# ---------------------------------------------------------------------------------------------------- model
def resolve_vocab(spec: str, data_path: str) -> Path:
    """The BPE vocabulary: `spec`, or (auto) `captions_vocab.txt` in data.path or up to 3 folders above, else
    CLIP's file from an installed open_clip / clip package."""
    from ..data.captions import VOCAB_FILE

    if spec != "auto":
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"dinotxt.vocab={spec}: no such file (a CLIP BPE vocabulary, gz or text)")
        return path
    start = Path(data_path).expanduser()
    folders = [start if start.is_dir() else start.parent, *start.resolve().parents][:4]
    for folder in folders:
        if (folder / VOCAB_FILE).is_file():
            return folder / VOCAB_FILE
    found = find_vocab()
    if found is None:
        raise UserError(f"no BPE vocabulary: none of {VOCAB_FILE} near data.path (`dinokit data synth --captions` "
                        "writes one) nor CLIP's (pip install open_clip_torch); pass dinotxt.vocab=PATH")  # fmt: skip
    return found


def _backbone(source: str, seed: int) -> nn.Module:
    from ..models.factory import backbone_from_spec

    try:
        backbone = backbone_from_spec(source, seed=seed)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"dinotxt.backbone={source}: {e}") from None
    if not hasattr(backbone, "forward_features"):
        raise UserError(f"dinotxt.backbone={source} is not a dinokit backbone")
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone.eval()


def _vision_heads(cfg: DinoTxtRunConfig, backbone: nn.Module) -> int:
    dim = backbone.embed_dim
    heads = cfg.dinotxt.vision_heads or getattr(backbone.config, "num_heads", None) or dim // 64
    if heads < 1 or dim % heads:
        raise ConfigError(f"the backbone's width {dim} is not divisible by the vision head's {heads} attention "
                          "heads (default: the backbone's; a ConvNeXt has none: width // 64); set "
                          "dinotxt.vision_heads")  # fmt: skip
    return heads


def build_model(cfg: DinoTxtRunConfig, tokenizer: Tokenizer) -> DinoTxt:
    """The model to train: the frozen backbone with a fresh (or `dinotxt.init`) head and text tower."""
    d = cfg.dinotxt
    backbone = _backbone(d.backbone, cfg.seed)
    heads = _vision_heads(cfg, backbone)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if d.init is not None:
        model = load_dinotxt(d.init, backbone=backbone, vision_heads=heads, patch_pool=d.patch_pool)
        if model.text_model.backbone.token_embedding.num_embeddings != tokenizer.vocab_size:
            raise UserError(f"dinotxt.init={d.init} has a vocabulary of "
                            f"{model.text_model.backbone.token_embedding.num_embeddings} tokens, the tokenizer "
                            f"{tokenizer.vocab_size}: pass the vocabulary it was trained with "
                            "(dinotxt.vocab)")  # fmt: skip
        if model.context_length != tokenizer.context_length:
            tokenizer.context_length = model.context_length
        log.info("fine-tuning %s (its sizes; dinotxt.text_* are not used)", d.init)
    else:
        dim = backbone.embed_dim
        hidden = -(-int(4 * dim * 2 / 3) // 64) * 64  # SwiGLUFFN(align_to=64), as released
        head = VisionHead(dim, heads, d.head_blocks, hidden, None, layer_scale=True, qkv_bias=False)
        w = d.text_width
        text = TextEncoder(
            TextBackbone(tokenizer.vocab_size, d.context_length, w, d.text_depth, w // 64, 4 * w, causal=True),
            TextHead(w, 2 * dim, w // 64, 0, 0, causal=True),
        )
        model = DinoTxt(VisionTower(backbone, head, d.patch_pool), text, tokenizer)
        init_weights(model, d.logit_scale_init)
    for block in model.visual_model.head.blocks:
        block.drop_path = d.head_drop_path
    model.tokenizer = tokenizer
    return model


def init_weights(model: DinoTxt, logit_scale: float) -> None:
    """The released initialisation (module docstring)."""
    head = model.visual_model.head
    for m in head.blocks.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()
        elif hasattr(m, "gamma"):
            nn.init.constant_(m.gamma, 1e-5)
    text = model.text_model.backbone
    w, depth = text.token_embedding.embedding_dim, len(text.blocks)
    nn.init.normal_(text.token_embedding.weight, std=0.02)
    nn.init.normal_(text.positional_embedding, std=0.01)
    attn_std, proj_std, fc_std = w**-0.5, w**-0.5 * (2 * depth) ** -0.5, (2 * w) ** -0.5
    for block in text.blocks:
        nn.init.normal_(block.attention.qkv.weight, std=attn_std)
        nn.init.normal_(block.attention.proj.weight, std=proj_std)
        nn.init.normal_(block.feed_forward.fc1.weight, std=fc_std)
        nn.init.normal_(block.feed_forward.fc2.weight, std=proj_std)
        for m in (block.attention.qkv, block.attention.proj, block.feed_forward.fc1, block.feed_forward.fc2):
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    proj = model.text_model.head.linear_projection
    if isinstance(proj, nn.Linear):
        nn.init.normal_(proj.weight, std=proj.in_features**-0.5)
    with torch.no_grad():
        model.logit_scale.fill_(logit_scale)


def trained_state(model: DinoTxt) -> dict[str, torch.Tensor]:
    """The trained weights in the released key layout (no backbone)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(BACKBONE)}


def trainable(model: DinoTxt) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if not n.startswith(BACKBONE)]


def build_optimizer(model: DinoTxt, cfg: DinoTxtRunConfig) -> torch.optim.AdamW:
    """AdamW with the released groups: no decay on gains, biases and the logit scale."""
    params = trainable(model)
    no_decay = [p for n, p in params if p.ndim < 2 or "bias" in n or "logit_scale" in n]
    decay = [p for n, p in params if not (p.ndim < 2 or "bias" in n or "logit_scale" in n)]
    o = cfg.optim
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": o.weight_decay}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


def learning_rate(step: int, cfg: DinoTxtRunConfig) -> float:
    """Linear warm-up from 0 over `warmup_steps`, then cosine from `lr` to 0 at `train.steps`."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * step / o.warmup_steps
    progress = (step - o.warmup_steps) / max(total - o.warmup_steps, 1)
    return 0.5 * o.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------------------------------- data
class PairBatches(torch.utils.data.Dataset):
    """Item k: this rank's part of global batch `start + k` → (images `[B, 3, S, S]`, token ids `[B, C]`)."""

    def __init__(self, pairs: PairList, tokenizer: Tokenizer, size: int, mean, std, batch_size: int, seed: int,
                 rank: int, world: int, start: int, steps: int):  # fmt: skip
        self.pairs, self.tokenizer, self.size, self.mean, self.std = pairs, tokenizer, size, mean, std
        self.batch_size, self.seed, self.rank, self.world, self.start, self.steps = (
            batch_size, seed, rank, world, start, steps)  # fmt: skip
        self.per_epoch = len(pairs) // (batch_size * world)
        if self.per_epoch == 0:
            raise UserError(f"{pairs.source} holds {len(pairs)} pairs, fewer than one global batch "
                            f"({batch_size} × {world} rank(s)): lower train.batch_size")  # fmt: skip

    def __len__(self) -> int:
        return self.steps - self.start

    def indices(self, b: int) -> list[int]:
        epoch, within = divmod(b, self.per_epoch)
        order = torch.randperm(len(self.pairs), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        first = within * self.batch_size * self.world + self.rank * self.batch_size
        return order[first : first + self.batch_size].tolist()

    def image(self, i: int) -> torch.Tensor:
        x = center_crop(resize(to_float(self.pairs.image(i)), self.size), self.size)
        return normalize(x, self.mean, self.std)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(self.start + k)
        images = torch.stack([self.image(i) for i in idx])  # [B, 3, S, S]
        return images, self.tokenizer([self.pairs.captions[i] for i in idx])  # [B, C]


def batches(data: PairBatches, num_workers: int):
    if num_workers == 0:
        return (data[k] for k in range(len(data)))
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator())  # fmt: skip
    return iter(loader)


# ----------------------------------------------------------------------------------------------------- step
def train_step(model: DinoTxt, optimizer, images, ids, lr: float) -> dict[str, torch.Tensor]:
    """One optimiser step on this rank's pairs (the loss contrasts the batch gathered over all ranks)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    image = gather_with_grad(F.normalize(model.encode_image(images), dim=-1))  # [N, E]
    text = gather_with_grad(F.normalize(model.encode_text(ids), dim=-1))  # [N, E]
    loss = clip_loss(image, text, model.logit_scale)
    if D.any_rank(~torch.isfinite(loss.detach())):
        raise UserError("the contrastive loss is not finite: lower optim.lr (the run stops; its last checkpoint "
                        "is intact)")  # fmt: skip
    loss.backward()
    average_gradients([p for _, p in trainable(model)])
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        hits = (image @ text.T).argmax(dim=1) == torch.arange(image.shape[0], device=image.device)
    return {"loss": loss.detach(), "logit_scale": model.logit_scale.detach().exp().reshape(()),
            "batch_top1": hits.float().mean()}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ run
def train_dinotxt(cfg: DinoTxtRunConfig, resume: bool = False) -> Path:
    """Train (or continue) a dino.txt alignment run; returns the run folder."""
    cfg.validate()
    require_backbone(cfg)
    info = D.init_distributed()
    with RunLock(Path(cfg.output_dir), enabled=info.is_main):
        return _run(cfg, resume, info)


def _run(cfg: DinoTxtRunConfig, resume: bool, info: D.DistInfo) -> Path:
    from .loop import _graceful_stop

    run = Path(cfg.output_dir)
    if info.is_main:
        remove_stale_temporaries(run)
        save_config(cfg, run / "config.yaml")
    pairs = open_pairs(cfg.data.path)  # bad data fails before any model is built
    vocab = resolve_vocab(cfg.dinotxt.vocab, cfg.data.path)
    tokenizer = Tokenizer(vocab, cfg.dinotxt.context_length)
    model = build_model(cfg, tokenizer).to(info.device)
    optimizer = build_optimizer(model, cfg)
    start = _restore(cfg, run, model, optimizer, info, resume)
    size = round_to_patch(cfg.data.image_size, getattr(model.visual_model.backbone, "patch_size", 16))
    data = PairBatches(pairs, model.tokenizer, size, cfg.data.mean, cfg.data.std, cfg.train.batch_size, cfg.seed,
                       info.rank, info.world_size, start, cfg.train.steps)  # fmt: skip
    n_trained = sum(p.numel() for _, p in trainable(model))
    if info.is_main:
        log.info("dino.txt: %d pairs, %s px, vocabulary %s (%d tokens), %.2f M trained parameters, global batch %d",
                 len(pairs), size, vocab, tokenizer.vocab_size, n_trained / 1e6,
                 cfg.train.batch_size * info.world_size)  # fmt: skip
    global_batch = cfg.train.batch_size * info.world_size
    runlog = RunLog(run, cfg.train.steps, start, global_batch, enabled=info.is_main, wandb=cfg.logging.wandb,
                    config=to_dict(cfg))  # fmt: skip
    model.train()
    model.visual_model.backbone.eval()
    with _graceful_stop() as stop, runlog:
        for step, (images, ids) in zip(range(start, cfg.train.steps), batches(data, cfg.data.num_workers)):
            lr = learning_rate(step, cfg)
            metrics = train_step(model, optimizer, images.to(info.device), ids.to(info.device), lr)
            done = step + 1
            runlog.step_done()
            if done % cfg.train.log_every == 0 or done == cfg.train.steps:
                runlog.write(done, {**D.mean_over_ranks(metrics), "lr": lr})
            stopping = D.any_rank(torch.tensor(stop.requested))
            if done == cfg.train.steps or stopping or (cfg.checkpoint.every and done % cfg.checkpoint.every == 0):
                _save(cfg, run, model, optimizer, info, done)
            if stopping:
                runlog.message(f"stopped at step {done}; run the same command again to resume")
                break
    if not stop.requested and info.is_main:
        export(model, run, vocab)
    D.barrier()
    if stop.requested:
        raise KeyboardInterrupt
    return run


def export(model: DinoTxt, run: Path, vocab: Path) -> Path:
    """`RUN/dinotxt.pth` (released layout) and the vocabulary beside it."""
    state = trained_state(model)
    path = atomic_write(run / "dinotxt.pth", lambda tmp: torch.save(state, tmp))
    shutil.copyfile(vocab, run / vocab.name)
    return path


def _save(cfg: DinoTxtRunConfig, run: Path, model: DinoTxt, optimizer, info: D.DistInfo, step: int) -> None:
    rngs = D.gather_objects(rng_state())
    if info.is_main:
        state = {"kind": "dinotxt", "step": step, "model": trained_state(model), "optimizer": optimizer.state_dict(),
                 "data": {"next_batch": step, "batch_size": cfg.train.batch_size}, "rng": rngs,
                 "world_size": info.world_size, "config": to_dict(cfg)}  # fmt: skip
        save_checkpoint(run / "checkpoints", step, state, cfg.checkpoint.keep)
    D.barrier()


def _restore(cfg, run: Path, model: DinoTxt, optimizer, info: D.DistInfo, resume: bool) -> int:
    """The first step: the newest checkpoint's, or 0 (then each rank seeds its training randomness)."""
    found = load_latest(run / "checkpoints", REQUIRED)
    if found is None:
        if resume:
            raise UserError(f"--resume: no checkpoint in {run / 'checkpoints'}")
        torch.manual_seed(cfg.seed + info.rank)  # drop path differs per rank
        return 0
    path, state = found
    changed = ", ".join(k for k in changed_keys(state["config"], cfg) if k != "output_dir")
    if state.get("kind") != "dinotxt":
        raise UserError(f"{path} is not a dino.txt training checkpoint: train into another output_dir")
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or any(not k.startswith(BACKBONE) for k in missing):
            raise RuntimeError(f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise UserError(f"{path} was written for another model than this configuration builds"
                        f"{f' (changed settings: {changed})' if changed else ''}: {str(e).splitlines()[0]}. Train "
                        "into another output_dir") from None  # fmt: skip
    if state["world_size"] == info.world_size and state["data"]["batch_size"] == cfg.train.batch_size:
        set_rng_state(state["rng"][info.rank])
    else:
        torch.manual_seed(cfg.seed + info.rank + 7919 * state["step"])
    if info.is_main:
        log.info("resuming from %s (step %d)%s", path, state["step"], f"; changed: {changed}" if changed else "")
    return state["step"]
