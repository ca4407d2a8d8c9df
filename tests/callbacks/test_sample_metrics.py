"""ClassifierMetrics and InceptionMetrics inside `trainer.test`, on a toy image dataset whose
classes a stand-in classifier reads off exactly, with "models" that replay real images."""

import lightning as L
import pytest
import torch
from torch import nn

from gen_lightning.callbacks import sample_metrics
from gen_lightning.callbacks.sample_metrics import ClassifierMetrics, InceptionMetrics, draw_samples
from gen_lightning.data.base import ImageDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.models.base import GenerativeModel
from gen_lightning.models.classifier import Classifier

K = 4


class ToyDigits(ImageDataModule):
    """(1, 2, 2) images, 4 classes: class c lights pixel c. 400 train (100 held out for val), 200 test."""

    data_shape = (1, 2, 2)
    num_classes = K

    def setup(self, stage=None):
        if self._splits:
            return
        y = torch.arange(600) % K
        x = (nn.functional.one_hot(y, K) * 255).to(torch.uint8).view(-1, 1, 2, 2)
        self._set_splits(train=(x[:400], y[:400]), test=(x[400:], y[400:]))


class PixelClassNet(nn.Module):
    num_classes = K

    def features(self, x):
        return x.flatten(1)  # (B, 1, 2, 2) -> (B, 4)

    def forward(self, x):
        return self.features(x)


class Replay(GenerativeModel):
    """A perfect "model": real toy images of the requested class (or of a random class), in the data's range.

    `wrong` makes every `wrong`-th sample show the next class instead.
    """

    def __init__(self, conditional: bool = False, wrong: int = 0):
        super().__init__()
        self.conditional, self.wrong = conditional, wrong
        self.anchor = nn.Parameter(torch.zeros(()))  # a parameter, so the module has a device

    def sample(self, n, labels=None, generator=None):
        self.check_labels(labels)
        if labels is None:
            labels = torch.randint(0, K, (n,), generator=generator, device=self.device)
        if self.wrong:
            labels = torch.where(torch.arange(n, device=self.device) % self.wrong == 0, (labels + 1) % K, labels)
        lo, hi = self.value_range
        return lo + (hi - lo) * nn.functional.one_hot(labels, K).float().view(-1, 1, 2, 2)

    def test_step(self, batch, batch_idx):
        pass


class Mute(Replay):
    def sample(self, n, labels=None, generator=None):
        raise NotImplementedError("no sampler yet")


def run_test(model, callback, value_range="-1,1"):
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[callback], limit_test_batches=1,
    )  # fmt: skip
    trainer.test(model, datamodule=ToyDigits(value_range=value_range, val_size=100, batch_size=64), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.fixture
def pixel_classifier(monkeypatch):
    """ClassifierMetrics gets the toy classifier whatever checkpoint path it is given."""
    clf = Classifier(PixelClassNet())
    clf.bind_data(ToyDigits(value_range="0,1"))  # trained in [0, 1]; the models below sample in [-1, 1]
    monkeypatch.setattr(sample_metrics.clf_metrics, "load_classifier", lambda path: clf)
    return clf


# ---- ClassifierMetrics ---------------------------------------------------------------------------
def test_a_perfect_conditional_model(pixel_classifier):
    model, cb = Replay(conditional=True), ClassifierMetrics("toy.ckpt", num_samples=400, batch_size=64)
    m, report = run_test(model, cb), cb.metrics_report(None, model)
    assert m["test/label_accuracy"] == 1.0
    assert m["test/classes_covered"] == K and m["test/class_kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    # balanced requests on a balanced test split: the same feature distribution
    assert m["test/classifier_fid"] == pytest.approx(0.0, abs=1e-5)  # logged as float32
    assert report["extra"]["class_histogram"] == [100] * K
    assert "test/label_accuracy" not in report["omitted"]
    assert "classifier_metrics" in report["conventions"]


def test_label_accuracy_counts_the_wrong_class(pixel_classifier):
    m = run_test(Replay(conditional=True, wrong=4), ClassifierMetrics("toy.ckpt", num_samples=400, batch_size=64))
    assert m["test/label_accuracy"] == 0.75


def test_an_unconditional_model_omits_label_accuracy(pixel_classifier):
    model, cb = Replay(conditional=False), ClassifierMetrics("toy.ckpt", num_samples=400, batch_size=64)
    m, report = run_test(model, cb), cb.metrics_report(None, model)
    assert "test/label_accuracy" not in m
    assert "unconditional" in report["omitted"]["test/label_accuracy"]
    assert sum(report["extra"]["class_histogram"]) == 400
    assert m["test/classes_covered"] == K and m["test/classifier_fid"] < 0.01


def test_a_model_that_cannot_sample_omits_everything(pixel_classifier):
    model, cb = Mute(), ClassifierMetrics("toy.ckpt", num_samples=10)
    m, omitted = run_test(model, cb), cb.metrics_report(None, model)["omitted"]
    assert not any(k.startswith("test/class") for k in m)
    assert set(omitted) >= {"test/classifier_fid", "test/classes_covered", "test/label_accuracy"}
    assert "no sampler yet" in omitted["test/classifier_fid"]


def test_samples_are_seeded_and_labels_balanced():
    model = Replay(conditional=True)
    model.bind_data(ToyDigits(value_range="0,1"))
    a, labels = draw_samples(model, 10, batch_size=3, seed=7)
    b, _ = draw_samples(model, 10, batch_size=3, seed=7)
    assert torch.equal(a, b) and labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_a_classifier_of_other_images_is_refused(monkeypatch):
    clf = Classifier(PixelClassNet())
    clf.input_shape.copy_(torch.tensor([1, 28, 28]))
    monkeypatch.setattr(sample_metrics.clf_metrics, "load_classifier", lambda path: clf)
    with pytest.raises(ConfigError, match=r"trained on images of shape \(1, 28, 28\)"):
        run_test(Replay(), ClassifierMetrics("mnist.ckpt", num_samples=10))


def test_a_module_without_sample_is_refused(pixel_classifier):
    with pytest.raises(ConfigError, match="Classifier has no sample"):
        run_test(pixel_classifier, ClassifierMetrics("toy.ckpt", num_samples=10))


def test_bad_counts_are_config_errors():
    with pytest.raises(ConfigError, match="num_samples must be >= 2"):
        ClassifierMetrics("x.ckpt", num_samples=1)
    with pytest.raises(ConfigError, match="kid_subset_size must be in"):
        InceptionMetrics(num_samples=100, kid_subset_size=1000)


# ---- InceptionMetrics with a stand-in extractor ------------------------------------------------------
class CountingFeatures(nn.Module):
    """uint8 (N, 3, 2, 2) -> the 4 red pixels as features (and logits); counts the images it sees."""

    def __init__(self, logits: bool):
        super().__init__()
        self.logits, self.images_seen = logits, 0
        self.register_buffer("scale", torch.tensor(1 / 255))

    def forward(self, x):
        self.images_seen += len(x)
        f = x[:, 0].flatten(1).float() * self.scale  # (N, 3, 2, 2) -> (N, 4)
        return (f, 20 * f) if self.logits else f


def inception_callback(extractor, cache_dir):
    return InceptionMetrics(
        num_samples=400, batch_size=100, cache_dir=str(cache_dir), kid_subsets=5, kid_subset_size=100,
        is_splits=2, feature_extractor=extractor,
    )  # fmt: skip


def test_inception_metrics_of_a_perfect_model_and_the_cache(tmp_path):
    extractor = CountingFeatures(logits=True)
    m = run_test(Replay(conditional=True), inception_callback(extractor, tmp_path))
    assert extractor.images_seen == 400 + 200  # the samples, then the 200 real test images
    # torchmetrics takes sqrt(eigvals(S1 S2)): a round-off eigenvalue of 1e-12 of these rank-3 covariances gives 1e-6
    assert m["test/fid"] == pytest.approx(0.0, abs=1e-5)
    assert abs(m["test/kid_mean"]) < 3 * m["test/kid_std"]  # an unbiased estimate of 0: subset noise only
    assert m["test/precision"] == 1.0 and m["test/recall"] == 1.0
    # confident, and balanced up to the random split: exp(H(marginal)) just under K
    assert m["test/inception_score"] == pytest.approx(K, rel=0.01)
    assert len(list(tmp_path.glob("ToyDigits-test-200-*.pt"))) == 1

    m2 = run_test(Replay(conditional=True), inception_callback(extractor, tmp_path))
    assert extractor.images_seen == 600 + 400  # only the samples: the real features came from the cache
    assert m2 == m


def test_inception_score_is_omitted_without_logits(tmp_path):
    model, cb = Replay(), inception_callback(CountingFeatures(logits=False), tmp_path)
    m = run_test(model, cb)
    assert "test/fid" in m and "test/inception_score" not in m
    assert "no class logits" in cb.metrics_report(None, model)["omitted"]["test/inception_score"]
