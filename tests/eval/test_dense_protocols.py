"""Dense segmentation and depth probes, retrieval and correspondence: end to end on tiny image sets."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.errors import UserError
from dinokit.eval.correspondence import run_correspondence
from dinokit.eval.dense import find_pairs, sliding_window
from dinokit.eval.depth import run_depth, silog_loss
from dinokit.eval.retrieval import run_retrieval
from dinokit.eval.segmentation import load_labels, run_segmentation


@pytest.fixture(scope="module")
def discs(tmp_path_factory):
    """Red discs on blue ground: label 1 / depth 2 m on the disc, label 0 / depth 5 m elsewhere, 255 / no depth
    on a ring between them. A random network's patch features see the colour, so a linear head can learn it."""
    root = tmp_path_factory.mktemp("discs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for split, n in (("training", 10), ("validation", 3)):
        for sub in ("images", "annotations", "rgb", "depth"):
            (root / sub / split).mkdir(parents=True)
        for i in range(n):
            cy, cx, r = rng.uniform(20, 44), rng.uniform(20, 44), rng.uniform(10, 18)
            dist = np.hypot(yy - cy, xx - cx)
            label = np.where(dist < r, 1, 0).astype(np.uint8)
            label[np.abs(dist - r) < 1] = 255
            img = np.where(label[..., None] == 1, [220, 30, 30], [30, 30, 220]) + rng.normal(0, 10, (64, 64, 3))
            img = np.clip(img, 0, 255).astype(np.uint8)
            depth = np.where(label == 1, 2000, 5000).astype(np.uint16)
            depth[label == 255] = 0
            for sub, arr in (("images", img), ("annotations", label), ("rgb", img), ("depth", depth)):
                Image.fromarray(arr).save(root / sub / split / f"{i:03d}.png")
    return root


def test_find_pairs_swaps_the_folder_name_and_reports_missing_targets(discs, tmp_path):
    pairs = find_pairs(discs / "images" / "training", None, ("images", "annotations"))
    assert len(pairs) == 10 and pairs[0][1] == discs / "annotations" / "training" / "000.png"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{pairs[0][0]} {pairs[0][1]} 518.8\n")  # a split file with a trailing focal length
    assert find_pairs(listing, None, ("images", "annotations")) == [pairs[0]]
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "lonely.png")
    with pytest.raises(UserError, match="no target"):
        find_pairs(tmp_path / "images", None, ("images", "annotations"))


def test_reduce_zero_label(tmp_path):
    Image.fromarray(np.array([[0, 1, 150, 255]], dtype=np.uint8)).save(tmp_path / "l.png")
    assert load_labels(tmp_path / "l.png", reduce_zero_label=True).tolist() == [[255, 0, 149, 255]]


def test_segmentation_probe_learns_what_the_features_show(discs, random_model):
    r = run_segmentation(
        random_model, discs / "images" / "training", discs / "images" / "validation", size=64, crop=64,
        iterations=150, crops_per_image=2,
    )  # fmt: skip
    assert set(r) == {"miou", "pixel_acc"}
    assert r["miou"] > 70  # chance (all one class) would be about 35


def test_depth_probe_learns_what_the_features_show(discs, random_model):
    r = run_depth(
        random_model, discs / "rgb" / "training", discs / "rgb" / "validation", size=64, crop=64, iterations=150,
        crops_per_image=2,
    )  # fmt: skip
    assert set(r) == {"rmse", "abs_rel", "delta1"}
    assert r["rmse"] < 1.0 and r["delta1"] > 70  # predicting the mean depth everywhere gives an RMSE of about 1.4


def test_silog_loss_is_scale_invariant_in_its_variance_part():
    gt = torch.tensor([[1.0, 2.0, 4.0, 0.0]])
    assert silog_loss(gt.clamp_min(1), gt).item() < 2e-3  # zero up to its eps on the valid pixels
    # a constant scale error s leaves only sqrt(1 − λ)·|log s|
    assert silog_loss(2 * gt, gt).item() == pytest.approx((0.15**0.5) * np.log(2), rel=1e-4)
    # a batch without a single measurement (sparse depth, a crop of sky) teaches nothing instead of giving NaN
    pred = torch.rand(1, 4, requires_grad=True)
    loss = silog_loss(pred, torch.zeros(1, 4))
    loss.backward()
    assert loss.item() == 0 and torch.equal(pred.grad, torch.zeros(1, 4))


def test_sliding_window_covers_a_larger_image_exactly_once_where_windows_do_not_overlap(random_model):
    class Ones(torch.nn.Module):
        conv = torch.nn.Conv2d(1, 1, 1)

        def forward(self, feats):
            return torch.ones(feats.shape[0], 1, *feats.shape[-2:])

    out = sliding_window(
        random_model,
        Ones(),
        torch.zeros(3, 40, 100),
        32,
        32,
        lambda x, s: torch.nn.functional.interpolate(x, size=s),
        "cpu",
    )
    assert out.shape == (1, 40, 100) and torch.allclose(out, torch.ones_like(out))  # averaged over overlaps


def test_dense_protocols_run_on_the_synthetic_layout(synth, random_model):
    seg = run_segmentation(random_model, synth / "seg/images/training", synth / "seg/images/validation", size=64,
                           crop=64, iterations=5)  # fmt: skip
    depth = run_depth(random_model, synth / "depth/train/rgb", synth / "depth/test/rgb", size=64, crop=64, iterations=5)
    assert 0 <= seg["miou"] <= 100 and depth["rmse"] > 0
    for scores in (seg, depth):  # the per-image statistics give back every reported metric (float32 round-off)
        assert all(stats.value() == pytest.approx(scores[k], rel=1e-6) for k, stats in scores.per_item.items())


# ------------------------------------------------------------------------------------------ retrieval
def test_retrieval_finds_exact_copies(tmp_path, random_model):
    rng = np.random.default_rng(0)
    (tmp_path / "g").mkdir()
    images = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(4)]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / "g" / f"{i}.png")
        Image.fromarray(img).save(tmp_path / f"q{i}.png")
    spec = {
        "gallery": [f"g/{i}.png" for i in range(4)],
        "queries": [{"image": "q0.png", "positives": ["g/0.png"]}, {"image": "q1.png", "positives": [1], "junk": [2]},
                    {"image": "q3.png", "bbox": [0, 0, 48, 48], "positives": ["g/3.png"]}],
    }  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(spec))
    assert run_retrieval(random_model, tmp_path / "r.json", size=48) == {"map": 100.0}
    spec["queries"][0]["positives"] = ["g/1.png"]  # now a wrong image is "positive": its AP drops below 1
    (tmp_path / "r.json").write_text(json.dumps(spec))
    assert run_retrieval(random_model, tmp_path / "r.json", size=48)["map"] < 100.0


def test_retrieval_rejects_a_malformed_file(tmp_path, random_model):
    (tmp_path / "r.json").write_text('{"gallery": []}')
    with pytest.raises(UserError, match="docs/formats.md"):
        run_retrieval(random_model, tmp_path / "r.json")


def test_retrieval_runs_on_the_synthetic_layout(synth, random_model):
    assert 0 < run_retrieval(random_model, synth / "retrieval" / "retrieval.json", size=64)["map"] <= 100


# ------------------------------------------------------------------------------------- correspondence
def test_correspondence_of_an_image_with_itself_is_exact(tmp_path, random_model):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    # away from the outer half-patch, where bilinear upsampling clamps and neighbouring pixels tie
    kp = rng.uniform(12, 52, (20, 2)).tolist()
    pairs = {"pairs": [{"image_a": "a.png", "image_b": "a.png", "keypoints_a": kp, "keypoints_b": kp}]}
    (tmp_path / "p.json").write_text(json.dumps(pairs))
    r = run_correspondence(random_model, tmp_path / "p.json", size=64, thresholds=(1, 5))
    assert r == {"recall@1": 100.0, "recall@5": 100.0}  # matches land on the pixel centre nearest the keypoint


def test_correspondence_runs_on_the_synthetic_layout(synth, random_model):
    r = run_correspondence(random_model, synth / "pairs" / "pairs.json", size=64)
    assert set(r) == {"recall@5", "recall@10", "recall@20"} and r["recall@5"] <= r["recall@10"] <= r["recall@20"]
    assert all(r.per_item[k].value() == pytest.approx(v, abs=1e-9) for k, v in r.items())
