import math

import torch
import torch.nn.functional as F

from dinokit.data.transforms import normalize, resize, to_float
from dinokit.demo_photo import sample_photo
from dinokit.tools.matching import (
    describe,
    grid_keypoints,
    match_keypoints,
    project_points,
    sample_descriptors,
    warp_image,
)


def test_sampling_at_centres_and_between():
    torch.manual_seed(0)
    fmap = torch.randn(3, 4, 8)  # h=3, w=4, D=8, patch 16
    kp = grid_keypoints((3, 4), 16)
    assert kp[:2].tolist() == [[8.0, 8.0], [24.0, 8.0]]
    torch.testing.assert_close(sample_descriptors(fmap, kp, 16, normalize=False), fmap.reshape(12, 8))
    mid = sample_descriptors(fmap, torch.tensor([[16.0, 8.0], [16.0, 16.0], [0.0, 0.0]]), 16, normalize=False)
    torch.testing.assert_close(mid[0], (fmap[0, 0] + fmap[0, 1]) / 2)  # halfway between two centres
    torch.testing.assert_close(mid[1], fmap[:2, :2].mean((0, 1)))
    torch.testing.assert_close(mid[2], fmap[0, 0])  # the image corner takes the corner patch
    assert torch.allclose(sample_descriptors(fmap, kp, 16).norm(dim=-1), torch.ones(12))


def test_mutual_nn_and_ratio_test_on_known_permutation():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(50, 32), dim=-1)
    perm = torch.randperm(50)
    b = F.normalize(a[perm] + 0.05 * torch.randn(50, 32), dim=-1)  # b[k] = a[perm[k]]
    b = torch.cat([b, b[:1]])  # an exact duplicate: the ratio test must drop a[perm[0]]
    pairs, scores = match_keypoints(a, b, ratio=0.9)
    assert len(pairs) == 49 and (scores > 0.9).all()
    assert torch.equal(perm[pairs[:, 1]], pairs[:, 0])  # every kept match is right
    assert perm[0] not in pairs[:, 0]
    assert len(match_keypoints(a, b, ratio=None)[0]) == 50  # mutual only: the duplicate pair is kept once


def test_matching_recovers_a_known_homography(v3_model):
    img = resize(to_float(sample_photo()[0]), (224, 224))
    angle, s, c = math.radians(8), 1.05, 112.0
    H = torch.tensor([[1, 0, c + 6], [0, 1, c - 4], [0, 0, 1.0]]) @ torch.tensor(
        [[s * math.cos(angle), -s * math.sin(angle), 0], [s * math.sin(angle), s * math.cos(angle), 0], [1e-4, 0, 1]]
    ) @ torch.tensor([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]])
    kp_a, desc_a = describe(v3_model, normalize(img))
    kp_b, desc_b = describe(v3_model, normalize(warp_image(img, H)), layer=1)
    _, desc_a1 = describe(v3_model, normalize(img), layer=1)
    assert torch.allclose(desc_a1, desc_a, atol=1e-5)  # layer = depth − 1 is the final output
    pairs, _ = match_keypoints(desc_a, desc_b, ratio=0.9)
    err = (project_points(H, kp_a)[pairs[:, 0]] - kp_b[pairs[:, 1]]).norm(dim=-1)
    precision = (err < 16).float().mean()
    shuffled = (project_points(H, kp_a)[pairs[:, 0]] - kp_b[pairs[torch.randperm(len(pairs)), 1]]).norm(dim=-1)
    assert len(pairs) >= 20 and precision >= 0.4 and (shuffled < 16).float().mean() < 0.1
