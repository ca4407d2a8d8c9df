"""Quality and time per sample of one trained diffusion checkpoint under several samplers.

    python benchmarks/diffusion_sampling.py --config configs/ddpm_gmm.yaml --ckpt checkpoints/ddpm_gmm/last.ckpt
    python benchmarks/diffusion_sampling.py --config configs/ddpm_mnist.yaml --ckpt checkpoints/ddpm_mnist/last.ckpt \
        --samplers ddpm ddim:50 ddim:20 ddim:10 --num_samples 1000 --batch_size 1000

The model and data are built exactly as `gen` builds them from `--config` (plus any `--override`
config files stacked after it, e.g. the bounded CPU run's), the checkpoint's weights are loaded (the
EMA average when the run used EMAWeightAveraging, or with `--weights raw` the raw weights beside it), and each sampler in `--samplers`
("ddpm", "ddpm-large" for the fixed-large variance, "ddim:S" for DDIM with S steps and eta 0, "ddim:S:ETA:SPACING"
for another eta and "leading" or "trailing" timesteps, e.g. ddim:50:1:trailing)
replaces the model's sampler in turn. Every sampler starts from the same x_T (one seed).

- GMM data: modes covered, high-quality fraction and reverse KL on `--num_samples` (2,500 by
  DESIGN.md), with the metrics of metrics/gmm.py.
- MNIST: classifier FID against the test split in the features of the MNIST classifier
  (`--classifier`), and the classes covered.
- Time: wall-clock ms per sample of `model.sample` at `--batch_size`, and the ratio to the first
  sampler. The device and torch threads are printed beside the figures; on a shared CPU the
  absolute times move with the load, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gen_lightning.cli import GenCLI
from gen_lightning.metrics import classifier as clf_metrics
from gen_lightning.metrics.gmm import gmm_mode_metrics
from gen_lightning.samplers import DDIMSampler, DDPMSampler


def make_sampler(spec: str):
    """"ddpm" | "ddpm-large" | "ddim:S[:ETA[:SPACING]]" -> a sampler (DDIM: eta 0 and leading spacing by default)."""
    if spec == "ddpm":
        return DDPMSampler("fixed_small")
    if spec == "ddpm-large":
        return DDPMSampler("fixed_large")
    if spec.startswith("ddim:"):
        fields = spec.split(":")[1:]
        steps, eta, spacing = fields + ["0", "leading"][len(fields) - 1:]
        return DDIMSampler(num_steps=int(steps), eta=float(eta), spacing=spacing)
    raise SystemExit(f"error: unknown sampler {spec!r}; use ddpm, ddpm-large or ddim:S[:ETA[:SPACING]]")


def load(config: str, overrides: list[str], ckpt: str, weights: str = "ema"):
    args = ["--config", config]
    for path in overrides:
        args += ["--config", path]
    cli = GenCLI(args=args, run=False)
    model, dm = cli.model, cli.datamodule
    dm.setup("test")
    model.bind_data(dm)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    # "state_dict" holds the averaged weights when EMAWeightAveraging was on, "current_model_state" the raw ones
    key = "current_model_state" if weights == "raw" else "state_dict"
    if key not in state:
        raise SystemExit(f"error: {ckpt} has no {key!r} (raw weights exist only in runs with EMAWeightAveraging)")
    model.load_state_dict(state[key])
    return model.eval(), dm, state.get("global_step")


def draw(model, n: int, batch_size: int, seed: int) -> tuple[torch.Tensor, float]:
    """n samples in batches from one seeded generator, and the wall-clock seconds it took."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    k = model.num_classes if model.conditional else None
    chunks, start = [], time.perf_counter()
    for i in range(0, n, batch_size):
        m = min(batch_size, n - i)
        labels = (torch.arange(i, i + m, device=model.device) % k) if k else None
        chunks.append(model.sample(m, labels=labels, generator=g).cpu())
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(chunks), time.perf_counter() - start


def quality(model, dm, samples: torch.Tensor, classifier: str) -> dict:
    if hasattr(dm, "gmm"):
        metrics = gmm_mode_metrics(samples, dm.gmm)
        metrics.pop("num_modes")
        return {k: float(v) for k, v in metrics.items()}
    clf = clf_metrics.load_classifier(classifier)
    real = dm.convert(dm.split("test").x, train=False)
    vr = tuple(dm.value_range)
    counts = clf_metrics.class_histogram(clf, samples, vr)
    out = {"classifier_fid": clf_metrics.classifier_fid(clf, samples, real, vr),
           "classes_covered": float(clf_metrics.coverage_metrics(counts)["classes_covered"])}
    if model.conditional:
        labels = torch.arange(len(samples)) % model.num_classes
        out["label_accuracy"] = clf_metrics.label_accuracy(clf, samples, labels, vr)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--override", action="append", default=[], help="a config file stacked after --config")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--samplers", nargs="+", default=["ddpm", "ddim:50", "ddim:10"])
    p.add_argument("--num_samples", type=int, default=2500)
    p.add_argument("--batch_size", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance_scale", type=float, default=None, help="ConditionalDDPM only")
    p.add_argument("--classifier", default="checkpoints/classifier_mnist/best.ckpt")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema", help="the EMA average (default) or the raw weights")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    a = p.parse_args(argv)
    model, dm, step = load(a.config, a.override, a.ckpt, a.weights)
    if a.guidance_scale is not None:
        model.guidance_scale = a.guidance_scale
    device = f"{model.device} ({torch.get_num_threads()} torch threads)" if model.device.type == "cpu" else str(model.device)
    print(f"{a.ckpt} (step {step}, {a.weights} weights) on {device}; {a.num_samples} samples per sampler, batch {a.batch_size}, seed {a.seed}")
    rows = []
    for spec in a.samplers:
        model.sampler = make_sampler(spec)
        samples, seconds = draw(model, a.num_samples, a.batch_size, a.seed)
        row = {"sampler": spec, "network_evaluations_per_sample": model.network_evaluations_per_sample,
               "ms_per_sample": 1000 * seconds / a.num_samples, **quality(model, dm, samples, a.classifier)}
        row["speedup_vs_first"] = rows[0]["ms_per_sample"] / row["ms_per_sample"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"ckpt": a.ckpt, "global_step": step, "weights": a.weights, "device": device,
                                           "num_samples": a.num_samples, "batch_size": a.batch_size, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
