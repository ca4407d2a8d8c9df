"""Improved precision/recall (Kynkäänniemi et al. 2019) on 1-D point sets worked out by hand."""

import pytest
import torch

from gen_lightning.errors import ConfigError
from gen_lightning.metrics.precision_recall import fraction_inside, knn_radii, precision_recall


def points(*values):
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)  # (N,) -> (N, 1)


@pytest.mark.parametrize("chunk", [1, 2, 1000])
def test_knn_radii_exclude_the_point_itself(chunk):
    # distances from 0: 1 3 6 10 (2nd: 3); from 1: 1 2 5 9 (2); from 3: 2 3 3 7 (3); from 6: 3 4 5 6 (4); from 10: 4 7 9 10 (7)
    assert knn_radii(points(0, 1, 3, 6, 10), k=2, chunk=chunk).tolist() == [3, 2, 3, 4, 7]


def test_precision_and_recall_by_hand():
    real = points(0, 1, 2, 3, 4)  # k=1 radii: 1 each, so the real manifold is [-1, 5]
    fake = points(0.5, 10)  # k=1 radii: 9.5 each, so the fake manifold is [-9, 19.5]
    pr = precision_recall(real, fake, k=1)
    assert pr == {"precision": 0.5, "recall": 1.0}  # 10 lies outside [-1, 5]; every real point lies in [-9, 19.5]


def test_a_collapsed_generator_has_precision_but_no_recall():
    real = points(*range(20))
    fake = points(*([5.0] * 10))  # all samples on one real point: radii 0
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == 1.0 and pr["recall"] == pytest.approx(1 / 20)  # only 5 itself is within 0 of a sample


def test_identical_sets_score_one():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x.clone(), k=3) == {"precision": 1.0, "recall": 1.0}


def test_a_ball_includes_its_boundary():
    assert fraction_inside(points(2.0), points(0.0), torch.tensor([2.0])) == 1.0


def test_too_few_samples_for_k():
    with pytest.raises(ConfigError, match="k=3 needs more than 3 generated samples"):
        precision_recall(points(0, 1, 2, 3, 4), points(0, 1, 2), k=3)
