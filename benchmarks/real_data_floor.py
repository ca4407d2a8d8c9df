"""The floor of the MNIST classifier metrics: real images scored as if a model had drawn them.

A model that samples the data distribution perfectly still gets a classifier FID above 0
(finite samples) and a class histogram that is not exactly uniform (MNIST's own class
balance). This script scores `num_samples` real training images against the test split,
exactly as `ClassifierMetrics` scores a model's samples, plus the full training split, and
the classifier's test accuracy (the label accuracy of a perfect conditional model).

    python benchmarks/real_data_floor.py --classifier checkpoints/classifier_mnist/best.ckpt \
        --binarize none --output docs/results/real_data_floor_none.json

Models trained on binarized MNIST are compared with the binarized test split, so their floor
comes from `--binarize dynamic` (training images get one seeded Bernoulli draw, as a model's
training data would).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gen_lightning.data.mnist import MNISTDataModule
from gen_lightning.metrics.classifier import (
    class_histogram,
    classifier_fid,
    coverage_metrics,
    load_classifier,
    predicted_classes,
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classifier", default="checkpoints/classifier_mnist/best.ckpt")
    p.add_argument("--root", default="../shared/data")
    p.add_argument("--binarize", choices=["none", "dynamic", "threshold"], default="none")
    p.add_argument("--num-samples", type=int, default=10000, help="as ClassifierMetrics' num_samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=None, help="a JSON file for the numbers")
    return p.parse_args()


def real_splits(args) -> tuple[MNISTDataModule, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DataModule and, converted as a model sees them: train images, test images, test labels."""
    dm = MNISTDataModule(root=args.root, value_range="0,1", binarize=args.binarize, seed=args.seed)
    dm.setup("fit")
    g = torch.Generator().manual_seed(args.seed)
    train = dm.convert(dm.split("train").x, train=True, generator=g)  # one dynamic draw, when binarized
    test = dm.split("test")
    return dm, train, dm.convert(test.x, train=False), test.y


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    clf = load_classifier(args.classifier)
    dm, train, test, test_y = real_splits(args)
    subset = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[: args.num_samples]]
    counts = class_histogram(clf, subset)
    result = {
        "classifier": args.classifier,
        "data": dm.describe(),
        "num_samples": len(subset),
        "test_accuracy": float((predicted_classes(clf, test) == test_y).double().mean()),
        "classifier_fid_train_subset_vs_test": classifier_fid(clf, subset, test),
        "classifier_fid_train_vs_test": classifier_fid(clf, train, test),
        "train_subset_class_histogram": counts.tolist(),
        **{f"train_subset_{k}": v for k, v in coverage_metrics(counts).items()},
        "test_class_histogram": class_histogram(clf, test).tolist(),
        "device": "cpu",
        "cpu_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
