"""The paired bootstrap: intervals that follow from hand-made cases, and metrics rebuilt from per-item sums."""

import pytest
import torch

from dinokit.eval.metrics import confusion_matrix, mean_iou, mean_iou_of
from dinokit.eval.significance import ItemStats, beyond_noise, mean_over_items, paired_bootstrap, percent_of


def test_percent_and_mean_rebuild_the_metric_from_item_sums():
    assert percent_of(torch.tensor([1, 0, 1, 1])).value() == 75.0
    assert percent_of(torch.tensor([3, 0]), torch.tensor([4, 6])).value() == 30.0  # keypoints, not pairs, count
    assert mean_over_items(torch.tensor([1.0, 2.0, 6.0])).value() == 3.0


def test_batched_miou_matches_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(0)
    confs = torch.randint(0, 5, (7, 4, 4), generator=g)
    confs[2, 3] = confs[2, :, 3] = 0  # a class absent from one matrix
    batched = mean_iou_of(confs)
    assert torch.allclose(batched, torch.tensor([mean_iou(c) for c in confs], dtype=torch.float64))


def test_a_model_right_everywhere_against_one_wrong_everywhere_is_a_change_of_exactly_100():
    right, wrong = percent_of(torch.ones(50)), percent_of(torch.zeros(50))
    assert paired_bootstrap(wrong, right) == (100.0, 100.0)
    assert paired_bootstrap(right, right) == (0.0, 0.0)


def test_pairing_removes_the_spread_that_both_models_share():
    # b is right exactly where a is, plus 5 more of 200 items: unpaired intervals would overlap, paired ones not
    a = (torch.arange(200) % 2 == 0).long()
    b = a.clone()
    b[torch.arange(1, 11, 2)] = 1
    low, high = paired_bootstrap(percent_of(a), percent_of(b))
    assert 0 < low <= 2.5 <= high <= 6.0 and beyond_noise((low, high))


def test_a_change_within_sampling_noise_is_not_a_clear_margin():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.rand(100, generator=g) < 0.5).long(), (torch.rand(100, generator=g) < 0.5).long()
    interval = paired_bootstrap(percent_of(a), percent_of(b))
    assert interval[0] < 0 < interval[1] and not beyond_noise(interval)
    assert not beyond_noise(interval, higher_is_better=False)


def test_lower_is_better_metrics_and_the_seeded_resampling():
    a = mean_over_items(torch.full((30,), 2.0) + torch.linspace(0, 1, 30))
    b = mean_over_items(torch.full((30,), 1.0) + torch.linspace(0, 1, 30))
    assert beyond_noise(paired_bootstrap(a, b), higher_is_better=False)
    noisy_a = mean_over_items(torch.linspace(0, 3, 30))
    assert paired_bootstrap(noisy_a, b, seed=3) == paired_bootstrap(noisy_a, b, seed=3)


def test_segmentation_items_are_confusion_matrices():
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [255, 0]])
    conf = confusion_matrix(pred, target, 2)
    per_image = torch.stack([conf.flatten(), conf.flatten()]).double()  # two images with the same confusion
    stats = ItemStats(per_image, lambda s: mean_iou_of(s.unflatten(-1, (2, 2))))
    assert stats.value() == pytest.approx(mean_iou(2 * conf))


def test_items_must_be_shared():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap(percent_of(torch.ones(3)), percent_of(torch.ones(4)))
