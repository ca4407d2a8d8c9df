"""The MNIST league's real-data floors (benchmarks/mnist_league.py), on the real digits in ../shared/data."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def league():
    spec = importlib.util.spec_from_file_location("mnist_league", REPO / "benchmarks" / "mnist_league.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST is not in ../shared/data")
def test_class_mix_floor_charges_the_class_make_up_alone():
    real = league().RealDigits(SHARED_DATA)
    floor = real.floor(1000)
    assert 1.0 < floor < 10.0  # 1,000 real digits against the test split: sampling noise only
    balanced = real.class_mix_floor([100] * 10)
    assert abs(balanced - floor) < 3.0  # real digits in even proportions score as a uniform draw
    uneven = real.class_mix_floor([150, 50, 70, 130, 50, 110, 90, 120, 60, 170])  # class KL to uniform ~0.07
    one_digit = real.class_mix_floor([1000] + [0] * 9)
    assert balanced + 5 < uneven < one_digit  # the further from MNIST's own mix, the higher, though every digit is real
    assert one_digit > 100
    assert real.class_mix_floor([100] * 10, draws=1) == real.class_mix_floor([100] * 10, draws=1)  # seeded draws
