import numpy as np
import pytest
import torch
from PIL import Image

from dinokit.cli import main
from dinokit.data.images import decode_image
from dinokit.errors import UserError
from dinokit.models import create_backbone
from dinokit.tools.prototypes import (
    Prototypes,
    apply_prototypes,
    apply_prototypes_to_images,
    build_prototypes,
    mask_to_patches,
)
from tests.tools.helpers import trained_like, write_png


def synthetic(seed=0):
    """Three known classes in horizontal bands plus an unknown object; features = class direction + noise."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(4, 32, generator=g), dim=-1)
    labels = torch.zeros(9, 12, dtype=torch.long)
    labels[3:6], labels[6:] = 1, 2
    unknown = torch.zeros(9, 12, dtype=torch.bool)
    unknown[2:5, 7:10] = True
    feats = dirs[labels] + 0.15 * torch.randn(9, 12, 32, generator=g)
    feats[unknown] = dirs[3] + 0.15 * torch.randn(int(unknown.sum()), 32, generator=g)
    return feats, labels, unknown, dirs


def test_classification_and_ood_mask_on_known_structure(tmp_path):
    feats, labels, unknown, dirs = synthetic()
    protos = Prototypes(32)
    for k, name in enumerate(["road", "car", "sky"]):
        protos.add(name, feats, (labels == k) & ~unknown)
    assert protos.names == ["road", "car", "sky"]
    assert (protos.vectors @ dirs[:3].T).diag().min() > 0.95
    threshold = protos.calibrate(0.99)
    pred, _ = protos.classify(feats)
    assert torch.equal(pred[~unknown], labels[~unknown])
    flagged = protos.ood_mask(feats)
    assert flagged[unknown].all() and flagged[~unknown].float().mean() <= 0.02  # ≈ 1 % of known patches
    assert protos.ood_score(feats)[unknown].min() > threshold > protos.ood_score(feats)[~unknown].median()
    protos.save(tmp_path / "p.safetensors")
    again = Prototypes.load(tmp_path / "p.safetensors")
    assert again.names == protos.names and again.threshold == pytest.approx(threshold)
    torch.testing.assert_close(again.vectors, protos.vectors)
    with pytest.raises(UserError, match="calibration"):
        again.calibrate()


def test_several_prototypes_cover_a_class_with_two_looks():
    g = torch.Generator().manual_seed(0)
    a, b, unknown = torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)
    feats = torch.cat([a + 0.1 * torch.randn(20, 16, generator=g), b + 0.1 * torch.randn(20, 16, generator=g)])
    scores = {}
    for k in (1, 2):
        protos = Prototypes(16, per_class=k)
        protos.add("known", feats[:, None])
        scores[k] = protos.ood_score(torch.stack([a, b, unknown]))
        assert len(protos.vectors) == k and protos.owner.tolist() == [0] * k
    assert scores[2][:2].max() < 0.05 < scores[1][:2].min()  # the mean of two looks matches neither
    assert scores[2][2] > 0.5


def test_masked_regions_and_pixel_masks():
    feats = torch.zeros(2, 2, 4)
    feats[:, 0, 0], feats[:, 1, 1] = 1, 1  # left column → e0, right column → e1
    protos = Prototypes(4)
    protos.add("left", feats, torch.tensor([[True, False], [True, False]]))
    torch.testing.assert_close(protos.vectors[0], torch.tensor([1.0, 0, 0, 0]))
    pixels = torch.zeros(32, 32, dtype=torch.bool)
    pixels[:, :20] = True  # columns 0–15 fully covered, 16–31 only 25 %
    assert mask_to_patches(pixels, (2, 2)).tolist() == [[True, False], [True, False]]


def test_prototypes_cli_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)

    def solid(rgb, size=64):
        return np.clip(np.array(rgb)[None, None] + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)

    for name, rgb in [("red", (200, 30, 30)), ("blue", (30, 30, 200))]:
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(solid(rgb)).save(tmp_path / "train" / name / f"{i}.png")
    scene = np.concatenate([solid((200, 30, 30), 128)[:, :64], solid((30, 30, 200), 128)[:, 64:]], axis=1)
    scene[32:64, 16:48] = solid((30, 200, 30), 32)  # an unknown green object: patches (2–3, 1–2)
    Image.fromarray(scene).save(tmp_path / "scene.png")
    protos = tmp_path / "p.safetensors"
    build = ["prototypes", "build", str(tmp_path / "train"), "--output", str(protos), "--size", "0"]
    assert main(build + ["--backbone", "random:dinov3_test"]) == 0
    assert main(["prototypes", "apply", str(tmp_path / "scene.png"), "--prototypes", str(protos),
                 "--output", str(tmp_path / "out"), "--threshold", "0.5"]) == 0  # fmt: skip
    res = np.load(tmp_path / "out" / "scene.npz")
    names, labels, ood = list(res["classes"]), res["labels"], res["ood_mask"]
    blue, red = names.index("blue"), names.index("red")
    expected = np.zeros((8, 8), bool)
    expected[2:4, 1:3] = True
    assert (ood == expected).all()
    assert res["ood_score"][expected].min() > 20 * res["ood_score"][~expected].max()
    assert (labels[:, :4][~expected[:, :4]] == red).all() and (labels[:, 4:] == blue).all()
    assert (tmp_path / "out" / "scene.png").exists()
    assert main(["prototypes", "build", str(tmp_path / "scene.png"), "--backbone", "random:dinov3_test",
                 "--output", str(tmp_path / "x.safetensors")]) == 2  # fmt: skip


def test_batched_build_and_apply_equal_one_at_a_time(tmp_path):
    torch.manual_seed(0)
    model = trained_like(create_backbone("dinov3_test").eval())
    for i, name in enumerate(["a", "a", "b", "b", "b"]):  # two shapes per class
        (tmp_path / "train" / name).mkdir(parents=True, exist_ok=True)
        write_png(tmp_path / "train" / name / f"{i}.png", 96, i, crop=(64, 96) if i % 2 else None)
    one = build_prototypes(model, tmp_path / "train", size=None, per_class=2, batch_size=1, progress=False)
    batched = build_prototypes(model, tmp_path / "train", size=None, per_class=2, batch_size=4, progress=False)
    torch.testing.assert_close(batched.vectors, one.vectors, atol=1e-5, rtol=0)
    assert batched.threshold == pytest.approx(one.threshold, abs=1e-5)
    images = []
    for i in range(4):
        write_png(tmp_path / f"probe{i}.png", 80, 10 + i, crop=(48, 80) if i % 2 else None)
        images.append(decode_image(tmp_path / f"probe{i}.png"))
    results = list(apply_prototypes_to_images(model, one, iter(images), batch_size=3, device="cpu"))
    assert len(results) == 4
    for image, result in zip(images, results):
        single = apply_prototypes(model, one, image)
        assert torch.equal(result["labels"], single["labels"]) and np.array_equal(result["shown"], single["shown"])
        torch.testing.assert_close(result["ood_score"], single["ood_score"], atol=1e-5, rtol=0)
    assert not torch.allclose(results[0]["ood_score"], results[2]["ood_score"])  # a batch order mix-up would show


def test_prototypes_cli_on_cpu_in_bf16(image_folder, tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "list.csv").write_text("".join(f"{image_folder / n},{n[0]}\n" for n in ("a.png", "b.png")))
    protos = tmp_path / "p.safetensors"
    compute = ["--device", "cpu", "--dtype", "bf16", "--batch-size", "2"]
    assert main(["prototypes", "build", str(tmp_path / "train" / "list.csv"), "--backbone", "random:dinov3_test",
                 "--output", str(protos), "--size", "64", *compute]) == 0  # fmt: skip
    images = [str(image_folder / n) for n in ("a.png", "b.png", "c.png")]
    assert main(["prototypes", "apply", *images, "--prototypes", str(protos), "--output", str(tmp_path / "out"),
                 *compute]) == 0  # fmt: skip
    for name in ("a", "b", "c"):
        result = np.load(tmp_path / "out" / f"{name}.npz")
        assert result["ood_score"].shape == result["labels"].shape and np.isfinite(result["ood_score"]).all()
    assert capsys.readouterr().out.count("out of distribution") == 3
