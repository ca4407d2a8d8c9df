"""How well k-means on pixels separates the MNIST digits: the clusters behind the self-conditioned GAN.

    python benchmarks/cluster_purity.py --data_root ../shared/data --k 10 20 50 100

Clusters `--images` training digits (drawn with `--seed`, scaled to [-1, 1] as the GAN recipe sees them) with
gen_lightning.clustering.kmeans, the same call SelfConditionedGAN.fit_clusters makes, and prints for each k the
purity (the share of digits in their cluster's majority class), the smallest and largest cluster, and the seconds.
The labels are read here only to score the clusters; the model never reads them.
"""

from __future__ import annotations

import argparse
import time

import torch

from gen_lightning.clustering import kmeans
from gen_lightning.data import MNISTDataModule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", default="../shared/data")
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 50, 100])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dm = MNISTDataModule(root=args.data_root, value_range="-1,1")
    dm.setup("fit")
    ds = dm.split("train")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(args.seed))[: args.images]
    x, y = ds.__getitems__(idx.tolist())
    x = dm.convert(x, train=False).flatten(1)
    print(f"{'k':>4} {'purity':>7} {'smallest':>8} {'largest':>8} {'seconds':>8}")
    for k in args.k:
        start = time.perf_counter()
        _, assign = kmeans(x, k, generator=torch.Generator().manual_seed(args.seed))
        seconds = time.perf_counter() - start
        majority = sum(torch.bincount(y[assign == j], minlength=10).max().item() for j in range(k))
        sizes = torch.bincount(assign, minlength=k)
        print(f"{k:>4} {majority / len(y):>7.3f} {sizes.min().item():>8} {sizes.max().item():>8} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
