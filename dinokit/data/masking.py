"""iBOT block masking (BEiT, arXiv:2106.08254 §2.2; as used by DINOv2 / DINOv3).

A mask over an h×w patch grid is a union of rectangular blocks: each block has an area U(min_block, remaining)
patches (at most `max_block` per block) and a log-uniform aspect ratio in [min_aspect, 1/min_aspect]; a block is
accepted only if it adds between 1 and `remaining` new patches (10 tries per block); blocks are added until
the requested count is reached or no block fits. The DINOv3 style then tops the mask up with random patches to
exactly the requested count.

Which crops get a mask and how much is decided per batch (`collate.py`): of the `n` global crops,
`int(n · sample_probability)` are masked, crop i of those with a ratio drawn in the i-th of equal bins of
`ratio_min_max` (stratified), then shuffled.
"""

from __future__ import annotations

import math
import random

import torch


class BlockMaskGenerator:
    def __init__(
        self,
        grid: tuple[int, int],
        min_block_patches: int = 4,
        max_block_patches: float | None = None,
        min_aspect: float = 0.3,
        top_up: bool = False,
    ) -> None:
        self.height, self.width = grid
        self.num_patches = self.height * self.width
        self.min_block = min_block_patches
        self.max_block = 0.5 * self.num_patches if max_block_patches is None else max_block_patches
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.top_up = top_up

    def _add_block(self, mask: torch.Tensor, max_patches: float, rng: random.Random) -> int:
        """Try (10 times) to add one block with 1 … `max_patches` new patches; return how many were added."""
        for _ in range(10):
            area = rng.uniform(self.min_block, max_patches)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top, left = rng.randint(0, self.height - h), rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_patches:
                    block.fill_(True)
                    return new
        return 0

    def __call__(self, n_masked: int, rng: random.Random) -> torch.Tensor:
        """A boolean mask `[h, w]` with (about, or with `top_up` exactly) `n_masked` patches set."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < n_masked:
            added = self._add_block(mask, min(n_masked - count, self.max_block), rng)
            if added == 0:
                break
            count += added
        if self.top_up and count < n_masked:
            free = (~mask).flatten().nonzero().flatten().tolist()
            extra = rng.sample(free, min(n_masked - count, len(free)))
            mask.view(-1)[extra] = True
        return mask
