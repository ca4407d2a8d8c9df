"""Bad input gets one clear line naming the bad value and the fix, and `gen` exits 2."""

import json

import pytest
import torch
from conftest import CONFIGS

from gen_lightning.cli import main
from gen_lightning.errors import CheckpointMismatchError
from gen_lightning.likelihoods import Gaussian
from gen_lightning.models.vae import VAE
from gen_lightning.nets.mlp import MLP

GMM = str(CONFIGS / "vae_gmm.yaml")
TINY = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--data.init_args.n_train", "512"]


def run_error(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


def one_line_error(capsys, args: list[str]) -> str:
    """The one `error: ...` line (Lightning's own progress and info lines may precede it)."""
    err = run_error(capsys, args)
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    return errors[0]


def test_unknown_class_path(workdir, capsys):
    err = run_error(capsys, ["fit", "--config", GMM, "--model.init_args.encoder", "gen_lightning.nets.mlp.NoSuchNet"])
    assert "NoSuchNet" in err


def test_unknown_model_class_path(workdir, capsys):
    err = run_error(capsys, ["fit", "--config", GMM, "--model", "gen_lightning.models.vae.NoSuchModel"])
    assert "NoSuchModel" in err


def test_missing_mnist_root_offline(workdir, capsys):
    missing = workdir / "no_data_here"
    data = json.dumps({"class_path": "gen_lightning.data.MNISTDataModule", "init_args": {"root": str(missing)}})
    err = one_line_error(capsys, ["fit", "--config", GMM, "--data", data, "--trainer.max_steps", "1"])
    assert str(missing) in err and "download" in err


def test_model_shapes_that_do_not_fit_the_data(workdir, capsys):
    # an encoder built for 3-D inputs on 2-D GMM data
    err = one_line_error(capsys, ["fit", "--config", GMM, *TINY, "--model.init_args.encoder.init_args.in_shape", "[3]"])
    assert "(2,)" in err or "[2]" in err or "shape" in err


def test_negative_learning_rate(workdir, capsys):
    err = one_line_error(capsys, ["fit", "--config", GMM, *TINY, "--model.init_args.optimizer.init_args.lr", "-0.001"])
    assert "-0.001" in err and "model.optimizer.init_args" in err


def test_empty_dataset(workdir, capsys):
    err = one_line_error(capsys, ["fit", "--config", GMM, "--data.init_args.n_train", "0"])
    assert "n_train" in err and "0" in err


def test_checkpoint_from_another_model(workdir, capsys):
    main(["fit", "--config", GMM, *TINY])
    ckpt = torch.load(workdir / "checkpoints" / "vae_gmm" / "last.ckpt", weights_only=True)
    ckpt["gen_lightning"]["model_class"] = "gen_lightning.models.gan.GAN"  # as a GAN run would have written it
    torch.save(ckpt, workdir / "other.ckpt")
    err = one_line_error(capsys, ["test", "--config", GMM, *TINY, "--ckpt_path", str(workdir / "other.ckpt")])
    assert "gen_lightning.models.gan.GAN" in err and "gen_lightning.models.vae.VAE" in err and "config" in err


def test_weights_that_do_not_fit_the_model(workdir):
    """Outside the CLI (which rebuilds the model from the checkpoint's hparams), load_state_dict says what is wrong."""
    main(["fit", "--config", GMM, *TINY])
    ckpt = torch.load(workdir / "checkpoints" / "vae_gmm" / "last.ckpt", weights_only=True)
    narrow = MLP(in_shape=[2], out_shape=[4], hidden=[64])
    model = VAE(narrow, MLP(in_shape=[2], out_shape=[4], hidden=[64]), Gaussian(), latent_dim=2)
    with pytest.raises(CheckpointMismatchError, match="weights do not fit VAE"):
        model.load_state_dict(ckpt["state_dict"])


def first_error_line(err: str) -> str:
    """Parser mistakes: the `error:` line comes first, before any details, and no usage block is printed."""
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: "), err
    assert not any(line.startswith("usage:") for line in lines), err
    return lines[0]


def test_unknown_argument_of_a_class_reads_as_one_line_first(workdir, capsys):
    line = first_error_line(run_error(capsys, ["fit", "--config", GMM, "--model.init_args.no_such_arg", "3"]))
    assert line == "error: model (gen_lightning.models.vae.VAE): Option 'no_such_arg' is not accepted"


def test_mistyped_trainer_argument_reads_as_one_line_first(workdir, capsys):
    line = first_error_line(run_error(capsys, ["fit", "--config", GMM, "--trainer.max_epohs", "3"]))
    assert "--trainer.max_epohs" in line


def test_unknown_class_path_reads_as_one_line_first(workdir, capsys):
    line = first_error_line(run_error(capsys, ["fit", "--config", GMM, "--model", "gen_lightning.models.vae.NoSuchModel"]))
    assert "NoSuchModel" in line


def test_help_lists_compare(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "gen compare" in capsys.readouterr().out


@pytest.mark.parametrize("subcommand", ["test", "predict", "validate"])
def test_evaluating_without_a_checkpoint_is_refused(workdir, capsys, subcommand):
    err = one_line_error(capsys, [subcommand, "--config", GMM])
    assert "without --ckpt_path" in err and "--ckpt_path checkpoints/" in err and "--allow_untrained true" in err
    assert not (workdir / "lightning_logs").exists() or not list(workdir.glob("lightning_logs/*/*/metrics.json"))


def test_an_untrained_model_on_purpose_is_labelled(workdir):
    main(["test", "--config", GMM, *TINY, "--model.init_args.iw_samples", "4", "--allow_untrained", "true"])
    report = json.loads(next(workdir.glob("lightning_logs/vae_gmm/*/metrics.json")).read_text())
    assert report["checkpoint"] is None and report["untrained"] is True

    from gen_lightning.report import load_run

    run = load_run(next(workdir.glob("lightning_logs/vae_gmm/*/metrics.json")).parent)
    assert run.name.endswith("(untrained)")


def test_missing_checkpoint_file(workdir, capsys):
    err = one_line_error(capsys, ["test", "--config", GMM, "--ckpt_path", "checkpoints/vae_gmm/nope.ckpt"])
    assert err == ("error: --ckpt_path checkpoints/vae_gmm/nope.ckpt does not exist; pass a .ckpt written by `gen fit` "
                   "(e.g. checkpoints/<experiment>/last.ckpt)")


def test_truncated_checkpoint_file(workdir, capsys):
    main(["fit", "--config", GMM, *TINY])
    whole = (workdir / "checkpoints" / "vae_gmm" / "last.ckpt").read_bytes()
    cut = workdir / "cut.ckpt"
    cut.write_bytes(whole[: len(whole) // 2])
    err = one_line_error(capsys, ["test", "--config", GMM, "--ckpt_path", str(cut)])
    assert str(cut) in err and "truncated or not a PyTorch file" in err


def test_a_torch_file_that_is_not_a_lightning_checkpoint(workdir, capsys):
    torch.save({"weights": torch.zeros(3)}, workdir / "plain.pt")
    err = one_line_error(capsys, ["predict", "--config", GMM, "--ckpt_path", str(workdir / "plain.pt")])
    assert "plain.pt" in err and "not a Lightning checkpoint" in err


def test_bf16_on_a_cpu_without_native_bf16_warns_in_one_line(workdir, monkeypatch):
    """This project's machines (AVX2 AMD EPYC) emulate bf16; a bf16 CPU run says so instead of silently crawling."""
    import gen_lightning.cli as cli

    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match=r"precision bf16-mixed on a CPU without avx512_bf16/AMX is emulated"):
        main(["fit", "--config", GMM, *TINY, "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false"])
    monkeypatch.setattr(cli, "cpu_has_native_bf16", lambda: True)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", GMM, *TINY, "--trainer.precision", "bf16-mixed", "--trainer.enable_progress_bar", "false"])
    assert not [w for w in caught if "emulated" in str(w.message)]
