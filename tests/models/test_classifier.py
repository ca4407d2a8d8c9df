"""The domain classifier: shapes, value-range handling, a short fit on separable toy images,
and `gen fit` of configs/classifier_mnist.yaml on a few batches of real MNIST."""

from pathlib import Path

import lightning as L
import pytest
import torch

from gen_lightning.data.base import ImageDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.metrics.classifier import load_classifier
from gen_lightning.models.classifier import Classifier
from gen_lightning.nets.classifier_cnn import ClassifierCNN

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


class Quadrants(ImageDataModule):
    """(1, 8, 8) noisy images, 4 classes: class c is a bright 4x4 quadrant c."""

    data_shape = (1, 8, 8)
    num_classes = 4

    def setup(self, stage=None):
        if self._splits:
            return
        g = torch.Generator().manual_seed(0)
        y = torch.arange(1200) % 4
        x = torch.rand(1200, 1, 8, 8, generator=g) * 0.3
        for c in range(4):
            r, col = divmod(c, 2)
            x[y == c, :, 4 * r : 4 * r + 4, 4 * col : 4 * col + 4] += 0.7
        x = (x * 255).to(torch.uint8)
        self._set_splits(train=(x[:1000], y[:1000]), test=(x[1000:], y[1000:]))


def small_cnn(num_classes=4):
    return ClassifierCNN(in_channels=1, image_size=8, num_classes=num_classes, channels=(4, 8), feature_dim=16)


def test_cnn_shapes():
    net = ClassifierCNN()
    x = torch.rand(5, 1, 28, 28)
    assert net.features(x).shape == (5, 128) and net(x).shape == (5, 10)
    with pytest.raises(ValueError, match="halve image_size=8 to nothing"):
        ClassifierCNN(image_size=8, channels=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="dropout must be in"):
        ClassifierCNN(dropout=1.0)


def test_inputs_in_either_range_reach_the_net_in_unit_range():
    clf = Classifier(small_cnn()).eval()
    clf.bind_data(Quadrants(value_range="-1,1"))
    assert clf.value_range == (-1.0, 1.0) and clf.data_shape == (1, 8, 8)
    assert clf.data_info["dataset"] == "Quadrants"
    x01 = torch.rand(6, 1, 8, 8)
    expected = clf.net(x01)
    assert torch.allclose(clf(x01 * 2 - 1), expected, atol=1e-6)  # default: the trained range
    assert torch.allclose(clf(x01, value_range=(0.0, 1.0)), expected, atol=1e-6)
    u8 = (x01 * 255).round().to(torch.uint8)
    assert torch.allclose(clf(u8), clf.net(u8.float() / 255), atol=1e-6)
    assert torch.allclose(clf(x01 * 3, value_range=(0.0, 1.0)), clf.net((x01 * 3).clamp(0, 1)), atol=1e-6)  # clipped


def test_data_that_does_not_fit_is_refused():
    with pytest.raises(ConfigError, match="the net predicts 10 classes but Quadrants has 4"):
        Classifier(small_cnn(num_classes=10)).bind_data(Quadrants())


def test_a_short_fit_separates_the_toy_classes(tmp_path):
    clf = Classifier(small_cnn(), optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    dm = Quadrants(batch_size=50, val_size=200)
    trainer.fit(clf, datamodule=dm)
    assert {"train/loss", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    trainer.test(clf, datamodule=dm, verbose=False)
    assert float(trainer.callback_metrics["test/acc"]) >= 0.95

    path = tmp_path / "script.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ConfigError, match="was not written by `gen`"):  # its hparams hold the net object
        load_classifier(path)


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST is not in ../shared/data")
def test_gen_fit_of_the_config_writes_a_loadable_classifier(tmp_path, monkeypatch):
    from gen_lightning.cli import main

    monkeypatch.chdir(tmp_path)
    main([
        "fit", "--config", str(REPO / "configs" / "classifier_mnist.yaml"),
        "--data.init_args.root", str(SHARED_DATA), "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    clf = load_classifier(tmp_path / "checkpoints" / "classifier_mnist" / "best.ckpt")
    assert isinstance(clf.net, ClassifierCNN) and not clf.training
    assert clf.value_range == (0.0, 1.0) and clf.data_shape == (1, 28, 28) and clf.num_classes == 10
    assert list((tmp_path / "lightning_logs" / "classifier_mnist").glob("version_0/events.out.tfevents.*"))
