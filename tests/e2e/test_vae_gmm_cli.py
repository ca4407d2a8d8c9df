"""The offline default job, as a user runs it: `gen fit`, `gen test`, `gen predict` on vae_gmm.yaml."""

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
    assert m["test/nll_iwae_nats"] <= m["test/nelbo_nats"] + 1e-3
    # A collapsed VAE (decoder ignores z: one broad Gaussian) scores KL(data || model) ~ 6.5 nats here;
    # a VAE that learned the ring is well below (1.8 after the full config).
    assert m["test/kl_data_model"] < 4.5
    assert m["test/modes_covered"] >= 7
    assert "test/bpd_iwae" in report["omitted"]  # bits/dim does not apply to 2-D continuous data

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
