"""Shared by the dino.txt tests: a stub backbone that replays fixed tokens, and access to the released source.

The released modules (`dinov3/eval/text/*`, `dinov3/layers/*`) import with torch alone; point `DINOV3_SRC` at a
checkout of facebookresearch/dinov3 (the folder holding `dinov3/`) to run them. `python -m tests.text.release`
rewrites the golden file from the released code."""

from __future__ import annotations

import importlib
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dinokit.models.vit import BackboneOutput

from .helpers import CONTEXT, DEPTH, DIM, VOCAB, WIDTH, released_layout, token_ids

GOLDEN = Path(__file__).with_name("golden_dinotxt.pt")
N_REG, GRID = 4, (3, 4)


class ReplayBackbone(nn.Module):
    """Returns fixed normed tokens, both as dinokit's `forward_features` and as the released
    `get_intermediate_layers(n=1, return_class_token=True, return_extra_tokens=True)`."""

    def __init__(self, tokens: torch.Tensor):
        super().__init__()
        self.tokens = tokens  # [B, 1 + R + h·w, D]
        self.embed_dim, self.num_heads, self.n_storage_tokens = tokens.shape[-1], DIM // 64, N_REG
        self.config = type("Config", (), {"num_heads": DIM // 64})()

    def forward_features(self, images):
        t = self.tokens
        return BackboneOutput(cls=t[:, 0], registers=t[:, 1 : 1 + N_REG], patches=t[:, 1 + N_REG :], prenorm=t,
                              grid=GRID)  # fmt: skip

    def get_intermediate_layers(self, images, n=1, return_class_token=False, return_extra_tokens=False, norm=True):
        assert n == 1 and return_class_token and return_extra_tokens and norm
        t = self.tokens
        return ((t[:, 1 + N_REG :], t[:, 0], t[:, 1 : 1 + N_REG]),)


def backbone_tokens(seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1 + N_REG + GRID[0] * GRID[1], DIM, generator=g)  # [B, 1 + R + h·w, D]


def release_source():
    """The released package's root, or skip."""
    src = os.environ.get("DINOV3_SRC")
    if not src or not (Path(src) / "dinov3").is_dir():
        pytest.skip("set DINOV3_SRC to a facebookresearch/dinov3 checkout to compare with the released code")
    if src not in sys.path:
        sys.path.insert(0, src)
    return src


def released_model(sd: dict, backbone: nn.Module):
    """The released DINOTxt built as `hub/dinotxt.py` builds it, at the test sizes, loaded as released."""
    release_source()
    DINOTxt = importlib.import_module("dinov3.eval.text.dinotxt_model").DINOTxt
    DINOTxtConfig = importlib.import_module("dinov3.eval.text.dinotxt_model").DINOTxtConfig
    TextTransformer = importlib.import_module("dinov3.eval.text.text_transformer").TextTransformer
    config = DINOTxtConfig(
        embed_dim=2 * DIM, vision_model_freeze_backbone=True, vision_model_use_class_token=True,
        vision_model_use_patch_tokens=True, vision_model_num_head_blocks=2, vision_model_head_blocks_drop_path=0.3,
        vision_model_use_linear_projection=False, vision_model_patch_tokens_pooler_type="mean",
        vision_model_patch_token_layer=1, text_model_freeze_backbone=False, text_model_num_head_blocks=0,
        text_model_head_blocks_is_causal=False, text_model_tokens_pooler_type="argmax",
        text_model_use_linear_projection=True, init_logit_scale=math.log(1 / 0.07),
    )  # fmt: skip
    text = TextTransformer(
        context_length=CONTEXT, vocab_size=VOCAB, dim=WIDTH, num_heads=WIDTH // 64, num_layers=DEPTH, ffn_ratio=4,
        is_causal=True, ls_init_value=None, dropout_prob=0.0,
    )  # fmt: skip
    model = DINOTxt(model_config=config, vision_backbone=backbone, text_backbone=text)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # the test layout is the released one: nothing unused, nothing left but the backbone's own weights
    assert not unexpected and all(k.startswith("visual_model.backbone.") for k in missing), (missing, unexpected)
    return model.eval()


@torch.no_grad()
def write_golden() -> None:
    tokens, ids = backbone_tokens(), token_ids()
    model = released_model(released_layout(), ReplayBackbone(tokens))
    image, patches, _ = model.encode_image_with_patch_tokens(torch.zeros(2, 3, 48, 64))
    golden = {"backbone_tokens": tokens, "ids": ids, "image": image, "patches": patches,
              "text": model.encode_text(ids), "logit_scale": model.logit_scale.detach().clone()}  # fmt: skip
    torch.save(golden, GOLDEN)
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    write_golden()
