"""The training data stream: an infinite, deterministic, resumable sequence of SSL batches for one rank.

Order. Image folders and lists are read in a fresh random permutation per pass (seeded by `seed` and the pass
number); the global stream is dealt to the ranks round-robin (rank r takes global positions r, r + world, …),
so a batch of 2 ranks × 32 images holds the same images as a batch of 64 on one device. Tar shards are
streamed: per pass the shards are shuffled and dealt to the ranks (or, with fewer shards than ranks, their
samples are), and read a few at a time through a seeded shuffle buffer (`ShardSource`).

Determinism. Batch `b` of a rank is a pure function of (seed, rank, world size, b): every sample's crops come
from a random generator seeded by its stream position and the masks of a batch from one seeded by `b`. With
several `resolutions` (the high-resolution stage), the crop sizes are drawn by their ratios once per optimiser
step, from a generator seeded by (seed, step) alone, so the ranks and the micro-batches of a step agree. So the
result does not depend on the number of data workers (worker w of W produces batches b ≡ w mod W, which the
DataLoader interleaves back into order) and a resumed run continues with exactly the batches an uninterrupted
one would have seen: `start_batch` is the index of the next unseen batch.

Robustness. An unreadable file (or one beyond the size limits of `images.py`) is replaced, for this batch, by
another readable image of the same batch (augmented with the failed position's seed), logged once per worker (the
first `LISTED_UNREADABLE` by name) and reported in `Batch.skipped`. A batch without any readable image is a
`UserError` naming its files and why each failed. In a loader worker that error travels to the main process as a
value (`StreamError`) and is raised there by `raise_stream_errors`: raised in the worker, the DataLoader would
hand it on with the worker's traceback pasted into its message.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UserError
from .collate import Batch, collate_crops, make_masks
from .datasets import LISTED_UNREADABLE, ImageList
from .images import ImageDecodeError, decode_image
from .masking import BlockMaskGenerator
from .multicrop import MultiCrop
from .shards import Member, expand_shards, is_shard_source, iter_members

log = logging.getLogger("dinokit.data")
Loader = Callable[[], torch.Tensor]  # decodes one image → uint8 [3, H, W]


class ImageSource:
    """Random access to an `ImageList`, one seeded permutation per pass over the data."""

    def __init__(self, images: ImageList, seed: int) -> None:
        self.paths = images.paths
        self.seed = seed
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def _index(self, global_position: int) -> int:
        epoch, offset = divmod(global_position, len(self.paths))
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.paths)))
        return int(self._perm[1][offset])

    def items(self, positions: list[int], rank: int, world: int) -> Iterator[tuple[int, str, Loader]]:
        """`(seed key, name, loader)` for the rank-stream positions asked for (increasing)."""
        for p in positions:
            g = p * world + rank
            path = self.paths[self._index(g)]
            yield g, str(path), (lambda path=path: decode_image(path))


class ShardSource:
    """Tar shards read sequentially, mixed as they are read. Per pass the shards are shuffled and dealt to the
    ranks; a rank reads `shards_open` of its shards at a time, member by member in turn, through a seeded shuffle
    buffer of `shuffle_buffer` samples (0: file order). Shards are usually written in some order (by source, by
    class, by date): read in file order a batch would come from one shard, skewing the centring and Sinkhorn
    targets that assume a batch is a sample of the whole set.

    The order is a pure function of (seed, rank, world size, pass), so every loader worker and a resumed run see
    the same stream. A worker keeps its place in the stream between batches, so reading batch after batch costs
    one pass (and skipping to a resumed position one pass over the headers: the buffer holds where each sample
    lies in its shard, and a sample's bytes are read only when a batch takes it). Written here rather than taken
    from WebDataset, whose shuffling is not resumable to an exact position."""

    def __init__(self, shards: list[Path], seed: int, shuffle_buffer: int = 1000, shards_open: int = 4) -> None:
        self.shards, self.seed = shards, seed
        self.shuffle_buffer, self.shards_open = shuffle_buffer, max(1, shards_open)
        self._cursor: tuple[tuple[int, int], Iterator, int] | None = None  # ((rank, world), stream, next position)

    def _rank_stream(self, rank: int, world: int) -> Iterator[Member]:
        epoch = 0
        while True:
            order = list(self.shards)
            random.Random(f"{self.seed}:shards:{epoch}").shuffle(order)
            dealt = len(order) >= world
            seen = [0]  # members of any rank read this pass
            mine = order[rank::world] if dealt else order
            shards = [_members(s, seen, None if dealt else (rank, world)) for s in mine]
            rng = random.Random(f"{self.seed}:{rank}:{world}:{epoch}")
            yield from shuffle_buffer(interleave(shards, self.shards_open), self.shuffle_buffer, rng)
            if seen[0] == 0:
                raise UserError(f"the tar shards hold no image files ({', '.join(map(str, self.shards[:3]))} …)")
            epoch += 1

    def items(self, positions: list[int], rank: int, world: int) -> Iterator[tuple[int, str, Loader]]:
        if self._cursor is None or self._cursor[0] != (rank, world) or self._cursor[2] > positions[0]:
            self._cursor = ((rank, world), self._rank_stream(rank, world), 0)
        key, stream, p = self._cursor
        wanted = set(positions)
        for member in stream:
            p += 1
            if p - 1 in wanted:
                data = member.read()
                yield (p - 1) * world + rank, member.name, (lambda data=data: decode_image(data))
                if p - 1 == positions[-1]:
                    break
        self._cursor = (key, stream, p)


def _members(shard: Path, seen: list[int], dealt_to: tuple[int, int] | None) -> Iterator[Member]:
    """A shard's images (`dealt_to=(rank, world)`: every world-th of them, when there are fewer shards than ranks),
    counting in `seen[0]` all it reads."""
    for i, member in enumerate(iter_members(shard)):
        seen[0] += 1
        if dealt_to is None or i % dealt_to[1] == dealt_to[0]:
            yield member


def interleave(streams: Iterator[Iterator], width: int) -> Iterator:
    """Items of `width` streams at a time, one from each in turn; an exhausted stream is replaced by the next."""
    open_, streams = [], iter(streams)
    while True:
        while len(open_) < width and (nxt := next(streams, None)) is not None:
            open_.append(nxt)
        if not open_:
            return
        for s in list(open_):
            item = next(s, _END)
            if item is _END:
                open_.remove(s)
            else:
                yield item


_END = object()


def shuffle_buffer(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """`items` in a seeded random order, holding at most `size` of them: each output is a random one of the
    buffer, replaced by the next input (the remainder shuffled at the end). `size` ≤ 1: the order as it is."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = rng.randrange(size)
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer


def open_source(path: str, seed: int, shuffle_buffer: int = 1000, shards_open: int = 4) -> ImageSource | ShardSource:
    """The data source named by `data.path`: tar shards, an image folder, or a .txt/.csv list."""
    if is_shard_source(path):
        return ShardSource(expand_shards(path), seed, shuffle_buffer, shards_open)
    return ImageSource(ImageList.from_source(path), seed)


@dataclass(frozen=True)
class CropSizes:
    """The crop sizes of a batch, and the weight of this choice among several (`crops.resolutions`)."""

    global_size: int
    local_size: int
    extra: dict[str, int] = field(default_factory=dict)  # extra crop sets, e.g. {"gram": 512}
    ratio: float = 1.0


class SSLStream(IterableDataset):
    """Batches `start_batch, start_batch + 1, …` of one rank's stream (forever)."""

    def __init__(
        self,
        source: ImageSource | ShardSource,
        views: MultiCrop,  # .crops(uint8 images, random generators, sizes…) → crop-major crop sets
        masks: Callable[[tuple[int, int]], BlockMaskGenerator] | None,  # grid → iBOT masks (None: no iBOT)
        masking,  # the `masking` config section
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        patch_size: int = 16,
        sizes: Sequence[CropSizes] = (),  # one is drawn per step; (): the sizes of `views`, no extra sets
        micro_batches: int = 1,  # batches per optimiser step (gradient accumulation): they share their sizes
    ) -> None:
        self.source, self.views, self.masks, self.masking = source, views, masks, masking
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world_size
        self.start_batch, self.patch_size, self.micro_batches = start_batch, patch_size, micro_batches
        self.sizes = list(sizes) or [CropSizes(views.global_size, views.local_size)]
        self._mask_generators: dict[tuple[int, int], BlockMaskGenerator] = {}
        self._logged: set[str] = set()

    def sizes_of(self, b: int) -> CropSizes:
        """The crop sizes of batch `b`: those drawn for its optimiser step (the same on every rank)."""
        if len(self.sizes) == 1:
            return self.sizes[0]
        step = b // self.micro_batches
        return random.Random(f"{self.seed}:sizes:{step}").choices(self.sizes, [s.ratio for s in self.sizes])[0]

    def _mask_generator(self, global_size: int) -> BlockMaskGenerator | None:
        if self.masks is None:
            return None
        grid = (global_size // self.patch_size, global_size // self.patch_size)
        if grid not in self._mask_generators:
            self._mask_generators[grid] = self.masks(grid)
        return self._mask_generators[grid]

    def batch(self, b: int) -> Batch:
        """Batch `b` of this rank's stream (random access; used by tests and the single-process path)."""
        return next(self._batches([b]))

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        w, W = (info.id, info.num_workers) if info is not None else (0, 1)

        def mine():
            b = self.start_batch + w
            while True:
                yield b
                b += W

        batches = self._batches(mine())
        return batches if info is None else _errors_as_values(batches)

    def _batches(self, batch_indices) -> Iterator[Batch]:
        bs = self.batch_size
        for b in batch_indices:
            positions = list(range(b * bs, (b + 1) * bs))
            yield self._make_batch(b, list(self.source.items(positions, self.rank, self.world)))

    def _make_batch(self, b: int, items: list[tuple[int, str, Loader]]) -> Batch:
        images, failed, reasons = {}, [], []
        for key, name, load in items:
            try:
                images[key] = load()
            except ImageDecodeError as e:
                failed.append(name)
                reasons.append(str(e))
                if name not in self._logged:
                    self._logged.add(name)
                    if len(self._logged) <= LISTED_UNREADABLE:
                        log.warning("skipping image %s", e)
                    if len(self._logged) == LISTED_UNREADABLE:
                        log.warning("further unreadable images are skipped without a message (counted at the end)")
        if not images:
            more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
            raise UserError(f"batch {b} of the training data holds no readable image to stand in for its unreadable "
                            f"files: {'; '.join(reasons[:3])}{more}")  # fmt: skip
        readable = list(images.values())
        # an unreadable file: reuse a readable image, augmented with the failed position's seed
        batch_images = [images.get(key, readable[i % len(readable)]) for i, (key, _, _) in enumerate(items)]
        rngs = [random.Random(f"{self.seed}:{key}") for key, _, _ in items]
        sizes = self.sizes_of(b)
        global_crops, local_crops, extra = self.views.crops(
            batch_images, rngs, sizes.global_size, sizes.local_size, sizes.extra
        )
        m, rng = self.masking, random.Random(f"{self.seed}:masks:{self.rank}:{b}")
        masks = make_masks(
            len(items) * 2, self._mask_generator(sizes.global_size), rng, m.sample_probability, m.ratio_min_max,
            exact_upper=m.style == "dinov3",
        )  # fmt: skip
        return collate_crops(global_crops, local_crops, masks, index=b, skipped=failed, extra_crops=extra)


@dataclass(frozen=True)
class StreamError:
    """A `UserError` of a loader worker, sent to the main process as a batch would be."""

    message: str


def _errors_as_values(batches: Iterator[Batch]) -> Iterator[Batch | StreamError]:
    """A worker's batches, ending with a `StreamError` instead of raising a `UserError`."""
    try:
        yield from batches
    except UserError as e:
        yield StreamError(str(e))  # and this worker's stream ends


def raise_stream_errors(batches: Iterator[Batch | StreamError]) -> Iterator[Batch]:
    """The batches of a DataLoader over an `SSLStream`, with a worker's `StreamError` raised as a `UserError`."""
    for batch in batches:
        if isinstance(batch, StreamError):
            raise UserError(batch.message)
        yield batch
