"""Classifier metrics with deterministic stand-in classifiers, whose answers are known exactly."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gen_lightning.errors import ConfigError
from gen_lightning.metrics.classifier import (
    class_histogram,
    classifier_features,
    classifier_fid,
    coverage_metrics,
    feature_moments,
    frechet_distance,
    label_accuracy,
    load_classifier,
    predicted_classes,
    within_class_diversity,
)
from gen_lightning.models.classifier import Classifier

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
K = 10


class PixelClassNet(nn.Module):
    """Image (1, 1, K) -> the class of its brightest pixel; the pixels are its features."""

    num_classes = K

    def features(self, x):
        return x.flatten(1)  # (B, 1, 1, K) -> (B, K)

    def forward(self, x):
        return self.features(x)


def one_hot_images(classes):
    """(N,) classes -> (N, 1, 1, K) images in [0, 1] lit at their class."""
    return nn.functional.one_hot(torch.as_tensor(classes), K).float().view(-1, 1, 1, K)


@pytest.fixture
def pixel_clf():
    return Classifier(PixelClassNet())


# ---- class histogram and coverage ------------------------------------------------------------
def test_class_histogram_counts_the_predictions(pixel_clf):
    x = one_hot_images([0, 0, 0, 3, 3, 9])
    assert class_histogram(pixel_clf, x, batch_size=4).tolist() == [3, 0, 0, 2, 0, 0, 0, 0, 0, 1]


def test_every_input_range_gives_the_same_predictions(pixel_clf):
    classes = torch.arange(20) % K
    x01 = one_hot_images(classes) * 0.8 + 0.1  # inside (0, 1), so nothing is clipped
    expected = predicted_classes(pixel_clf, x01)
    assert torch.equal(expected, classes)
    assert torch.equal(predicted_classes(pixel_clf, x01 * 2 - 1, value_range=(-1.0, 1.0)), expected)
    assert torch.equal(predicted_classes(pixel_clf, (x01 * 255).round().to(torch.uint8)), expected)
    assert torch.allclose(classifier_features(pixel_clf, x01 * 2 - 1, value_range=(-1.0, 1.0)), x01.flatten(1), atol=1e-6)


def test_coverage_of_a_collapsed_and_of_an_even_histogram():
    collapsed = coverage_metrics(torch.tensor([1000] + [0] * 9))
    assert collapsed == {"classes_covered": 1, "class_kl_uniform": pytest.approx(math.log(10)), "class_entropy": 0.0}
    even = coverage_metrics(torch.full((10,), 100))
    assert even == {"classes_covered": 10, "class_kl_uniform": pytest.approx(0.0, abs=1e-12), "class_entropy": pytest.approx(math.log(10))}


def test_a_class_is_covered_from_a_tenth_of_its_uniform_share():
    counts = torch.tensor([10, 9] + [122] * 7 + [127])  # 1000 samples: a uniform share is 100, a tenth of it 10
    assert counts.sum() == 1000
    assert coverage_metrics(counts)["classes_covered"] == 9


def test_kl_to_uniform_by_hand():
    # half the samples in each of two classes: H = log 2, KL = log 10 - log 2 = log 5
    m = coverage_metrics(torch.tensor([50, 50] + [0] * 8))
    assert m["class_entropy"] == pytest.approx(math.log(2)) and m["class_kl_uniform"] == pytest.approx(math.log(5))


# ---- label accuracy and FID --------------------------------------------------------------------
def test_label_accuracy_by_hand(pixel_clf):
    x = one_hot_images([1, 2, 3, 4])
    assert label_accuracy(pixel_clf, x, torch.tensor([1, 2, 3, 5])) == 0.75
    with pytest.raises(ValueError, match="4 images but 3 requested labels"):
        label_accuracy(pixel_clf, x, torch.tensor([1, 2, 3]))


def test_classifier_fid_is_the_frechet_distance_of_the_features(pixel_clf):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(300, 1, 1, K, generator=g), torch.rand(300, 1, 1, K, generator=g) ** 2
    assert classifier_fid(pixel_clf, a, a) == pytest.approx(0.0, abs=1e-10)
    expected = frechet_distance(*feature_moments(a.flatten(1)), *feature_moments(b.flatten(1)))
    assert classifier_fid(pixel_clf, a, b, batch_size=64) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.01


def test_the_classifier_runs_in_eval_mode_and_keeps_its_mode():
    clf = Classifier(nn.Sequential())  # no net needed to see the mode switch
    clf.net = DropoutProbe()
    clf.train()
    classifier_features(clf, torch.zeros(3, 1, 1, 2))
    assert clf.net.seen_training == [False] and clf.training


class DropoutProbe(nn.Module):
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.seen_training = []

    def features(self, x):
        self.seen_training.append(self.training)
        return x.flatten(1)


def test_a_missing_checkpoint_names_the_path_and_the_command(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_classifier(tmp_path / "nope.ckpt")
    assert str(tmp_path / "nope.ckpt") in str(err.value)
    assert "gen fit --config configs/classifier_mnist.yaml" in str(err.value)


# ---- controllability against a nearest-class-mean classifier on real MNIST -----------------------
class NearestClassMean(nn.Module):
    """Deterministic MNIST classifier: logits = -squared distance to each class's mean training image."""

    num_classes = K

    def __init__(self, x, y):
        super().__init__()
        means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(K)])  # (K, 784)
        self.register_buffer("means", means)

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return -torch.cdist(self.features(x), self.means).square()


@pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST is not in ../shared/data")
def test_label_accuracy_of_a_model_replaying_real_images_is_the_classifier_accuracy():
    from gen_lightning.data.mnist import MNISTDataModule

    dm = MNISTDataModule(root=str(SHARED_DATA), value_range="-1,1")
    dm.setup("test")
    train, test = dm.split("train"), dm.split("test")
    clf = Classifier(NearestClassMean(train.x[:6000].float() / 255, train.y[:6000]))  # the net sees [0, 1]

    requested = torch.arange(2000) % K
    # the "model": for each requested class, the next real test image of that class, in the model's range [-1, 1]
    pools = {c: iter(torch.nonzero(test.y == c).flatten().tolist()) for c in range(K)}
    picked = torch.tensor([next(pools[int(c)]) for c in requested])
    samples = dm.convert(test.x[picked], train=False)

    accuracy = float((predicted_classes(clf, samples, (-1.0, 1.0)) == test.y[picked]).double().mean())
    assert label_accuracy(clf, samples, requested, value_range=(-1.0, 1.0)) == accuracy
    assert 0.75 < accuracy < 0.9  # nearest class mean on MNIST is about 82% accurate


def test_within_class_diversity_by_hand():
    """Class 0: real points (0,0),(2,0) spread 1, samples both at (5,5) spread 0 -> 0.
    Class 1: real (0,0),(0,4) spread 2, samples (1,1),(1,5) spread 2 -> 1 (a shift does not matter)."""
    real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    real_labels = torch.tensor([0, 0, 1, 1])
    fake = torch.tensor([[5.0, 5.0], [5.0, 5.0], [1.0, 1.0], [1.0, 5.0]])
    fake_labels = torch.tensor([0, 0, 1, 1])
    ratios = within_class_diversity(fake, fake_labels, real, real_labels, num_classes=2)
    torch.testing.assert_close(ratios, torch.tensor([0.0, 1.0], dtype=torch.float64))
    # the real data scored as samples of itself is exactly as varied
    torch.testing.assert_close(within_class_diversity(real, real_labels, real, real_labels, 2), torch.ones(2, dtype=torch.float64))


def test_the_shipped_classifier_scores_99_percent_on_the_mnist_test_split():
    """The classifier behind every MNIST metric ships with the package (reproduce it with configs/classifier_mnist.yaml
    and `python -m gen_lightning.metrics.classifier checkpoints/classifier_mnist/best.ckpt`); 99.18% when exported."""
    from gen_lightning.data.mnist import MNISTDataModule
    from gen_lightning.metrics.classifier import BUILTIN_MNIST_CLASSIFIER

    assert BUILTIN_MNIST_CLASSIFIER.stat().st_size <= 2 * 2**20
    clf = load_classifier()  # no path: the shipped one
    assert clf.data_shape == (1, 28, 28) and clf.num_classes == 10
    dm = MNISTDataModule(root=str(SHARED_DATA))
    dm.setup("test")
    x, y = dm.split("test").x, dm.split("test").y
    assert len(x) == 10000
    accuracy = (predicted_classes(clf, x) == y).double().mean().item()  # uint8 images are rescaled to [0, 1]
    assert accuracy >= 0.99


def test_frechet_distance_of_non_finite_moments_is_nan_not_a_crash():
    from gen_lightning.metrics.classifier import frechet_distance

    mu, sigma = torch.zeros(3), torch.eye(3)
    assert frechet_distance(mu, sigma, mu + 1, sigma) == pytest.approx(3.0)
    assert math.isnan(frechet_distance(mu, sigma * float("nan"), mu, sigma))
    assert math.isnan(frechet_distance(mu + float("inf"), sigma, mu, sigma))
