"""NCSN as a user runs it: `gen fit` then `gen test` on configs/ncsn_gmm.yaml (grid25), shortened."""

import torch
import yaml
from conftest import CONFIGS, read_metrics

from gen_lightning.cli import main

CONFIG = CONFIGS / "ncsn_gmm.yaml"


def shortened_config(workdir):
    """The config with what a 1,000-step fit needs: EMA over ~10 steps (the config's 0.995 spans ~200 steps), a
    smaller grid of samples, and the cosine schedule compressed to the shorter run."""
    config = yaml.safe_load(CONFIG.read_text())
    for callback in config["trainer"]["callbacks"]:
        if callback["class_path"].endswith("EMAWeightAveraging"):
            callback["init_args"]["decay"] = 0.9
        if callback["class_path"].endswith("SampleGrid"):
            callback["init_args"]["num_samples"] = 500
    config["model"]["init_args"]["scheduler"]["init_args"]["T_max"] = 10
    path = workdir / "ncsn_gmm.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


# 10 epochs of 100 batches of 256 (1,000 steps, a quarter of the config's) with a 3-block net at lr 2e-3. The
# smallest scales are learnt last, so sigma_L is 0.03 (still below the modes' std 0.05) over 30 levels, with eps
# 1.8e-4 to keep eps / sigma_L^2 = 0.2 as in the config; 5 Langevin steps per level instead of 20.
LEVELS, STEPS = 30, 5
FAST = [
    "--trainer.max_epochs", "10", "--data.init_args.n_train", "25600", "--data.init_args.batch_size", "256",
    "--trainer.limit_val_batches", "2", "--model.init_args.net.init_args.depth", "3",
    "--model.init_args.optimizer.init_args.lr", "2e-3",
    "--model.init_args.sigmas.init_args.sigma_min", "0.03", "--model.init_args.sigmas.init_args.num_levels", str(LEVELS),
    "--model.init_args.sampler.init_args.n_steps_each", str(STEPS), "--model.init_args.sampler.init_args.step_lr", "1.8e-4",
    "--speed.repeats", "1",
]


def test_fit_then_test_on_grid25(workdir):
    config = shortened_config(workdir)
    main(["fit", "--config", config, *FAST])
    ckpt = workdir / "checkpoints" / "ncsn_gmm" / "last.ckpt"
    assert list((workdir / "lightning_logs" / "ncsn_gmm").glob("version_*/samples/epoch_*.png"))
    assert "current_model_state" in torch.load(ckpt, weights_only=True)  # the EMA weights are the checkpoint's state_dict

    main(["test", "--config", config, *FAST, "--ckpt_path", str(ckpt)])
    report = read_metrics(workdir, "ncsn_gmm")
    m = report["metrics"]
    assert report["model"] == "gen_lightning.models.ncsn.NCSN"
    assert report["trained"]["epochs"] == 10
    assert "test/nll_nats" in report["omitted"] and "test/kl_data_model" in report["omitted"]
    assert report["sampling"]["network_evaluations_per_sample"] == LEVELS * STEPS + 1
    # The untrained net scores 0, so its samples stay spread like N(0, 12^2 I) plus Langevin noise: no mode covered,
    # DSM loss D/2 = 1. This 1,000-step fit covers 13 of the 25 modes (>= 20 of 2,500 samples within 3 std each),
    # with 40% of the samples within 3 std of a mode and DSM loss 0.53; the same recipe under other seeds covered
    # 18 and 21 (the full config: docs/results/ncsn.md). The thresholds leave room for that seed-to-seed spread.
    assert m["test/modes_covered"] >= 8
    assert m["test/high_quality_fraction"] >= 0.25
    assert m["test/loss"] < 0.7
