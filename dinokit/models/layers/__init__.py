"""Building blocks of the vision transformers: one concept per file."""

from .attention import Attention, MaskedKeyBiasLinear
from .block import Block
from .layer_scale import LayerScale
from .mlp import FFN_LAYERS, Mlp, SwiGLU, SwiGLUPacked
from .patch_embed import PatchEmbed
from .pos_embed import interpolate_pos_embed
from .rope import RopeEmbedding, apply_rope

__all__ = [
    "Attention",
    "MaskedKeyBiasLinear",
    "Block",
    "LayerScale",
    "FFN_LAYERS",
    "Mlp",
    "SwiGLU",
    "SwiGLUPacked",
    "PatchEmbed",
    "interpolate_pos_embed",
    "RopeEmbedding",
    "apply_rope",
]
