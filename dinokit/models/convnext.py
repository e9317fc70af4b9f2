"""DINOv3's ConvNeXt students (arXiv:2508.10104, the distilled ConvNeXt-T/S/B/L): config, sizes and module.

ConvNeXt (Liu et al., arXiv:2201.03545) as the DINOv3 release builds it (`dinov3/models/convnext.py`):
- stem: 4×4 stride-4 conv, then a channels-first LayerNorm; stages 1–3 open with a channels-first LayerNorm and a
  2×2 stride-2 conv. The last map therefore has stride 32: an H×W input gives a ⌊H/32⌋×⌊W/32⌋ grid (the floor
  chain ⌊⌊⌊⌊H/4⌋/2⌋/2⌋/2⌋ equals ⌊H/32⌋), which is why `patch_size` is 32;
- block: 7×7 depthwise conv → LayerNorm → Linear(C, 4C) → exact GELU → Linear(4C, C) → ×γ (LayerScale, init
  1e-6) → per-sample drop path, added to the input. Drop-path rates rise linearly over all blocks,
  `linspace(0, rate, Σ depths)`;
- output: the global average pool of the last map plays the CLS token; one LayerNorm over [pooled, patches].
  All norms use eps 1e-6. No registers, no mask token, no position embedding.

Parameter names are the released ones (`downsample_layers.{i}.{k}`, `stages.{s}.{j}.{dwconv,norm,pwconv1,
pwconv2,gamma}`, `norm`) without the duplicate `norms.3.*` the released module registers (its list `norms` is
three Identities and the final norm again): `weights.py` drops that copy on reading and writes it back for the
released layout. The released hub constructors build the models with `patch_size=None`, so
`get_intermediate_layers` resizes nothing unless `pseudo_patch_size` is set (the released training code passes
the student's `patch_size`, e.g. 16, to make its maps look like a ViT's grid).

Deviations from the released code, none of which changes a number:
- `forward_features` returns a `BackboneOutput`. Its `prenorm` is `[pooled, patches]` before the norm,
  `[B, 1 + h·w, D]`; the released dict's `x_prenorm` is the patch part alone, `prenorm[:, 1:]` (what
  `out["x_prenorm"]` returns).
- iBOT masks are refused unless all False (the released code ignores them silently): a ConvNeXt has no mask
  token, and it is trained only as a distillation student, which sees unmasked crops.
- `get_intermediate_layers` with a list returns the stages in depth order, each with its own norm (the released
  code pairs the norms with the list's order, which fails on a shape mismatch for an unsorted list), and stops
  after the last requested stage. `return_extra_tokens` (dinokit's ViT API) returns empty registers.
- Inputs smaller than 32 px are refused (the released code returns NaN, the mean of an empty map).
- Layer ids for layer-wise LR decay: the released parameter groups look for `blocks.` in the names, find none in
  a ConvNeXt and give every parameter the last id, i.e. no decay (its ConvNeXt configs set `layerwise_decay:
  1.0` anyway). dinokit numbers the layers (see `layer_id`) so that a decay other than 1 means something.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .config import GENERATIONS
from .vit import BackboneOutput

N_STAGES = 4
STRIDE = 32  # stem 4 × three downsamplings by 2


# ------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ConvNeXtConfig:
    """Every architectural choice of a DINOv3 ConvNeXt, as data (sizes in `CONVNEXT_PRESETS`)."""

    kind = "convnext"  # class attribute, not a field: tells configs of different backbone kinds apart

    generation: str = "dinov3"  # checkpoint naming, licence, preprocessing (the released ConvNeXts are DINOv3)
    in_chans: int = 3
    depths: tuple[int, ...] = (3, 3, 9, 3)  # blocks per stage; lists (YAML, JSON) are stored as tuples
    dims: tuple[int, ...] = (96, 192, 384, 768)  # channels per stage; the last is the embedding width
    drop_path_rate: float = 0.0  # the last block's rate; linearly from 0 over all blocks
    layerscale_init: float | None = 1e-6  # None or 0: no γ (as the released code does for 0)
    norm_eps: float = 1e-6
    pseudo_patch_size: int | None = None  # get_intermediate_layers: resize maps to (H//p, W//p); None: no resize
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form notes (e.g. source)

    def __post_init__(self) -> None:
        problems = []
        for name in ("depths", "dims"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, Sequence):
                problems.append(f"{name} must be a list of {N_STAGES} integers, got {value!r}")
                continue
            object.__setattr__(self, name, tuple(value))  # frozen: lists from YAML / JSON become tuples
            if len(value) != N_STAGES or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                problems.append(f"{name} must be a list of {N_STAGES} integers, got {list(value)}")
        if not problems:
            if min(self.depths) < 0 or min(self.dims) < 1:
                problems.append(f"depths must be >= 0 and dims >= 1, got {list(self.depths)} / {list(self.dims)}")
        if self.generation not in GENERATIONS:
            problems.append(f"generation must be one of {GENERATIONS}, got {self.generation!r}")
        if self.in_chans < 1:
            problems.append(f"in_chans must be positive, got {self.in_chans}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            problems.append(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.layerscale_init is not None and self.layerscale_init < 0:
            problems.append(f"layerscale_init must be None or >= 0, got {self.layerscale_init}")
        if self.norm_eps <= 0:
            problems.append(f"norm_eps must be positive, got {self.norm_eps}")
        if self.pseudo_patch_size is not None and self.pseudo_patch_size < 1:
            problems.append(f"pseudo_patch_size must be None or positive, got {self.pseudo_patch_size}")
        if problems:
            raise ConfigError("invalid ConvNeXt backbone config: " + "; ".join(problems))

    # What code written for ViT configs reads, with its ConvNeXt meaning.
    @property
    def embed_dim(self) -> int:
        return self.dims[-1]

    @property
    def patch_size(self) -> int:
        """The stride of the output tokens (not `pseudo_patch_size`)."""
        return STRIDE

    @property
    def num_registers(self) -> int:
        return 0

    @property
    def has_layerscale(self) -> bool:
        return bool(self.layerscale_init)  # None and 0 both mean no γ

    def replace(self, **overrides: Any) -> ConvNeXtConfig:
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"unknown backbone option(s) {unknown}; valid options: {sorted(self.to_dict())}")
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d | {"depths": list(self.depths), "dims": list(self.dims)}  # plain JSON / YAML lists

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvNeXtConfig:
        return cls().replace(**d)


# ------------------------------------------------------------------------------------------------ presets
CONVNEXT_PRESETS: dict[str, dict[str, Any]] = {
    # the released sizes (`convnext_sizes` of the DINOv3 code; the hub builds them with drop path 0, γ 1e-6)
    "dinov3_convnext_tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "dinov3_convnext_small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "dinov3_convnext_base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "dinov3_convnext_large": dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    # unit tests (not released): milliseconds per forward
    "dinov3_convnext_test": dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128)),
}
CONVNEXT_RELEASED = [name for name in CONVNEXT_PRESETS if not name.endswith("_test")]


def match_convnext_preset(config: ConvNeXtConfig) -> str | None:
    """The released preset with exactly this architecture, ignoring training-only options and the value of γ's
    initialisation (released files hold trained γs; only whether there is one matters)."""

    def canonical(c: ConvNeXtConfig) -> ConvNeXtConfig:
        gamma = 1e-6 if c.has_layerscale else None
        return c.replace(drop_path_rate=0.0, pseudo_patch_size=None, extra={}, layerscale_init=gamma)

    probe = canonical(config)
    return next((n for n in CONVNEXT_RELEASED if canonical(ConvNeXtConfig(**CONVNEXT_PRESETS[n])) == probe), None)


# ------------------------------------------------------------------------------------------------- layers
class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channels of a `[B, C, H, W]` map, computed as the released code does (mean, biased
    variance, division by sqrt(var + eps)) rather than by permuting to channels-last."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).mean(dim=1, keepdim=True)  # [B, 1, H, W]
        return self.weight[:, None, None] * (centred / torch.sqrt(var + self.eps)) + self.bias[:, None, None]


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Per-sample stochastic depth: zero a sample's branch with probability `rate`, scale survivors by
    1/(1 − rate). One uniform draw per sample, `floor(keep + U)`, as released (same draws under the same seed)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    u = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)  # [B, 1, 1, 1]
    return x.div(keep) * (u + keep).floor_()


class ConvNeXtBlock(nn.Module):
    """`x + drop_path(γ · Linear(GELU(Linear(LN(dwconv7×7(x))))))`, channels-last between the convolutions."""

    def __init__(self, dim: int, drop_path: float, layerscale_init: float | None, norm_eps: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layerscale_init = layerscale_init
        self.gamma = nn.Parameter(torch.full((dim,), float(layerscale_init))) if layerscale_init else None
        self.drop_path = drop_path
        self.checkpointing = False  # recompute the activations in the backward pass (training memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # the RNG state is restored for the recomputation, so drop path draws the same samples
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W]
        y = self.dwconv(x).permute(0, 2, 3, 1)  # [B, H, W, C]: the norm and the Linears act on the last dim
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))  # [B, H, W, C]
        if self.gamma is not None:
            y = y * self.gamma
        return x + drop_path(y.permute(0, 3, 1, 2), self.drop_path, self.training)  # [B, C, H, W]


class Downsample(nn.Sequential):
    """The stem (conv, norm) or a downsampling layer (norm, conv); a Sequential so that the parameter names are
    the released `downsample_layers.{i}.{0,1}.*`. Checkpointed like the blocks, as released."""

    checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


# -------------------------------------------------------------------------------------------------- model
class ConvNeXt(nn.Module):
    def __init__(self, config: ConvNeXtConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed_dim = self.num_features = c.dims[-1]
        self.embed_dims = c.dims  # per-stage widths (the released attribute)
        self.patch_size = STRIDE  # the stride of the patch tokens
        self.num_registers = 0
        self.n_blocks = N_STAGES  # get_intermediate_layers counts stages, as released

        self.downsample_layers = nn.ModuleList(
            [Downsample(nn.Conv2d(c.in_chans, c.dims[0], kernel_size=4, stride=4), self._norm2d(c.dims[0]))]
        )
        for i in range(1, N_STAGES):
            conv = nn.Conv2d(c.dims[i - 1], c.dims[i], kernel_size=2, stride=2)
            self.downsample_layers.append(Downsample(self._norm2d(c.dims[i - 1]), conv))
        rates = iter(np.linspace(0, c.drop_path_rate, sum(c.depths)).tolist())  # numpy: the released values
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dim, next(rates), c.layerscale_init, c.norm_eps) for _ in range(depth)))
            for depth, dim in zip(c.depths, c.dims)
        )
        self.norm = nn.LayerNorm(c.dims[-1], eps=c.norm_eps)
        self.init_weights()

    def _norm2d(self, dim: int) -> ChannelsFirstLayerNorm:
        return ChannelsFirstLayerNorm(dim, eps=self.config.norm_eps)

    def init_weights(self) -> None:
        """Random initialisation as released: truncated normal (std 0.02) convolutions and Linears with zero
        biases, unit norms, γ = `layerscale_init`."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm | ChannelsFirstLayerNorm):
                m.reset_parameters()
            elif isinstance(m, ConvNeXtBlock) and m.gamma is not None:
                nn.init.constant_(m.gamma, m.layerscale_init)

    @property
    def blocks(self) -> list[ConvNeXtBlock]:
        """All blocks in forward order (stage by stage)."""
        return [block for stage in self.stages for block in stage]

    # ------------------------------------------------------------------------------------ training
    # The trainer's backbone protocol (`architectures.TrainableBackbone`).
    @property
    def num_layers(self) -> int:
        """Layer ids for layer-wise LR decay: 0 (stem), 1 … Σ depths (blocks), Σ depths + 1 (final norm)."""
        return sum(self.config.depths) + 2

    def layer_id(self, name: str) -> int:
        """The layer id of parameter `name`: 0 for the stem (`downsample_layers.0`), k + 1 for the k-th block in
        forward order (counted over all stages), the id of a stage's first block for the downsampling layer that
        opens the stage (its output feeds that block), the last id for the final norm."""
        parts = name.split(".")
        before = [sum(self.config.depths[:s]) for s in range(N_STAGES)]  # blocks before each stage
        if parts[0] == "downsample_layers":
            i = int(parts[1])
            return 0 if i == 0 else before[i] + 1
        if parts[0] == "stages":
            return before[int(parts[1])] + int(parts[2]) + 1
        return self.num_layers - 1

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the activations of each block and each downsampling layer in the backward pass (what the
        released code wraps); the RNG state is preserved, so drop path agrees between the two passes."""
        for module in [*self.downsample_layers, *self.blocks]:
            module.checkpointing = enabled

    def fsdp_units(self) -> list[nn.Module]:
        """The downsampling layers and the blocks, in forward order (the released code shards whole stages;
        per block keeps the units small for the deep third stage)."""
        units: list[nn.Module] = []
        for down, stage in zip(self.downsample_layers, self.stages):
            units += [down, *stage]
        return units

    # ----------------------------------------------------------------------------------- forward
    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an input: the stem's ⌊·/4⌋ then three ⌊·/2⌋, i.e. ⌊·/32⌋."""
        return height // 4 // 2 // 2 // 2, width // 4 // 2 // 2 // 2

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected images [B, {self.config.in_chans}, H, W], got {list(x.shape)}")
        if min(x.shape[-2:]) < STRIDE:
            H, W = x.shape[-2:]
            raise ValueError(f"images of {H}×{W} px are too small for a ConvNeXt (stride {STRIDE}): 32 px at least")

    def _check_masks(self, masks: torch.Tensor, batch: int, grid: tuple[int, int]) -> None:
        n = grid[0] * grid[1]
        if masks.shape != (batch, n):
            raise ValueError(f"masks must be [B, h·w] = {[batch, n]}, got {list(masks.shape)}")
        if masks.any():
            raise ConfigError(
                "a ConvNeXt backbone cannot take iBOT masks: it has no mask token, and its convolutions see "
                "past any masked patch. DINOv3 trains ConvNeXts only as distillation students, which see "
                "unmasked crops; give the student no masks (all-False masks are accepted)."
            )

    def _run_stages(self, x: torch.Tensor, keep: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images → the last map `[B, D, h, w]` and the maps of the stages listed in `keep` (running only up to
        the last of them when `keep` is given)."""
        last = max(keep) if keep else N_STAGES - 1
        kept = []
        for i in range(last + 1):
            x = self.stages[i](self.downsample_layers[i](x))  # [B, dims[i], H / 2^(i+2), W / 2^(i+2)]
            if i in keep:
                kept.append(x)
        return x, kept

    def forward_features(
        self, x: torch.Tensor, masks: torch.Tensor | None = None, local_crops: bool = False
    ) -> BackboneOutput:
        """Images `[B, C, H, W]` (normalised) → `BackboneOutput`: `cls` is the normed average pool of the last map,
        `patches` the normed last-stage tokens (row-major), `prenorm` `[pooled, patches]` before the norm, no
        registers. `masks [B, h·w]` must be all False (see the module docstring); `local_crops` is accepted for
        the trainer's sake and changes nothing (a ConvNeXt has no separate norm for local crops)."""
        self._check_input(x)
        if masks is not None:
            self._check_masks(masks, x.shape[0], self.grid_size(*x.shape[-2:]))
        x, _ = self._run_stages(x)  # [B, D, h, w]
        grid = (x.shape[-2], x.shape[-1])
        pooled = x.mean(dim=(-2, -1))  # [B, D]
        patches = x.flatten(2).transpose(1, 2)  # [B, h·w, D], row-major
        prenorm = torch.cat([pooled.unsqueeze(1), patches], dim=1)  # [B, 1 + h·w, D]
        normed = self.norm(prenorm)
        return BackboneOutput(
            cls=normed[:, 0], registers=normed[:, 1:1], patches=normed[:, 1:], prenorm=prenorm, grid=grid, masks=masks,
            pooled_cls=True,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images → normed pooled token `[B, D]`."""
        return self.forward_features(x).cls

    def stage_norm(self, i: int) -> nn.Module:
        """The norm `get_intermediate_layers(norm=True)` applies to stage i: the final norm for the last stage,
        none for the others (the released `norms` list: three Identities and the final norm)."""
        return self.norm if i == N_STAGES - 1 else nn.Identity()

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        return_extra_tokens: bool = False,
    ) -> tuple:
        """Outputs of several stages, with the released semantics.

        `n` int: the last n stages; a sequence: 0-based stage indices (returned in depth order). Per stage, the
        class token is the average pool of its map `[B, C_i]` and the patches are its map, resized to
        `(H // p, W // p)` (bilinear, antialiased) when `pseudo_patch_size` p is set. `norm` applies the stage's
        norm (`stage_norm`: only the last stage has one) to both; the patches come as `[B, h·w, C_i]`, or as
        `[B, C_i, h, w]` with `reshape`. Each entry is the patches, or `(patches, cls)` with
        `return_class_token`; `return_extra_tokens` appends the (empty) registers `[B, 0, C_i]`."""
        requested = list(range(N_STAGES - n, N_STAGES)) if isinstance(n, int) else [int(i) for i in n]
        indices = sorted(set(requested))
        if not indices or len(indices) != len(requested) or indices[0] < 0 or indices[-1] >= N_STAGES:
            raise ValueError(f"stage indices must be distinct and lie in [0, {N_STAGES}), got {n!r}")
        self._check_input(x)
        H, W = x.shape[-2:]
        _, maps = self._run_stages(x, keep=indices)
        p = self.config.pseudo_patch_size
        outputs = []
        for i, fmap in zip(indices, maps):
            cls = fmap.mean(dim=(-2, -1))  # [B, C_i], pooled before any resize
            if p is not None:  # a ViT-like grid for code written for patch-p ViTs
                fmap = F.interpolate(fmap, size=(H // p, W // p), mode="bilinear", antialias=True)
            patches = fmap.flatten(2).transpose(1, 2)  # [B, h·w, C_i]
            if norm:
                stage_norm = self.stage_norm(i)
                cls, patches = stage_norm(cls), stage_norm(patches)
            if reshape:
                patches = patches.transpose(1, 2).reshape(fmap.shape).contiguous()  # [B, C_i, h, w]
            parts = (patches,)
            if return_class_token:
                parts += (cls,)
            if return_extra_tokens:
                parts += (patches.new_zeros(x.shape[0], 0, fmap.shape[1]),)
            outputs.append(parts if len(parts) > 1 else patches)
        return tuple(outputs)
