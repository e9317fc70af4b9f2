"""The DINOv2 / DINOv3 vision transformer: one implementation, configured by `ViTConfig`.

Forward (DINOv2, arXiv:2304.07193; DINOv3, arXiv:2508.10104), as the released code computes it:
1. patch embedding; iBOT-masked patches replaced by `mask_token`;
2. tokens `[cls, registers…, patches…]`; a learned position embedding (resized to the grid, see
   `layers/pos_embed.py`) is added to CLS and patches before the registers are inserted, or — DINOv3 — no
   additive embedding and RoPE inside every attention layer;
3. pre-norm blocks; 4. a final LayerNorm over all tokens (optionally an untied norm for CLS + registers, and,
   in training, a separate norm for the local crops' CLS + registers).

Deviations from the released code, none of which changes a number:
- `forward_features` returns a `BackboneOutput` (named attributes) rather than a dict; it also answers the dict's
  keys (`out["x_norm_patchtokens"]` …), so code written for the released models runs unchanged.
- Without masks, `cls_token + 0·mask_token` is used for both generations (the DINOv3 habit), so the mask
  token always takes part in the graph.
- In eval mode (or with no RoPE augmentation) the RoPE tables are computed once per forward rather than in
  every block; in training with augmentation they are recomputed per block, as released.
- `get_intermediate_layers` stops after the last requested block instead of running the whole depth.
- Without autograd, the resized learned position embedding is cached per grid (same values, computed once;
  not for weights created under `inference_mode`, which have no version counter to notice a change).
- DINOv2 inputs whose sides are not multiples of the patch size are rejected with a clear error (the released
  code fails an assertion); DINOv3 inputs of any size are accepted and cropped by the strided convolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .config import ViTConfig
from .layers import Block, PatchEmbed, RopeEmbedding, interpolate_pos_embed

# The dict the released `forward_features` returns, key → where BackboneOutput holds it. Both generations' names of
# the registers answer (DINOv2 `x_norm_regtokens`, DINOv3 `x_storage_tokens`), so ported code of either runs.
_RELEASED_KEYS = {
    "x_norm_clstoken": lambda out: out.cls,  # [B, D]
    "x_norm_regtokens": lambda out: out.registers,  # [B, R, D]
    "x_storage_tokens": lambda out: out.registers,  # [B, R, D]
    "x_norm_patchtokens": lambda out: out.patches,  # [B, h·w, D]
    # [B, 1 + R + h·w, D]; a ConvNeXt's released `x_prenorm` is its patches alone (its CLS is a pool, not a token)
    "x_prenorm": lambda out: out.prenorm[:, 1:] if out.pooled_cls else out.prenorm,
    "masks": lambda out: out.masks,  # None when no masks were given
}


@dataclass
class BackboneOutput:
    """Final-normed tokens of one forward. `patches` are row-major over `grid = (h, w)`.

    Code written for the released models can read it as the dict their `forward_features` returns:
    `out["x_norm_clstoken"]`, `out["x_norm_patchtokens"]`, `out["x_norm_regtokens"]` / `out["x_storage_tokens"]`,
    `out["x_prenorm"]`, `out["masks"]`, with `keys()`, `items()` and `in`. Under untied norms (DINOv3 `cls_norm`) the
    keys hold what the released code returns: CLS and registers through the CLS norm, patches through `norm`."""

    cls: torch.Tensor  # [B, D]
    registers: torch.Tensor  # [B, R, D]
    patches: torch.Tensor  # [B, h·w, D]
    prenorm: torch.Tensor  # [B, 1 + R + h·w, D]
    grid: tuple[int, int]
    masks: torch.Tensor | None = None  # [B, h·w] bool, as given
    pooled_cls: bool = False  # `cls` is the average pool of the patches (ConvNeXt), not a token of its own

    def patch_map(self) -> torch.Tensor:
        """Patches as a feature map `[B, D, h, w]`."""
        B, _, D = self.patches.shape
        return self.patches.transpose(1, 2).reshape(B, D, *self.grid)

    # ---------------------------------------------------------------------------- the released dict's keys
    def __getitem__(self, key: str) -> torch.Tensor | None:
        if key not in _RELEASED_KEYS:
            raise KeyError(
                f"{key!r} is not a key of the released forward_features output; its keys are {', '.join(self.keys())} "
                "(or read the attributes cls, registers, patches, prenorm, masks)"
            )
        return _RELEASED_KEYS[key](self)

    def __contains__(self, key: object) -> bool:
        return key in _RELEASED_KEYS

    def __iter__(self):
        return iter(_RELEASED_KEYS)

    def keys(self):
        return _RELEASED_KEYS.keys()

    def items(self) -> list[tuple[str, torch.Tensor | None]]:
        return [(key, self[key]) for key in _RELEASED_KEYS]


class VisionTransformer(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = c = config
        D = c.embed_dim
        self.embed_dim = self.num_features = D
        self.patch_size = c.patch_size
        self.num_registers = c.num_registers
        self.n_blocks = c.depth

        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_tokens = nn.Parameter(torch.zeros(1, c.num_registers, D)) if c.num_registers else None
        self.mask_token = nn.Parameter(torch.zeros(1, D))
        self._pos_cache = None
        if c.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.pos_grid**2, D))
            self.rope_embed = None
        else:
            self.pos_embed = None
            self.rope_embed = RopeEmbedding(
                c.head_dim,
                base=c.rope_base,
                min_period=c.rope_min_period,
                max_period=c.rope_max_period,
                normalize_coords=c.rope_normalize_coords,
                shift=c.rope_shift,
                jitter=c.rope_jitter,
                rescale=c.rope_rescale,
            )
        rates = [c.drop_path_rate] * c.depth
        if not c.drop_path_uniform and c.depth > 1:
            rates = [c.drop_path_rate * i / (c.depth - 1) for i in range(c.depth)]
        self.blocks = nn.ModuleList(
            Block(
                D,
                c.num_heads,
                ffn=c.ffn,
                ffn_hidden=c.ffn_hidden,
                qkv_bias=c.qkv_bias,
                proj_bias=c.proj_bias,
                ffn_bias=c.ffn_bias,
                mask_k_bias=c.mask_k_bias,
                layerscale_init=c.layerscale_init,
                drop_path=rate,
                norm_eps=c.norm_eps,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(D, eps=c.norm_eps)
        self.cls_norm = nn.LayerNorm(D, eps=c.norm_eps) if c.cls_norm else None
        self.local_cls_norm = nn.LayerNorm(D, eps=c.norm_eps) if c.local_cls_norm else None
        self.init_weights()

    # ----------------------------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """Random initialisation as in the released training code (truncated normal 0.02, zero biases)."""
        token_std = 1e-6 if self.config.generation == "dinov2" else 0.02
        nn.init.normal_(self.cls_token, std=token_std)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=token_std)
        nn.init.zeros_(self.mask_token)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters") and not isinstance(m, nn.Linear | VisionTransformer):
                m.reset_parameters()  # LayerNorm, LayerScale, Conv2d, RopeEmbedding

    def _apply(self, fn, recurse=True):
        # RoPE periods stay float32 whatever dtype the model is cast to (the released models keep them so).
        periods = None if self.rope_embed is None else self.rope_embed.periods
        super()._apply(fn, recurse)
        if periods is not None:
            self.rope_embed.periods = periods.to(self.rope_embed.periods.device, torch.float32)
        return self

    # ------------------------------------------------------------------------------------ training
    # The trainer's backbone protocol (`architectures.TrainableBackbone`).
    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise LR decay: 0 (embeddings), 1 … depth (blocks), depth + 1 (final norms)."""
        return len(self.blocks) + 2

    def layer_id(self, name: str) -> int:
        """The layer id of parameter `name`: 0 for the patch embedding, CLS / mask / position tokens and — as in
        DINOv3 — the register tokens (DINOv2 gave its registers the last id), i + 1 for block i, the last id for
        the rest."""
        first = ("pos_embed", "patch_embed", "mask_token", "cls_token")
        if name.startswith(first) or (name.startswith("register_tokens") and self.config.generation == "dinov3"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers - 1

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (the RNG state is preserved, so drop-path
        subsets agree between the two passes)."""
        for block in self.blocks:
            block.checkpointing = enabled

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.blocks)

    # ------------------------------------------------------------------------------------ tokens
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """Images `[B, C, H, W]` → tokens `[B, 1 + R + h·w, D]` and the grid (h, w)."""
        self._check_input(x)
        patches, grid = self.patch_embed(x)  # [B, h·w, D]
        B = patches.shape[0]
        if masks is not None:
            if masks.shape != patches.shape[:2]:
                raise ValueError(f"masks must be [B, h·w] = {list(patches.shape[:2])}, got {list(masks.shape)}")
            patches = torch.where(masks.unsqueeze(-1), self.mask_token.to(patches.dtype), patches)
            cls = self.cls_token
        else:
            cls = self.cls_token + 0 * self.mask_token  # [1, 1, D]; keeps mask_token in the graph
        tokens = torch.cat([cls.expand(B, -1, -1).to(patches.dtype), patches], dim=1)  # [B, 1 + h·w, D]
        if self.pos_embed is not None:
            tokens = tokens + self._resized_pos_embed(grid)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(B, -1, -1).to(tokens.dtype)  # [B, R, D]
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        return tokens, grid

    def _resized_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The position embedding for `grid`; without autograd, the resized copy is cached per grid and
        recomputed whenever the parameter changes (its version counter or storage). A parameter created under
        `torch.inference_mode()` has no version counter, so an in-place change could not be seen: it is resized
        at every call instead (a small interpolation beside the forward)."""
        pos = self.pos_embed
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling() or pos.is_inference():
            return interpolate_pos_embed(pos, grid, self.config.pos_interpolation)
        key = (grid, pos._version, pos.data_ptr(), pos.dtype, pos.device, torch.is_inference_mode_enabled())
        if self._pos_cache is None or self._pos_cache[0] != key:
            self._pos_cache = (key, interpolate_pos_embed(pos, grid, self.config.pos_interpolation))
        return self._pos_cache[1]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected images [B, {self.config.in_chans}, H, W], got {list(x.shape)}")
        H, W = x.shape[-2:]
        p = self.patch_size
        if H < p or W < p:
            raise ValueError(f"images of {H}×{W} px are smaller than one {p}×{p} patch")
        if self.pos_embed is not None and (H % p or W % p):
            raise ValueError(
                f"this model (learned position embedding, patch {p}) needs image sides that are multiples of "
                f"{p}; got {H}×{W}. Resize or crop to e.g. {H // p * p}×{W // p * p}."
            )

    def _rope(self, grid: tuple[int, int]):
        return None if self.rope_embed is None else self.rope_embed(*grid)

    def _run_blocks(self, tokens: torch.Tensor, grid: tuple[int, int], keep: Sequence[int] = ()):
        """Run the blocks; return the final tokens and the outputs of the blocks listed in `keep`."""
        per_block_rope = self.rope_embed is not None and self.rope_embed.augments
        rope = None if per_block_rope else self._rope(grid)
        kept = []
        last = max(keep) if keep else len(self.blocks) - 1
        for i, block in enumerate(self.blocks[: last + 1]):
            tokens = block(tokens, self._rope(grid) if per_block_rope else rope)
            if i in keep:
                kept.append(tokens)
        return tokens, kept

    def _final_norm(self, tokens: torch.Tensor, local_crops: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Normed (CLS + registers) `[B, 1 + R, D]` and normed patches `[B, h·w, D]`."""
        n_prefix = 1 + self.num_registers
        if self.cls_norm is None and not (local_crops and self.local_cls_norm is not None and self.training):
            normed = self.norm(tokens)
            return normed[:, :n_prefix], normed[:, n_prefix:]
        if local_crops and self.local_cls_norm is not None and self.training:
            prefix_norm = self.local_cls_norm
        else:
            prefix_norm = self.cls_norm if self.cls_norm is not None else self.norm
        return prefix_norm(tokens[:, :n_prefix]), self.norm(tokens[:, n_prefix:])

    # ----------------------------------------------------------------------------------- forward
    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, local_crops: bool = False
    ) -> BackboneOutput:
        """Images `[B, C, H, W]` (normalised) → `BackboneOutput`. `masks [B, h·w]` bool, True = masked.

        `local_crops=True` marks a batch of local crops in training, for models with `local_cls_norm`."""
        tokens, grid = self.prepare_tokens(x, masks)
        return self.forward_tokens(tokens, grid, local_crops, masks)

    def forward_tokens(
        self, tokens: torch.Tensor, grid: tuple[int, int], local_crops: bool = False, masks: torch.Tensor | None = None
    ) -> BackboneOutput:
        """The blocks and final norms on prepared tokens `[B, 1 + R + h·w, D]` (see `prepare_tokens`); for
        callers that build the tokens themselves, e.g. an export with its own position-embedding resize."""
        tokens, _ = self._run_blocks(tokens, grid)
        prefix, patches = self._final_norm(tokens, local_crops)
        return BackboneOutput(
            cls=prefix[:, 0], registers=prefix[:, 1:], patches=patches, prenorm=tokens, grid=grid, masks=masks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images → normed CLS token `[B, D]`."""
        return self.forward_features(x).cls

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        return_extra_tokens: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of several blocks, with the released semantics.

        `n` int: the last n blocks; a sequence: 0-based block indices, returned in depth order as released.
        `norm` applies the final norm. Each
        entry is the patch tokens `[B, h·w, D]` (or `[B, D, h, w]` with `reshape`), or a tuple
        `(patches, cls [B, D])`, `(patches, registers [B, R, D])` or `(patches, cls, registers)` when
        `return_class_token` / `return_extra_tokens` are set."""
        depth = len(self.blocks)
        requested = list(range(depth - n, depth)) if isinstance(n, int) else [int(i) for i in n]
        indices = sorted(set(requested))  # the released code returns blocks in depth order
        if not indices or len(indices) != len(requested) or indices[0] < 0 or indices[-1] >= depth:
            raise ValueError(f"block indices must be distinct and lie in [0, {depth}), got {n!r}")
        tokens, grid = self.prepare_tokens(x)
        _, kept = self._run_blocks(tokens, grid, keep=indices)
        outputs = []
        n_prefix = 1 + self.num_registers
        for out in kept:
            if norm:
                prefix, patches = self._final_norm(out)
            else:
                prefix, patches = out[:, :n_prefix], out[:, n_prefix:]
            if reshape:
                patches = patches.reshape(x.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous()
            parts = (patches,)
            if return_class_token:
                parts += (prefix[:, 0],)
            if return_extra_tokens:
                parts += (prefix[:, 1:],)
            outputs.append(parts if len(parts) > 1 else patches)
        return tuple(outputs)
