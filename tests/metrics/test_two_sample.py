"""The energy distance on hand-made samples."""

import pytest
import torch

from gen_lightning.metrics.two_sample import energy_distance


def test_hand_computed_values():
    x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[10.0], [11.0]])
    # E|X-Y| = (10 + 11 + 9 + 10)/4 = 10; E|X-X'| = E|Y-Y'| = 1 (the zero diagonal left out)
    assert energy_distance(x, y).item() == pytest.approx(2 * 10 - 1 - 1)
    x, y = torch.tensor([[0.0], [2.0]]), torch.tensor([[1.0], [3.0]])
    # E|X-Y| = (1 + 3 + 1 + 1)/4 = 1.5; E|X-X'| = E|Y-Y'| = 2: the unbiased estimate can be negative
    assert energy_distance(x, y).item() == pytest.approx(3.0 - 2.0 - 2.0)


def test_symmetric_shift_invariant_and_flattening():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 3, 2, 2, generator=g), torch.randn(40, 3, 2, 2, generator=g) + 1
    d = energy_distance(x, y)
    torch.testing.assert_close(energy_distance(y, x), d)
    torch.testing.assert_close(energy_distance(x + 5, y + 5), d, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(energy_distance(x.flatten(1), y.flatten(1)), d)


def test_separates_distributions():
    g = torch.Generator().manual_seed(0)
    same = energy_distance(torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g))
    shifted = energy_distance(torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g) + 1)
    assert abs(same.item()) < 0.05 < shifted.item()


def test_needs_two_points():
    with pytest.raises(ValueError, match=">= 2 points"):
        energy_distance(torch.zeros(1, 2), torch.zeros(3, 2))
