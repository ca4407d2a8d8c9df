"""The flow as a user runs it: `gen fit` and `gen test` on flow_gmm.yaml, and a diverging run."""

import pytest
import torch
from conftest import CONFIGS, read_metrics

from gen_lightning.cli import main

CONFIG = str(CONFIGS / "flow_gmm.yaml")
# Shorter than the config's 60 epochs so the suite stays fast: 4 epochs of 80 batches of 256 (320 steps), a
# smaller RealNVP (12 couplings, 64 wide), and the cosine schedule compressed to match.
FAST = [
    "--trainer.max_epochs", "4", "--data.init_args.n_train", "20480", "--data.init_args.batch_size", "256",
    "--trainer.limit_val_batches", "2", "--model.init_args.scheduler.init_args.T_max", "4",
    "--model.init_args.net.init_args.num_couplings", "12", "--model.init_args.net.init_args.hidden", "64",
    "--model.init_args.net.init_args.num_layers", "2", "--model.init_args.optimizer.init_args.lr", "3e-3",
    "--speed.batch_size", "64", "--speed.repeats", "1",
]


def test_fit_then_test_on_ring8(workdir):
    main(["fit", "--config", CONFIG, *FAST])
    ckpt = workdir / "checkpoints" / "flow_gmm" / "last.ckpt"
    assert list((workdir / "lightning_logs" / "flow_gmm").glob("version_*/samples/epoch_*.png"))

    main(["test", "--config", CONFIG, *FAST, "--ckpt_path", str(ckpt)])
    report = read_metrics(workdir, "flow_gmm")
    m = report["metrics"]
    assert report["model"] == "gen_lightning.models.flow.Flow"
    assert report["trained"]["epochs"] == 4
    assert "test/bpd" in report["omitted"] and "test/kl_data_model" not in report["omitted"]
    # KL(data || model) = E[log p_data] + NLL, both exact. The data's entropy is ln 8 + ln(2 pi e 0.02^2) = -2.91
    # nats (8 separated modes of std 0.02), so KL sits 2.91 above the NLL. A broad Gaussian over the ring scores
    # ~6.4 nats (tests/models/test_flow.py); these 320 steps reach ~2 and cover most of the 8 modes
    # (the full config: docs/results/flows.md).
    assert m["test/kl_data_model"] == pytest.approx(m["test/nll_nats"] + 2.91, abs=0.1)
    assert m["test/kl_data_model"] < 2.6
    assert m["test/modes_covered"] >= 6


def test_divergence_stops_with_one_line_and_keeps_the_last_checkpoint(workdir, capsys):
    tiny = ["--data.init_args.n_train", "1024", "--trainer.limit_val_batches", "1", "--trainer.max_epochs", "1"]
    main(["fit", "--config", CONFIG, *tiny])
    last = workdir / "checkpoints" / "flow_gmm" / "last.ckpt"
    good = last.read_bytes()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", CONFIG, *tiny, "--model.init_args.optimizer.init_args.lr", "1e30"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: the ") and "became" in line and "learning rate 1e+30" in line
    assert "This run wrote no checkpoint; those already in" in line and "last.ckpt" in line
    assert last.read_bytes() == good  # no checkpoint of the diverged weights
    assert torch.load(last, weights_only=True)["gen_lightning"]["model_class"] == "gen_lightning.models.flow.Flow"
