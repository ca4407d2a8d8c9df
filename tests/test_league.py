"""The MNIST league (benchmarks/mnist_league.py): its real-data floors, on the real digits in ../shared/data, and its archive of runs."""

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

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


class FixedFloors:
    """The league table's real-data floors, fixed (RealDigits is tested above)."""

    def floor(self, num_samples):
        return 4.65

    def class_mix_floor(self, histogram, draws=3):
        return 5.0


def test_a_run_is_archived_with_the_league_and_a_lost_one_keeps_its_line(tmp_path):
    from test_report import make_run  # a fit dir and a test dir as gen writes them

    mod = league()
    output = tmp_path / "docs" / "mnist_league"
    output.mkdir(parents=True)
    (output / "README.md").write_text("| recipe | FID |\n|---|---|\n| gan_mnist | 10.38 | 5.82 |\n| vae_mnist (carried) | 139.94 |\n")
    test_dir = make_run(tmp_path / "runs" / "lightning_logs" / "cpu", "ddpm_mnist", "SelfGuidedDDPM",
                        {"classifier_fid": 12.5, "classes_covered": 10}, 0.2, 90.0, "MNIST", {860: (7.0, 40.0)})
    torch.save({"samples": torch.zeros(10, 1, 28, 28, dtype=torch.uint8), "labels": None}, tmp_path / "samples.pt")
    row = mod.archive({"name": "ddpm_mnist", "metrics_json": str(test_dir / "metrics.json"),
                       "samples": str(tmp_path / "samples.pt"), "test_seconds": 170.0}, output)
    assert row["metrics_json"] == "runs/ddpm_mnist/metrics.json" and row["samples"] == "runs/ddpm_mnist/samples.pt"
    shutil.rmtree(tmp_path / "runs")  # the workdir is gone; the archive answers for the run
    assert mod.evidence(row, "metrics_json", output) == output / "runs" / "ddpm_mnist" / "metrics.json"
    lost = [{"name": "gan_mnist", "metrics_json": "/nowhere/metrics.json", "test_seconds": 26.0},
            {"name": "vae_mnist", "metrics_json": "/nowhere/metrics.json", "test_seconds": 191.0}]
    lines = mod.league_table([row, *lost], FixedFloors(), 1000, output)
    assert lines[2].startswith("| ddpm_mnist | 12.50 | n/a | 10 |") and lines[2].endswith("| 0.2 | 170 | 90 |")
    assert lines[3] == "| gan_mnist (carried) | 10.38 | 5.82 |" and lines[4] == "| vae_mnist (carried) | 139.94 |"
    assert "carried" in lines[-1]
    mod.mosaic([row, *lost], output / "mosaic.png", output)  # only the archived row has samples
    assert (output / "mosaic.png").stat().st_size > 0
