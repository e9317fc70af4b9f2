"""Each metric against cases computed by hand."""

import math
import sys

import pytest
import torch

from dinokit.errors import UserError
from dinokit.eval.knn import knn_eval, knn_vote, nearest_neighbours
from dinokit.eval.metrics import average_precision, confusion_matrix, depth_errors, mean_iou, recall_at, top1_accuracy


def test_top1():
    assert top1_accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 75.0


def test_miou_skips_ignore_label_and_absent_classes():
    target = torch.tensor([[0, 0, 1, 255], [1, 1, 255, 3]])
    pred = torch.tensor([[0, 1, 1, 0], [1, 0, 2, 3]])
    conf = confusion_matrix(pred, target, num_classes=4)
    # labelled pixels: (t0,p0) (t0,p1) (t1,p1) (t1,p1) (t1,p0) (t3,p3); the two 255 pixels are skipped
    assert conf.sum() == 6
    assert conf[0].tolist() == [1, 1, 0, 0] and conf[1].tolist() == [1, 2, 0, 0] and conf[3, 3] == 1
    # IoU: class 0: 1 / (2 + 2 − 1) = 1/3; class 1: 2 / (3 + 3 − 2) = 1/2; class 2: absent; class 3: 1
    assert mean_iou(conf) == pytest.approx(100 * (1 / 3 + 1 / 2 + 1) / 3)


def test_miou_counts_a_class_predicted_but_absent_as_zero():
    conf = confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), num_classes=2)
    # class 0: IoU 1/2; class 1: predicted once, never true → IoU 0 and it counts
    assert mean_iou(conf) == pytest.approx(25.0)


def test_average_precision_with_junk():
    # ranking (gallery ids): 7 junk, 3 pos, 5 neg, 9 junk, 2 pos, 4 neg; positives {3, 2, 8}; 8 never retrieved
    ranking = [7, 3, 5, 9, 2, 4]
    # without junk: 3 (rank 0), 5, 2 (rank 2), 4 → positive ranks 0 and 2, n = 3
    # AP = [(1 + 1/1) + (1/2 + 2/3)] / (2·3)
    expected = ((1 + 1) + (1 / 2 + 2 / 3)) / 6
    assert average_precision(ranking, {3, 2, 8}, junk={7, 9}) == pytest.approx(expected)
    # junk counted as negatives instead lowers it: positive ranks 1 and 4 (precision 0/1 before the first)
    lower = ((0 / 1 + 1 / 2) + (1 / 4 + 2 / 5)) / 6
    assert average_precision(ranking, {3, 2, 8}) == pytest.approx(lower)
    assert average_precision([1, 2, 0], {1, 2}) == 1.0


def test_recall_at_thresholds():
    errors = torch.tensor([0.5, 3.0, 5.0, 7.5, 30.0])
    assert recall_at(errors, [1, 5, 10]) == {"recall@1": 20.0, "recall@5": 60.0, "recall@10": 80.0}


def test_depth_errors():
    gt = torch.tensor([1.0, 2.0, 4.0, 0.0])
    pred = torch.tensor([1.0, 3.0, 3.0, 9.0])
    m = depth_errors(pred, gt, valid=gt > 0)  # the last pixel has no measurement
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 1) / 3))
    assert m["abs_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4) / 3)
    # max(p/g, g/p): 1, 1.5, 4/3 → only the first is below 1.25
    assert m["delta1"] == pytest.approx(100 / 3)


def test_knn_vote_weights_by_exp_similarity():
    # three neighbours: class 0 at sim 0.9, class 1 at 0.8 and 0.8. A majority vote says 1;
    # exp(0.9/0.07) = 3.9e5 > 2·exp(0.8/0.07) = 1.9e5 says 0. With T = 1: e^0.9 = 2.46 < 2e^0.8 = 4.45 says 1.
    sims = torch.tensor([[0.9, 0.8, 0.8]])
    labels = torch.tensor([[0, 1, 1]])
    votes = knn_vote(sims, labels, num_classes=2, temperature=0.07)
    expected = torch.tensor([math.exp(0.9 / 0.07), 2 * math.exp(0.8 / 0.07)], dtype=torch.float64)
    assert torch.allclose(votes[0], expected / expected.sum(), rtol=1e-6)
    assert votes.argmax().item() == 0
    assert knn_vote(sims, labels, num_classes=2, temperature=1.0).argmax().item() == 1


def test_knn_eval_by_hand():
    # 2-D features; cosine neighbours of the test point (1, 0.1): a (1, 0) cls 0, b (1, 0.3) cls 1, c (0, 1) cls 1
    train = torch.tensor([[1.0, 0.0], [1.0, 0.3], [0.0, 1.0], [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    test_labels = torch.tensor([0, 1])
    r = knn_eval(train, train_labels, test, test_labels, ks=(1, 3, 10))
    # k=1: nearest of the first is a (cos 0.995) vs b (cos 0.987) → 0 ✓; second → c ✓
    assert r["top1_k1"] == 100.0
    # k=3: first: a, b, c with weights exp(cos/0.07): a wins over b + c (c has cos 0.0995, negligible) ✓
    assert r["top1_k3"] == 100.0
    # k=10 is capped at the 4 training points; (-1, 0) has cos < 0 and adds little
    assert set(r) == {"top1_k1", "top1_k3", "top1_k10"}


def test_faiss_and_torch_search_agree():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(500, 32, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(40, 32, generator=g), dim=1)
    s1, i1 = nearest_neighbours(queries, gallery, 20, use_faiss=False)
    s2, i2 = nearest_neighbours(queries, gallery, 20, use_faiss=True)
    assert torch.equal(i1, i2)
    assert torch.allclose(s1, s2, atol=1e-5)


def test_faiss_asked_for_but_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails as if it were not installed
    with pytest.raises(UserError, match=r"pip install 'dinokit\[faiss\]'"):
        nearest_neighbours(torch.eye(2), torch.eye(2), 1, use_faiss=True)
