"""`gen test` metrics of a model's samples on image data: the MNIST classifier's and Inception's.

Both callbacks draw `num_samples` from `pl_module.sample` at the end of the test epoch with
one seeded generator (the same samples at every evaluation of the same checkpoint), compare
them with the DataModule's real `split` converted as the model saw it
(`dm.convert(x, train=False)`), and log under `test/`, which MetricsWriter puts in
metrics.json. A metric that does not apply is not logged: the callback keeps its name and the reason,
and what a number depends on, in its own report (`ReportingCallback`), which MetricsWriter collects.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torch import nn

from gen_lightning.callbacks.outputs import ReportingCallback
from gen_lightning.errors import ConfigError
from gen_lightning.metrics import classifier as clf_metrics
from gen_lightning.metrics import inception as inc
from gen_lightning.metrics.precision_recall import DEFAULT_K, precision_recall

Split = Literal["test", "val", "train"]


# ---- shared by both callbacks ----------------------------------------------------------------
def balanced_labels(n: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """(n,) labels 0, 1, ..., K-1, 0, 1, ...: every class asked for n/K times (±1)."""
    return torch.arange(n, device=device) % num_classes


# Samples are drawn 100 at a time unless a config says otherwise: on a 2-core CPU a pass of the CPU-tier U-Net costs
# 80 ms an image at batch 100 and 126 ms at batch 500 (session 13's profile of `gen test` of configs/cpu/ddpm_mnist.yaml),
# while samplers that loop over pixels (NADE, MADE, PixelCNN) gain from larger batches. The batch size is part of the
# draw (the seeded generator is consumed batch by batch), so a config measured at another size states that size.
SAMPLE_BATCH = 100


def draw_samples(
    pl_module: L.LightningModule, num_samples: int, batch_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num_samples` samples (on the CPU) in batches from one seeded generator, and the labels asked for (or None)."""
    device = pl_module.device
    conditional = getattr(pl_module, "conditional", False)
    labels = balanced_labels(num_samples, pl_module.num_classes, device) if conditional else None
    g = torch.Generator(device=device).manual_seed(seed)
    chunks = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        batch_labels = labels[start : start + n] if labels is not None else None
        chunks.append(pl_module.sample(n, labels=batch_labels, generator=g).detach().cpu())
    return torch.cat(chunks), (labels.cpu() if labels is not None else None)


def check_counts(owner: str, num_samples: int, batch_size: int) -> None:
    if num_samples < 2:
        raise ConfigError(f"{owner} num_samples must be >= 2 (a covariance needs two), got {num_samples}")
    if batch_size < 1:
        raise ConfigError(f"{owner} batch_size must be >= 1, got {batch_size}")


def image_datamodule(trainer: L.Trainer, owner: str):
    """The run's DataModule, which must hold images (C, H, W) with a value range."""
    dm = trainer.datamodule
    if dm is None or len(getattr(dm, "data_shape", ())) != 3 or getattr(dm, "value_range", None) is None:
        raise ConfigError(f"{owner} needs an image DataModule; remove it from the callbacks for other data")
    return dm


def check_can_sample(pl_module: L.LightningModule, owner: str) -> None:
    if not callable(getattr(pl_module, "sample", None)):
        raise ConfigError(
            f"{owner} scores samples, but {type(pl_module).__name__} has no sample(); remove it from the callbacks"
        )


def samples_or_omit(callback: ReportingCallback, pl_module, names: list[str], num_samples: int, batch_size: int, seed: int):
    """Samples and requested labels, or None (and the metrics omitted) when the model cannot sample."""
    try:
        return draw_samples(pl_module, num_samples, batch_size, seed)
    except NotImplementedError as e:
        callback.omit(names, f"{type(pl_module).__name__} cannot sample ({e})")
        return None


# ---- the MNIST domain classifier -------------------------------------------------------------
class ClassifierMetrics(ReportingCallback):
    """Classifier FID, class histogram (mode coverage) and, for conditional models, label accuracy.

    `classifier_ckpt`: None (the default) uses the MNIST classifier that ships with the package
    (metrics.classifier.BUILTIN_MNIST_CLASSIFIER); or a checkpoint of
    `gen fit --config configs/classifier_mnist.yaml`, e.g. `checkpoints/classifier_mnist/best.ckpt`.
    """

    def __init__(
        self,
        classifier_ckpt: str | None = None,
        num_samples: int = 10000,
        batch_size: int = SAMPLE_BATCH,
        seed: int = 0,
        split: Split = "test",
    ):
        check_counts("ClassifierMetrics", num_samples, batch_size)
        self.classifier_ckpt, self.num_samples, self.batch_size = classifier_ckpt, num_samples, batch_size
        self.seed, self.split = seed, split
        self.clf = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "test":
            return
        self.reset_report()
        check_can_sample(pl_module, "ClassifierMetrics")
        dm = image_datamodule(trainer, "ClassifierMetrics")
        self.clf = clf_metrics.load_classifier(self.classifier_ckpt)
        if tuple(dm.data_shape) != self.clf.data_shape:
            raise ConfigError(
                f"the classifier at {self.classifier_ckpt} was trained on images of shape {self.clf.data_shape} "
                f"but the data has shape {tuple(dm.data_shape)}; "
                "use a classifier of this dataset or remove ClassifierMetrics"
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = ["classifier_fid", "classes_covered", "class_kl_uniform", "class_entropy", "label_accuracy"]
        drawn = samples_or_omit(self, pl_module, [f"test/{n}" for n in names], self.num_samples, self.batch_size, self.seed)
        if drawn is None:
            return
        samples, labels = drawn
        dm, clf = trainer.datamodule, self.clf.to(pl_module.device)
        real_x, real_y = dm.split(self.split).x, dm.split(self.split).y
        real = dm.convert(real_x, train=False)
        vr, bs = tuple(dm.value_range), self.batch_size
        fake_features = clf_metrics.classifier_features(clf, samples, vr, bs)
        real_features = clf_metrics.classifier_features(clf, real, vr, bs)
        fid = clf_metrics.frechet_distance(*clf_metrics.feature_moments(fake_features),
                                           *clf_metrics.feature_moments(real_features))  # fmt: skip
        pl_module.log("test/classifier_fid", fid)
        counts = clf_metrics.class_histogram(clf, samples, vr, bs)
        for name, value in clf_metrics.coverage_metrics(counts).items():
            pl_module.log(f"test/{name}", float(value))
        self.log_label_accuracy(pl_module, samples, labels, vr)
        self.log_diversity(pl_module, fake_features, labels, real_features, real_y)
        self.note("extra", {"class_histogram": counts.tolist()})
        self.write_conventions(pl_module, len(real))

    def log_diversity(self, pl_module, fake_features, labels, real_features, real_labels) -> None:
        """Within-class diversity of a conditional model: its minimum and mean over classes, and each class's."""
        names = ["test/within_class_diversity_min", "test/within_class_diversity_mean"]
        if labels is None:
            self.omit(names, "unconditional model: its samples have no requested classes")
            return
        if pl_module.num_classes != self.clf.num_classes:
            self.omit(names, f"the model has {pl_module.num_classes} classes, the classifier {self.clf.num_classes}")
            return
        ratios = clf_metrics.within_class_diversity(fake_features, labels, real_features, real_labels, self.clf.num_classes)
        pl_module.log(names[0], float(ratios.min()))
        pl_module.log(names[1], float(ratios.mean()))
        self.note("extra", {"within_class_diversity": [round(float(r), 4) for r in ratios]})

    def log_label_accuracy(self, pl_module, samples: torch.Tensor, labels: torch.Tensor | None, value_range) -> None:
        name = "test/label_accuracy"
        if labels is None:
            self.omit([name], "unconditional model: its samples have no requested labels")
        elif pl_module.num_classes != self.clf.num_classes:
            self.omit([name], f"the model has {pl_module.num_classes} classes, the classifier {self.clf.num_classes}")
        else:
            value = clf_metrics.label_accuracy(self.clf, samples, labels, value_range, self.batch_size)
            pl_module.log(name, value)

    def write_conventions(self, pl_module, num_real: int) -> None:
        self.note("conventions", {"classifier_metrics": (
            f"{self.num_samples} samples (seed {self.seed}) vs the {num_real} images of the {self.split} split, in the "
            f"features of the MNIST classifier {self.classifier_ckpt or 'shipped with gen_lightning'}; a class is covered when it gets >= "
            f"{clf_metrics.COVERED_SHARE_OF_UNIFORM:g} x n/K predicted samples; KL and entropy in nats")})  # fmt: skip


# ---- Inception ---------------------------------------------------------------------------------
class InceptionMetrics(ReportingCallback):
    """FID, KID, Inception Score and improved precision/recall in Inception-v3 features.

    `inception_weights` is a local copy of torch-fidelity's weights (see
    metrics/inception.py); `feature_extractor` replaces Inception altogether (tests use a small
    net). The real split's features are cached in `cache_dir` (default
    ~/.cache/gen_lightning/fid_stats). Grey images are repeated to RGB.
    """

    def __init__(
        self,
        inception_weights: str | None = None,
        num_samples: int = 10000,
        batch_size: int = 100,
        seed: int = 0,
        split: Split = "test",
        cache_dir: str | None = None,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        is_splits: int = 10,
        pr_k: int = DEFAULT_K,
        feature_extractor: nn.Module | None = None,
    ):
        check_counts("InceptionMetrics", num_samples, batch_size)
        if not 1 <= kid_subset_size <= num_samples:
            raise ConfigError(f"kid_subset_size must be in [1, num_samples={num_samples}], got {kid_subset_size}")
        if kid_subsets < 1 or not 1 <= is_splits <= num_samples:
            raise ConfigError(
                f"kid_subsets must be >= 1 and is_splits in [1, num_samples], got {kid_subsets}, {is_splits}"
            )
        self.inception_weights, self.num_samples, self.batch_size = inception_weights, num_samples, batch_size
        self.seed = seed
        self.split, self.cache_dir, self.pr_k = split, cache_dir, pr_k
        self.kid_subsets, self.kid_subset_size, self.is_splits = kid_subsets, kid_subset_size, is_splits
        self.extractor = feature_extractor

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "test":
            return
        self.reset_report()
        check_can_sample(pl_module, "InceptionMetrics")
        dm = image_datamodule(trainer, "InceptionMetrics")
        if dm.data_shape[0] not in (1, 3):
            raise ConfigError(f"InceptionMetrics takes grey or RGB images, got {dm.data_shape[0]} channels")
        if self.extractor is None:  # load here, so missing weights stop the run before the test loop
            self.extractor = inc.InceptionV3(self.inception_weights)
        self.feature_id = inc.fingerprint(self.extractor)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        names = ["test/fid", "test/kid_mean", "test/kid_std", "test/precision", "test/recall"]
        is_names = ["test/inception_score", "test/inception_score_std"]
        drawn = samples_or_omit(self, pl_module, names + is_names, self.num_samples, self.batch_size, self.seed)
        if drawn is None:
            return
        dm, extractor = trainer.datamodule, self.extractor.to(pl_module.device)
        fake = inc.to_rgb_uint8(drawn[0], dm.value_range)
        fake_features, fake_logits = inc.extract(extractor, fake, self.batch_size)
        real_features = self.real_features(dm)
        pl_module.log("test/fid", inc.frechet_inception_distance(real_features, fake_features))
        kid = inc.kernel_inception_distance(
            real_features, fake_features, self.kid_subsets, self.kid_subset_size, self.seed
        )
        pl_module.log_dict({"test/kid_mean": kid[0], "test/kid_std": kid[1]})
        pr = precision_recall(real_features, fake_features, self.pr_k)
        pl_module.log_dict({f"test/{k}": v for k, v in pr.items()})
        if fake_logits is None:
            self.omit(is_names, f"the feature extractor {type(extractor).__name__} gives no class logits")
        else:
            score = inc.inception_score(fake_logits, self.is_splits, self.seed)
            pl_module.log_dict({"test/inception_score": score[0], "test/inception_score_std": score[1]})
        self.write_conventions(pl_module, len(real_features))

    def real_features(self, dm) -> torch.Tensor:
        """Features of the whole real split, through the on-disk cache."""
        real = inc.to_rgb_uint8(dm.convert(dm.split(self.split).x, train=False), dm.value_range)
        key = inc.reference_key(dm.describe(), self.split, len(real), self.feature_id)
        return inc.reference_features(self.extractor, real, key, self.cache_dir, self.batch_size)

    def write_conventions(self, pl_module, num_real: int) -> None:
        is_inception = isinstance(self.extractor, inc.InceptionV3)
        source = "torch-fidelity Inception-v3 (TF-matching)" if is_inception else type(self.extractor).__name__
        self.note("conventions", {"inception_metrics": (
            f"{self.num_samples} samples (seed {self.seed}) vs the {num_real} images of the {self.split} split, "
            f"8-bit, grey repeated to RGB, features of {source} (id {self.feature_id}); KID over {self.kid_subsets} "
            f"subsets of {self.kid_subset_size}; IS over {self.is_splits} splits; precision/recall with k={self.pr_k}")})  # fmt: skip
