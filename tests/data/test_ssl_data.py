"""SSL data path: tensor augmentations, multi-crop, iBOT masks, collate layout, the resumable stream, tar shards,
and unreadable files."""

import io
import random
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.config import MaskingConfig
from dinokit.data import augment as A
from dinokit.data.collate import collate_views, make_masks
from dinokit.data.masking import BlockMaskGenerator
from dinokit.data.multicrop import MultiCrop
from dinokit.data.stream import SSLStream, open_source


def write_images(folder, n, seed=0, size=(40, 56)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def small_stream(source, batch_size=3, rank=0, world=1, start=0, masked=True):
    views = MultiCrop(global_size=32, local_number=2, local_size=16)
    gen = (lambda grid: BlockMaskGenerator(grid, min_block_patches=1)) if masked else None
    return SSLStream(source, views, gen, MaskingConfig(), batch_size, seed=7, rank=rank, world_size=world,
                     start_batch=start, patch_size=16)  # fmt: skip


# ----------------------------------------------------------------------------------------------- augmentations
def test_random_resized_crop_box_covers_the_requested_area():
    rng = random.Random(0)
    for _ in range(200):
        top, left, h, w = A.random_resized_crop_box(100, 150, (0.05, 0.32), rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 150
        assert 0.04 * 15000 <= h * w <= 0.34 * 15000 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def test_colour_ops_behave_like_their_definitions():
    x = torch.rand(3, 8, 8)
    gray = A.grayscale(x)
    torch.testing.assert_close(gray[0], 0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2])
    torch.testing.assert_close(A.adjust_hue(x, 0.0), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(A.adjust_hue(A.adjust_hue(x, 0.3), -0.3), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(A.solarize(torch.tensor([0.2, 0.6])), torch.tensor([0.2, 0.4]))
    flat = torch.full((3, 16, 16), 0.3)
    torch.testing.assert_close(A.gaussian_blur(flat, 1.5), flat)  # a blur keeps constant images
    spike = torch.zeros(1, 21, 21)
    spike[0, 10, 10] = 1
    blurred = A.gaussian_blur(spike, 1.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred[0, 10, 10] < 0.2
    torch.testing.assert_close(blurred, blurred.transpose(1, 2))  # isotropic
    img = torch.rand(3, 15, 17)  # against a plain 2-D convolution with the outer-product kernel
    t = torch.arange(9.0) - 4
    k1 = torch.exp(-0.5 * (t / 1.3) ** 2)
    k2 = torch.outer(k1, k1) / k1.sum() ** 2
    padded = torch.nn.functional.pad(img[None], (4, 4, 4, 4), mode="reflect")
    expected = torch.nn.functional.conv2d(padded, k2.expand(3, 1, 9, 9), groups=3)[0]
    torch.testing.assert_close(A.gaussian_blur(img, 1.3), expected, rtol=0, atol=1e-6)


def test_multicrop_shapes_determinism_and_blur_probabilities():
    img = torch.randint(0, 255, (3, 60, 80), dtype=torch.uint8)
    mc = MultiCrop(global_size=32, local_number=3, local_size=16)
    g, loc = mc(img, random.Random(1))
    assert [t.shape for t in g] == [(3, 32, 32)] * 2 and [t.shape for t in loc] == [(3, 16, 16)] * 3
    g2, _ = mc(img, random.Random(1))
    torch.testing.assert_close(g[0], g2[0])  # a seed fixes the crops
    assert mc.blur_p == (0.0, 0.9, 0.5)  # the released models' effective probabilities
    assert MultiCrop(probabilities="intended").blur_p == (1.0, 0.1, 0.5)


def test_batched_crops_of_a_sample_do_not_depend_on_its_batch_mates():
    """The pixel work runs per crop slot over the whole batch; each sample must still get exactly the crops it
    gets alone (the property that makes 2 ranks × B equal 1 rank × 2B, and workers irrelevant)."""
    mc = MultiCrop(global_size=32, local_number=3, local_size=16, probabilities="intended")
    images = [torch.randint(0, 255, (3, 50 + 7 * i, 70), dtype=torch.uint8) for i in range(6)]
    g, loc = mc.batch(images, [random.Random(i) for i in range(6)])  # crop-major: [2·6, …], [3·6, …]
    assert g.shape == (12, 3, 32, 32) and loc.shape == (18, 3, 16, 16)
    for i in (0, 4):
        alone_g, alone_l = mc(images[i], random.Random(i))
        torch.testing.assert_close(g[i :: 6], torch.stack(alone_g), rtol=0, atol=0)
        torch.testing.assert_close(loc[i :: 6], torch.stack(alone_l), rtol=0, atol=0)


def test_batched_colour_jitter_and_blur_match_one_image_at_a_time():
    x = torch.rand(5, 3, 12, 12)
    params = [A.color_jitter_params(random.Random(i)) for i in range(4)] + [None]
    out = A.apply_color_jitter(x, params)
    torch.testing.assert_close(out[4], x[4], rtol=0, atol=0)  # None: untouched
    for i in range(4):
        torch.testing.assert_close(out[i], A.color_jitter(x[i], random.Random(i)), rtol=0, atol=0)
    sigmas = torch.tensor([0.3, 1.0, 1.7, 2.0, 0.1])
    blurred = A.gaussian_blur(x, sigmas)
    for i in range(5):
        torch.testing.assert_close(blurred[i], A.gaussian_blur(x[i], float(sigmas[i])), rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------- masking
def test_block_masks_hit_their_count_and_respect_the_block_limit():
    gen = BlockMaskGenerator((14, 14), max_block_patches=0.5 * 196)
    rng = random.Random(0)
    for n in (10, 40, 98):
        m = gen(n, rng)
        assert m.shape == (14, 14) and 0 < m.sum() <= n + 0  # blocks never overshoot the request
    exact = BlockMaskGenerator((14, 14), top_up=True)
    assert all(exact(n, rng).sum() == n for n in (5, 37, 90))  # DINOv3 style: exactly n


def test_stratified_mask_ratios_and_collate_layout():
    gen = BlockMaskGenerator((16, 16), top_up=True)
    masks = make_masks(8, gen, random.Random(3), 0.5, (0.1, 0.5), exact_upper=True)
    counts = sorted(masks.sum(1).tolist())
    assert counts[:4] == [0, 0, 0, 0]  # half of the crops unmasked
    assert counts[4:] == [int(256 * r) for r in (0.2, 0.3, 0.4, 0.5)]  # one per ratio bin (upper edges)
    views = [([torch.full((3, 4, 4), float(10 * b + c)) for c in range(2)], [torch.zeros(3, 2, 2)]) for b in range(4)]
    batch = collate_views(views, masks[:, :4])
    assert batch.global_crops[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 1, 11, 21, 31]  # crop-major
    assert torch.equal(batch.mask_indices, batch.masks.flatten().nonzero().flatten())
    per_crop = batch.masks.sum(1).clamp(min=1)
    expected = (1.0 / per_crop).repeat_interleave(batch.masks.sum(1))
    torch.testing.assert_close(batch.masks_weight, expected)


# --------------------------------------------------------------------------------------------------- stream
def test_stream_is_deterministic_across_workers_and_resumes(tmp_path):
    source = open_source(str(write_images(tmp_path / "imgs", 10)), seed=7)
    ref = [small_stream(source).batch(b) for b in range(4)]
    loader = torch.utils.data.DataLoader(small_stream(source), batch_size=None, num_workers=2)
    it = iter(loader)
    for b in range(4):
        got = next(it)
        assert got.index == b
        torch.testing.assert_close(got.global_crops, ref[b].global_crops, rtol=0, atol=0)
        assert torch.equal(got.masks, ref[b].masks)
    resumed = next(iter(small_stream(source, start=2)))
    torch.testing.assert_close(resumed.local_crops, ref[2].local_crops, rtol=0, atol=0)


def test_ranks_split_the_global_stream(tmp_path):
    source = open_source(str(write_images(tmp_path / "imgs", 12)), seed=7)
    single = small_stream(source, batch_size=4, masked=False).batch(0)
    r0 = small_stream(source, batch_size=2, rank=0, world=2, masked=False).batch(0)
    r1 = small_stream(source, batch_size=2, rank=1, world=2, masked=False).batch(0)
    B = 4
    for crop in range(2):  # the two ranks hold the same images, with the same crops, interleaved
        merged = torch.stack([r0.global_crops[crop * 2], r1.global_crops[crop * 2],
                              r0.global_crops[crop * 2 + 1], r1.global_crops[crop * 2 + 1]])  # fmt: skip
        torch.testing.assert_close(merged, single.global_crops[crop * B : (crop + 1) * B], rtol=0, atol=0)


def test_tar_shards_are_streamed_and_unreadable_files_replaced(tmp_path, caplog):
    imgs = write_images(tmp_path / "imgs", 6)
    for s in range(2):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(3 * s, 3 * s + 3):
                tar.add(imgs / f"{i:03d}.png", arcname=f"sample{i:03d}.png")
            info = tarfile.TarInfo(f"sample{s}.cls")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))  # a label member: ignored
            bad = tarfile.TarInfo(f"broken{s}.jpg")
            bad.size = 5
            tar.addfile(bad, io.BytesIO(b"xxxxx"))  # not an image: replaced, reported
    source = open_source(str(tmp_path / "shard-{000..001}.tar"), seed=7)
    batches = [small_stream(source, batch_size=4).batch(b) for b in range(3)]
    assert all(b.global_crops.shape == (8, 3, 32, 32) for b in batches)
    skipped = [name for b in batches for name in b.skipped]
    assert skipped and all("broken" in name for name in skipped)
    assert "skipping image" in caplog.text
    again = small_stream(source, batch_size=4, start=2).batch(2)
    torch.testing.assert_close(again.global_crops, batches[2].global_crops, rtol=0, atol=0)


def _sorted_shards(tmp_path, n_shards=6, per_shard=12):
    """Shards written in order, one "class" each (as shards written per source or per class are)."""
    imgs = write_images(tmp_path / "imgs", 2, size=(24, 24))
    for s in range(n_shards):
        with tarfile.open(tmp_path / f"shard-{s:03d}.tar", "w") as tar:
            for i in range(per_shard):
                tar.add(imgs / f"{i % 2:03d}.png", arcname=f"s{s}_{i:03d}.png")
    return str(tmp_path / f"shard-{{000..{n_shards - 1:03d}}}.tar")


def _names(source, first, n, rank=0, world=1):
    return [name for _, name, _ in source.items(list(range(first, first + n)), rank, world)]


def test_tar_shards_are_mixed_by_a_resumable_seeded_shuffle_buffer(tmp_path):
    shards = _sorted_shards(tmp_path)
    file_order = _names(open_source(shards, seed=7, shuffle_buffer=0, shards_open=1), 0, 12)
    assert len({n.split("/")[0] for n in file_order}) == 1  # without mixing, a batch is one shard
    source = open_source(shards, seed=7, shuffle_buffer=16, shards_open=3)
    mixed = _names(source, 0, 72)  # one pass: every sample exactly once
    assert sorted(mixed) == sorted(_names(open_source(shards, seed=7, shuffle_buffer=0, shards_open=1), 0, 72))
    assert all(len({n.split("/")[1][:2] for n in mixed[i : i + 12]}) >= 3 for i in range(0, 72, 12))
    assert _names(open_source(shards, seed=7, shuffle_buffer=16, shards_open=3), 40, 8) == mixed[40:48]  # resume
    assert _names(open_source(shards, seed=8, shuffle_buffer=16, shards_open=3), 0, 72) != mixed  # seeded
    assert _names(source, 72, 72) != mixed and sorted(_names(source, 72, 72)) == sorted(mixed)  # a new pass
    ranks = [_names(open_source(shards, seed=7), 0, 36, r, 2) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(set(ranks[0] + ranks[1])) == 72  # dealt, not duplicated


def test_corrupt_files_in_a_folder_are_skipped(tmp_path):
    folder = write_images(tmp_path / "imgs", 4)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    source = open_source(str(folder), seed=7)
    seen = [name for b in range(4) for name in small_stream(source, batch_size=6).batch(b).skipped]
    assert {n.rsplit("/", 1)[-1] for n in seen} == {"zero.jpg", "text.png"}


def test_a_batch_without_readable_images_is_one_clear_error_from_loader_workers(tmp_path):
    """Raised in a DataLoader worker, the error used to reach the user with the worker's traceback in its message.
    `data_iterator` is what the training loop reads."""
    from dinokit.errors import UserError
    from dinokit.train.build import data_iterator

    folder = tmp_path / "junk"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.png").write_bytes(b"not an image")
    stream = small_stream(open_source(str(folder), seed=7), batch_size=4)
    with pytest.raises(UserError) as caught:
        next(data_iterator(stream, num_workers=1, pin_memory=False))
    message = str(caught.value)
    assert message.startswith("batch 0 of the training data holds no readable image")
    assert message.count(": not a readable image") == 3 and message.endswith("; and 1 more")
    assert "Traceback" not in message
