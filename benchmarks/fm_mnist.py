"""Flow matching against DDPM on MNIST (CPU tier): classifier FID against network evaluations, and bits/dim by the
probability-flow ODE beside the flows' exact bits/dim (the flow matching issue's MNIST figures).

    python benchmarks/fm_mnist.py --workdir runs/league        # after the league fitted cpu/fm_mnist and cpu/ddpm_mnist

Loads checkpoints/cpu/fm_mnist/last.ckpt and checkpoints/cpu/ddpm_mnist/last.ckpt from `--workdir` (the same U-Net,
2,200 steps of 64 images each: equal training budgets), draws `--num_samples` digits (seed 0) with each sampler at
each evaluation count (FM: Euler, Heun; DDPM: DDIM with eta 0, DPM-Solver++(2M)), scores them with the shipped
MNIST classifier against the 10,000 test digits, and computes bits/dim of the first `--bpd_examples` test digits
by the ODE (Heun on `likelihood_grid`, at each of `--bpd_steps` step counts to show convergence, one Hutchinson
probe, the flows' uniform dequantization). Writes docs/results/fm_mnist.json and docs/results/fm_mnist_nfe.png
(with `--skip_fid`, only the bits/dim, to docs/results/fm_mnist_bpd.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--num_samples", type=int, default=1000)
    parser.add_argument("--evaluations", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--ddim50", action="store_true", help="also DDPM with DDIM-50, the league's DDPM sampler")
    parser.add_argument("--bpd_examples", type=int, default=200)
    parser.add_argument("--bpd_steps", type=int, nargs="+", default=[50, 100, 200], help="the ODE's steps; several show convergence")
    parser.add_argument("--skip_fid", action="store_true", help="only the bits/dim")
    parser.add_argument("--output", default=str(REPO / "docs" / "results" / "fm_mnist"))
    args = parser.parse_args()

    from gen_lightning.data.mnist import MNISTDataModule
    from gen_lightning.likelihoods import dequantize_in_range, dequantized_bits_per_dim
    from gen_lightning.metrics import classifier as clf_metrics
    from gen_lightning.models.diffusion import DDPM
    from gen_lightning.models.flow_matching import FlowMatching
    from gen_lightning.samplers.ddim import DDIMSampler
    from gen_lightning.samplers.dpm_solver import DPMSolverPP2MSampler
    from gen_lightning.samplers.ode import EulerSampler, HeunSampler

    ckpts = Path(args.workdir) / "checkpoints" / "cpu"
    fm = FlowMatching.load_from_checkpoint(ckpts / "fm_mnist" / "last.ckpt", map_location="cpu", weights_only=False)
    ddpm = DDPM.load_from_checkpoint(ckpts / "ddpm_mnist" / "last.ckpt", map_location="cpu", weights_only=False)
    dm = MNISTDataModule(root=args.data_root, value_range="-1,1")
    dm.setup("test")
    real = dm.split("test").x  # (10000, 1, 28, 28) uint8: the classifier metrics take it as it is
    clf = clf_metrics.load_classifier()

    runs = [("FM Euler", fm, lambda n: EulerSampler(n)), ("FM Heun", fm, lambda n: HeunSampler(max(n // 2, 1))),
            ("DDPM DDIM", ddpm, lambda n: DDIMSampler(n)), ("DDPM DPM-Solver++(2M)", ddpm, lambda n: DPMSolverPP2MSampler(n))]
    jobs = [] if args.skip_fid else [(label, model, make, n) for label, model, make in runs for n in args.evaluations]
    if args.ddim50 and not args.skip_fid:
        jobs.append(("DDPM DDIM", ddpm, lambda n: DDIMSampler(n), 50))
    rows = []
    for label, model, make, n in jobs:
        model.sampler = make(n)
        g = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        x = torch.cat([model.sample(min(500, args.num_samples - i), generator=g) for i in range(0, args.num_samples, 500)])
        seconds = time.perf_counter() - started
        fid = clf_metrics.classifier_fid(clf, x, real, value_range=(-1.0, 1.0))
        rows.append({"sampler": label, "evaluations": model.network_evaluations_per_sample, "classifier_fid": fid,
                     "ms_per_image": 1000 * seconds / args.num_samples})
        print(json.dumps(rows[-1]), flush=True)

    bpd = {}
    x = real[: args.bpd_examples].float() / 255 * 2 - 1  # k/255 in [-1, 1], as the DataModule yields it
    for label, model in (("flow matching", fm), ("DDPM", ddpm)):
        for steps in args.bpd_steps:
            g = torch.Generator().manual_seed(0)  # the same dequantization and probes at every step count
            started = time.perf_counter()
            values = []
            for i in range(0, len(x), 100):
                deq = dequantize_in_range(x[i : i + 100], (-1.0, 1.0), g)
                nll = -model.ode_log_prob(deq, steps=steps, probes=1, generator=g)
                values.append(dequantized_bits_per_dim(nll, 784, (-1.0, 1.0)))
            v = torch.cat(values)
            bpd[f"{label}, {steps} steps"] = {"bpd": v.mean().item(), "sem": (v.std() / math.sqrt(len(v))).item(), "examples": len(v),
                                              "steps": steps, "probes": 1, "seconds": time.perf_counter() - started}
            print(label, json.dumps(bpd[f"{label}, {steps} steps"]), flush=True)

    out = Path(args.output)
    result = {"command": "python benchmarks/fm_mnist.py " + " ".join(sys.argv[1:]), "threads": torch.get_num_threads(),
              "load_at_end": os.getloadavg()[0], "num_samples": args.num_samples, "rows": rows, "bpd_by_ode": bpd}
    if args.skip_fid:  # keep the FID rows and the plot of the last full run
        out.with_name(out.name + "_bpd.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["evaluations"], r["classifier_fid"]) for r in rows if r["sampler"] == label)
        ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel(f"classifier FID ({args.num_samples} samples)")
    ax.set_title("MNIST CPU tier: equal U-Net, equal training steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.parent / (out.name + "_nfe.png"), dpi=120)


if __name__ == "__main__":
    main()
