"""`gen compare` on small fixture runs: every table and figure is written, n/a where a metric is missing."""

import csv
import json

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image

from gen_lightning.cli import main
from gen_lightning.report import higher_is_better, normalized, radar_scores


def make_run(root, name, model, metrics, loss_cv, ms, dataset="GMM-grid25", quality=None, relative_to=None):
    """A fit dir (TensorBoard scalars + a sample grid) and a test dir (metrics.json), as gen writes them.
    `quality`: {step: (fit minutes, classifier FID)} as SampleQuality logs them."""
    fit_dir, test_dir = root / name / "version_0", root / name / "version_1"
    writer = SummaryWriter(str(fit_dir))
    for step in range(20):
        writer.add_scalar("train/loss_step", 1.0 / (step + 1), step)
        writer.add_scalar("val/loss", 2.0 / (step + 1), step)
    for step, (minutes, fid) in (quality or {}).items():
        writer.add_scalar("val/fit_minutes", minutes, step)
        writer.add_scalar("val/classifier_fid", fid, step)
    writer.close()
    (fit_dir / "samples").mkdir()
    save_image(torch.rand(4, 1, 8, 8), fit_dir / "samples" / "epoch_0001.png")
    test_dir.mkdir(parents=True)
    report = {
        "model": f"gen_lightning.models.x.{model}",
        "data": {"dataset": dataset},
        "trained": {"epochs": 3, "fit_log_dir": str(fit_dir.relative_to(relative_to) if relative_to else fit_dir)},
        "metrics": {f"test/{k}": v for k, v in metrics.items()},
        "training": {"stability": {"loss_cv_tail": loss_cv}, "speed": {"fit_wall_seconds": 10.0, "train_images_per_second": 1000.0}},
        "num_parameters": 1234,
    }
    report["metrics"]["test/sample_ms_per_img"] = ms
    (test_dir / "metrics.json").write_text(json.dumps(report))
    return test_dir


def test_compare_writes_tables_and_figures(tmp_path):
    logs = tmp_path / "lightning_logs"
    make_run(logs, "vae_gmm", "VAE", {"modes_covered": 20, "reverse_kl_modes": 0.2, "kl_data_model": 1.5}, 0.1, 0.01)
    make_run(logs, "gan_gmm", "GAN", {"modes_covered": 25, "reverse_kl_modes": 0.02}, 0.3, 0.02)
    out = tmp_path / "compare"
    main(["compare", str(logs / "*" / "version_1"), "--output", str(out)])
    for name in ("compare.md", "compare.csv", "bars.png", "heatmap.png", "radar.png", "cube.png", "curves.png",
                 "quality_vs_minutes.png", "samples.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    main(["compare", str(logs / "*" / "version_1"), "--output", str(out)])  # again: replaced, not one more event file
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    rows = list(csv.DictReader((out / "compare.csv").open()))
    by_run = {r["run"]: r for r in rows}
    assert by_run["gan_gmm"]["kl_data_model"] == "n/a"  # the GAN has no density: shown as n/a, never 0
    assert by_run["vae_gmm"]["modes_covered"] == "20" and by_run["gan_gmm"]["parameters"] == "1234"


def test_normalization_is_min_max_with_one_best():
    class R:  # the two fields normalized() reads
        def __init__(self, **m):
            self.metrics = m

    runs = [R(reverse_kl_modes=0.2, modes_covered=20), R(reverse_kl_modes=0.1, modes_covered=25), R(modes_covered=22)]
    assert normalized(runs, "reverse_kl_modes") == [0.0, 1.0, None]  # lower is better
    assert normalized(runs, "modes_covered") == pytest.approx([0.0, 1.0, 0.4])  # higher is better
    scores = radar_scores(runs)
    assert scores["controllability"] == [None, None, None]


def test_every_metric_has_a_direction():
    for m in ("classifier_fid", "fid", "kid_mean", "nll_nats", "bpd", "label_accuracy", "modes_covered",
              "high_quality_fraction", "sample_ms_per_img", "train_images_per_second", "loss_cv_tail", "inception_score",
              "nll_nats", "bpd", "loss", "energy_distance", "buffer_energy_distance"):  # fmt: skip
        higher_is_better(m)
    assert not higher_is_better("buffer_energy_distance")  # a distance between samples and data
    with pytest.raises(ValueError, match="no direction"):
        higher_is_better("mystery")


def test_quality_against_minutes_pairs_the_two_curves_by_step(tmp_path):
    from gen_lightning.report import load_run, quality_against_minutes

    logs = tmp_path / "lightning_logs"
    path = make_run(logs, "gan_mnist", "GAN", {"classifier_fid": 20.0}, 0.1, 0.1, "MNIST", {430: (4.0, 60.0), 860: (8.5, 25.0)})
    assert quality_against_minutes(load_run(path)) == ([4.0, 8.5], [60.0, 25.0])
    plain = make_run(logs, "vae_mnist", "VAE", {"classifier_fid": 30.0}, 0.1, 0.1, "MNIST")
    assert quality_against_minutes(load_run(plain)) is None
    # the league's layout: logger name cpu/<recipe>, fit_log_dir relative to the folder `gen fit` ran in, and
    # `gen compare` called from somewhere else
    league = make_run(logs / "cpu", "ebm_mnist", "EBM", {"classifier_fid": 150.0}, 0.1, 0.1, "MNIST",
                      {500: (4.0, 280.0), 1000: (9.5, 199.0)}, relative_to=tmp_path)
    assert quality_against_minutes(load_run(league)) == ([4.0, 9.5], [280.0, 199.0])


def test_nll_against_minutes_reads_the_validation_loss_of_autoregressive_models_only(tmp_path):
    from gen_lightning.report import load_run, nll_against_minutes

    logs = tmp_path / "lightning_logs"
    # make_run logs val/loss = 2 / (step + 1) at steps 0-19; FitClock's minutes at steps 1 and 3
    ar = make_run(logs, "pixelcnn_mnist", "AutoregressiveModel", {"nll_nats": 86.0}, 0.1, 20.0, "MNIST", relative_to=None)
    writer = SummaryWriter(str(logs / "pixelcnn_mnist" / "version_0"))
    writer.add_scalar("val/fit_minutes", 2.0, 1)
    writer.add_scalar("val/fit_minutes", 6.0, 3)
    writer.close()
    assert nll_against_minutes(load_run(ar)) == ([2.0, 6.0], [1.0, 0.5])
    other = make_run(logs, "ddpm_mnist", "DDPM", {"classifier_fid": 12.5}, 0.2, 90.0, "MNIST", {1: (2.0, 40.0)})
    assert nll_against_minutes(load_run(other)) is None  # a DDPM's val/loss is an eps-MSE, not an NLL


def test_runs_of_different_datasets_are_not_ranked_together(tmp_path, capsys):
    logs = tmp_path / "lightning_logs"
    make_run(logs, "vae_gmm", "VAE", {"modes_covered": 20}, 0.1, 0.01, "GMM-ring8")
    make_run(logs, "gan_gmm", "GAN", {"modes_covered": 25}, 0.3, 0.02, "GMM-grid25")
    with pytest.raises(SystemExit, match=r"one dataset at a time, got 2 \(GMM-grid25: gan_gmm; GMM-ring8: vae_gmm\)"):
        main(["compare", str(logs / "*" / "version_1"), "--output", str(tmp_path / "out")])


def test_an_archived_run_compares_as_the_original_after_its_fit_folder_is_gone(tmp_path):
    import shutil

    from gen_lightning.report import archive_run, load_run, quality_against_minutes

    logs = tmp_path / "lightning_logs"
    path = make_run(logs, "ddpm_mnist", "DDPM", {"classifier_fid": 12.5}, 0.2, 90.0, "MNIST", {860: (7.0, 40.0), 1720: (14.0, 20.0)})
    original = load_run(path)
    dest = archive_run(path, tmp_path / "docs" / "runs" / "ddpm_mnist")
    shutil.rmtree(logs)  # the fit's folder and the test run are gone: only the archive is left
    archived = load_run(dest)
    assert archived.name == "ddpm_mnist" and archived.metrics == original.metrics and archived.info == original.info
    assert archived.curves == original.curves and set(archived.curves) == {"train/loss", "val/loss", "val/fit_minutes",
                                                                           "val/classifier_fid"}
    assert quality_against_minutes(archived) == ([7.0, 14.0], [40.0, 20.0])
    assert archived.sample_grid == dest / "samples.png" and archived.sample_grid.stat().st_size > 0
    out = tmp_path / "compare"
    main(["compare", str(dest), "--output", str(out)])
    assert list(csv.DictReader((out / "compare.csv").open()))[0]["classifier_fid"] == "12.5"
