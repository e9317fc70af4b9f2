"""The dino.txt model: a vision tower (frozen backbone + head) and a text encoder aligned in one embedding space
(released `dinov3/eval/text/dinotxt_model.py::DINOTxt`).

`encode_image` → `[B, E]` = [head CLS ‖ pooled head patches]; `encode_patches` → `[B, h, w, E/2]`, the head patch
tokens, to compare with the patch half `encode_text(...)[:, E/2:]` (open-vocabulary segmentation, as in the
released notebook); `encode_text` → `[N, E]`; `logit_scale` is in log space as released (similarities are
multiplied by its exp). Parameter names are the released ones (`visual_model.*`, `text_model.*`, `logit_scale`);
the backbone's own weights are not part of the dino.txt file and stay under `visual_model.backbone`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .text_transformer import TextEncoder
from .tokenizer import Tokenizer
from .vision_head import VisionTower


class DinoTxt(nn.Module):
    def __init__(self, visual_model: VisionTower, text_model: TextEncoder, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.visual_model = visual_model
        self.text_model = text_model
        self.logit_scale = nn.Parameter(torch.zeros(1))  # log of the similarity temperature's inverse
        self.tokenizer = tokenizer

    @property
    def embed_dim(self) -> int:
        return (
            self.text_model.backbone.token_embedding.embedding_dim
            if isinstance(self.text_model.head.linear_projection, nn.Identity)
            else self.text_model.head.linear_projection.out_features
        )

    @property
    def context_length(self) -> int:
        return self.text_model.backbone.positional_embedding.shape[0]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Normalised images `[B, 3, H, W]` → `[B, E]` (L2-normalised if `normalize`)."""
        features, _, _ = self.visual_model(images)  # [B, E]
        return F.normalize(features, dim=-1) if normalize else features

    def encode_patches(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images → head patch tokens `[B, h, w, E/2]` (not normalised, as released)."""
        _, patches, (h, w) = self.visual_model(images)  # [B, h·w, E/2]
        return patches.reshape(patches.shape[0], h, w, patches.shape[-1])

    def encode_text(self, ids: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Token ids `[N, T]` (T ≤ context length, from `tokenize`) → `[N, E]`."""
        if ids.ndim != 2 or ids.shape[1] > self.context_length:
            raise UserError(f"token ids must be [N, T] with T ≤ {self.context_length}, got {list(ids.shape)}")
        features = self.text_model(ids)  # [N, E]
        return F.normalize(features, dim=-1) if normalize else features

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Texts → `[N, context_length]` ids with the vocabulary given to `load_dinotxt(vocab=...)`."""
        if self.tokenizer is None:
            raise UserError("this dino.txt model has no tokenizer: pass vocab=<path of bpe_simple_vocab_16e6.txt.gz> "
                            "to load_dinotxt")  # fmt: skip
        return self.tokenizer(texts).to(self.logit_scale.device)
