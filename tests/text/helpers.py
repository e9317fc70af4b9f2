"""A random dino.txt state dict in the released key layout, written out key by key from the released modules
(`dinov3/eval/text/{text_transformer,text_tower,vision_tower,dinotxt_model}.py`), independently of dinokit.text."""

from __future__ import annotations

import torch

BACKBONE = "random:dinov3_test"  # width 128, 2 heads, 4 registers
VOCAB, CONTEXT, WIDTH, DEPTH, DIM = 300, 77, 64, 2, 128
SWIGLU_HIDDEN = 384  # int(4·128·2/3) = 341 rounded up to a multiple of 64, as SwiGLUFFN(align_to=64)


def released_layout(width=WIDTH, depth=DEPTH, vocab=VOCAB, context=CONTEXT, dim=DIM, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    sd = {"logit_scale": torch.tensor([2.6592]),
          "text_model.backbone.token_embedding.weight": r(vocab, width, scale=0.5),
          "text_model.backbone.positional_embedding": r(context, width, scale=0.2)}  # fmt: skip
    for i in range(depth):
        p = f"text_model.backbone.blocks.{i}."
        sd |= {p + "attention_norm.weight": r(width, scale=0.1, offset=1), p + "attention_norm.bias": r(width),
               p + "attention.qkv.weight": r(3 * width, width, scale=0.15),
               p + "attention.proj.weight": r(width, width),
               p + "attention.proj.bias": r(width), p + "ffn_norm.weight": r(width, scale=0.1, offset=1),
               p + "ffn_norm.bias": r(width), p + "feed_forward.fc1.weight": r(4 * width, width, scale=0.1),
               p + "feed_forward.fc1.bias": r(4 * width), p + "feed_forward.fc2.weight": r(width, 4 * width),
               p + "feed_forward.fc2.bias": r(width)}  # fmt: skip
    sd |= {"text_model.backbone.ln_final.weight": r(width, scale=0.1, offset=1),
           "text_model.backbone.ln_final.bias": r(width),
           "text_model.head.linear_projection.weight": r(2 * dim, width, scale=0.2)}  # fmt: skip
    for i in range(2):
        p = f"visual_model.head.blocks.{i}."
        sd |= {p + "norm1.weight": r(dim, scale=0.1, offset=1), p + "norm1.bias": r(dim),
               p + "attn.qkv.weight": r(3 * dim, dim, scale=0.1), p + "attn.proj.weight": r(dim, dim),
               p + "attn.proj.bias": r(dim), p + "ls1.gamma": r(dim, scale=0.3, offset=0.5),
               p + "norm2.weight": r(dim, scale=0.1, offset=1), p + "norm2.bias": r(dim),
               p + "mlp.w1.weight": r(SWIGLU_HIDDEN, dim, scale=0.1), p + "mlp.w1.bias": r(SWIGLU_HIDDEN),
               p + "mlp.w2.weight": r(SWIGLU_HIDDEN, dim, scale=0.1), p + "mlp.w2.bias": r(SWIGLU_HIDDEN),
               p + "mlp.w3.weight": r(dim, SWIGLU_HIDDEN), p + "mlp.w3.bias": r(dim),
               p + "ls2.gamma": r(dim, scale=0.3, offset=0.5)}  # fmt: skip
    sd |= {"visual_model.head.ln_final.weight": r(dim, scale=0.1, offset=1),
           "visual_model.head.ln_final.bias": r(dim)}  # fmt: skip
    return sd


def token_ids(n=3, length=CONTEXT, vocab=VOCAB, seed=1) -> torch.Tensor:
    """Rows like the tokenizer's: start, words, end (the largest id), zero padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, length, dtype=torch.long)
    for i, k in enumerate([5, 11, length - 2][:n]):
        ids[i, 0] = vocab - 2
        ids[i, 1 : k + 1] = torch.randint(1, vocab - 2, (k,), generator=g)
        ids[i, k + 1] = vocab - 1
    return ids
