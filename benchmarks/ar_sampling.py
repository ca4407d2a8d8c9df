"""Ancestral sampling time of the autoregressive models: ms per image at one batch size.

    OMP_NUM_THREADS=1 python benchmarks/ar_sampling.py --batch_size 16 \
        configs/nade_mnist.yaml configs/made_mnist.yaml configs/pixelcnn_mnist.yaml

Each model is built exactly as `gen` builds it from its config and bound to its data; with
`--ckpt` (one per config, in order) the checkpoint's weights are loaded, otherwise the freshly
initialized weights are timed (sampling time does not depend on the weights: every model runs
D = 784 conditionals). One warm-up call of 1 image, then `--repeats` calls of `--batch_size`
images, timed with a wall clock. The device and thread count are printed beside the figures; on
a shared CPU the absolute times move with the load, so compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from gen_lightning.cli import GenCLI


def load(config: str, ckpt: str | None):
    cli = GenCLI(args=["--config", config], run=False)
    model, dm = cli.model, cli.datamodule
    model.bind_data(dm)
    if ckpt:
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval()


def ms_per_image(model, batch_size: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    model.sample(1, generator=g)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        model.sample(batch_size, generator=g)
    return 1000 * (time.perf_counter() - start) / (repeats * batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--ckpt", nargs="*", default=None, help="one checkpoint per config, in order")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.ckpt and len(args.ckpt) != len(args.configs):
        raise SystemExit(f"error: {len(args.ckpt)} checkpoints for {len(args.configs)} configs; give one per config")
    print(f"device cpu, torch threads {torch.get_num_threads()}, batch {args.batch_size}, repeats {args.repeats}")
    rows = []
    for i, config in enumerate(args.configs):
        model = load(config, args.ckpt[i] if args.ckpt else None)
        ms = ms_per_image(model, args.batch_size, args.repeats)
        rows.append((config, type(model.net).__name__, model.network_evaluations_per_sample, ms))
    base = rows[0][3]
    print("| config | net | network evaluations per image | ms/img | ratio to the first |")
    print("|---|---|---|---|---|")
    for config, net, evals, ms in rows:
        print(f"| {config} | {net} | {evals} | {ms:.1f} | {ms / base:.1f} |")


if __name__ == "__main__":
    main()
