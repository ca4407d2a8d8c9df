"""The offline default job, as a user runs it: `gen fit`, `gen test`, `gen predict` on vae_gmm.yaml."""

import os
import signal

import lightning as L
import pytest
import torch
from conftest import CONFIGS, read_metrics

from gen_lightning.cli import main
from gen_lightning.models.vae import VAE

CONFIG = str(CONFIGS / "vae_gmm.yaml")
# A shorter run than the config's default, so the suite stays fast; the assertions still need a trained model.
FAST = ["--trainer.max_epochs", "8", "--data.init_args.n_train", "20000", "--model.init_args.iw_samples", "64",
        "--model.init_args.kl_warmup_steps", "100", "--model.init_args.scheduler.init_args.T_max", "8"]  # fmt: skip


def test_fit_test_predict_and_reload(workdir):
    main(["fit", "--config", CONFIG, *FAST])
    ckpt = workdir / "checkpoints" / "vae_gmm" / "last.ckpt"
    assert ckpt.is_file()
    assert list((workdir / "lightning_logs" / "vae_gmm" / "version_0").glob("events.out.tfevents.*"))
    assert list((workdir / "lightning_logs" / "vae_gmm" / "version_0" / "samples").glob("epoch_*.png"))

    main(["test", "--config", CONFIG, *FAST, "--ckpt_path", str(ckpt)])
    report = read_metrics(workdir, "vae_gmm")
    m = report["metrics"]
    assert report["model"] == "gen_lightning.models.vae.VAE"
    assert report["trained"]["epochs"] == 8
    # the IWAE bound is tighter than the ELBO, and both are finite
    assert m["test/nll_nats"] <= m["test/nelbo_nats"] + 1e-3
    # A collapsed VAE (decoder ignores z: one broad Gaussian) scores KL(data || model) ~ 6.5 nats here;
    # a VAE that learned the ring is well below (1.8 after the full config).
    assert m["test/kl_data_model"] < 4.5
    assert m["test/modes_covered"] >= 7
    assert "test/bpd" in report["omitted"]  # bits/dim does not apply to 2-D continuous data
    # what each callback found: the fit's stability and speed read back from the checkpoint, the sampling conditions,
    # and the meaning of the density metrics (DensityMetrics: the IWAE bound makes KL an upper bound)
    assert report["training"]["stability"]["steps"] > 0 and report["training"]["speed"]["train_seconds"] > 0
    assert report["sampling"]["device"] == "cpu" and "upper bound" in report["conventions"]["test/kl_data_model"]

    out = workdir / "out" / "samples.pt"
    main(["predict", "--config", CONFIG, "--ckpt_path", str(ckpt), "--samples.num_samples", "300", "--samples.output", str(out)])
    saved = torch.load(out)
    assert saved["samples"].shape == (300, 2) and saved["samples"].dtype == torch.float32
    assert saved["labels"] is None
    assert out.with_suffix(".png").is_file()

    # the checkpoint reloads without the config and samples the same points with the same seed
    model = VAE.load_from_checkpoint(ckpt)
    assert model.data_shape == (2,)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    torch.testing.assert_close(model.sample(5, generator=g1), model.sample(5, generator=g2))


def test_resume_continues_exactly(workdir, tmp_path, monkeypatch):
    """Two epochs in one go == one epoch, then `--ckpt_path last.ckpt` for the second, bit for bit."""
    short = ["--data.init_args.n_train", "2000", "--trainer.limit_val_batches", "2"]
    ckpt = "checkpoints/vae_gmm/last.ckpt"
    for run in ("straight", "resumed"):
        (tmp_path / run).mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    main(["fit", "--config", CONFIG, *short, "--trainer.max_epochs", "2"])
    monkeypatch.chdir(tmp_path / "resumed")
    main(["fit", "--config", CONFIG, *short, "--trainer.max_epochs", "1"])
    main(["fit", "--config", CONFIG, *short, "--trainer.max_epochs", "2", "--ckpt_path", ckpt])
    a = torch.load(tmp_path / "straight" / ckpt, weights_only=True)
    b = torch.load(tmp_path / "resumed" / ckpt, weights_only=True)
    assert a["epoch"] == b["epoch"] == 1 and a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


class SignalAt(L.Callback):
    """Test helper: sends this process `signum` once, at the end of training step `step` (as `kill` would)."""

    def __init__(self, step: int, signum: int = int(signal.SIGTERM)):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_a_checkpoint_that_resumes_exactly(workdir, tmp_path, monkeypatch, capsys, signum, status):
    """SIGTERM or Ctrl+C in the middle of epoch 1 saves last.ckpt of that step and exits 143 / 130; --ckpt_path on it
    ends bit for bit where an uninterrupted run ends."""
    short = ["--data.init_args.n_train", "2000", "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "2"]
    ckpt = "checkpoints/vae_gmm/last.ckpt"
    for run in ("straight", "interrupted"):
        (tmp_path / run).mkdir()
    monkeypatch.chdir(tmp_path / "straight")
    main(["fit", "--config", CONFIG, *short])
    monkeypatch.chdir(tmp_path / "interrupted")
    # 2,000 points in batches of 512: 4 steps an epoch; the signal comes after step 6, the 2nd batch of epoch 1
    helper = {"class_path": f"{__name__}.SignalAt", "init_args": {"step": 6, "signum": int(signum)}}
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", CONFIG, *short, "--trainer.callbacks+", str(helper).replace("'", '"')])
    assert exc.value.code == status
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {signal.Signals(signum).name} at step 6 (epoch 1, after batch 2 of 4); saved ")
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 6 and saved["epoch"] == 1
    assert saved["GMMDataModule"] == {"epoch": 1, "batches_done": 2, "batch_size": 512}

    main(["fit", "--config", CONFIG, *short, "--ckpt_path", ckpt])
    a = torch.load(tmp_path / "straight" / ckpt, weights_only=True)
    b = torch.load(tmp_path / "interrupted" / ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in a["optimizer_states"][0]["state"]:
        assert torch.equal(a["optimizer_states"][0]["state"][k]["exp_avg"], b["optimizer_states"][0]["state"][k]["exp_avg"])
