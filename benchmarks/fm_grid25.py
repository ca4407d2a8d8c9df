"""Flow matching against DDPM on grid25 at equal numbers of network evaluations (the flow matching issue's table).

    python benchmarks/fm_grid25.py --workdir runs/grid25          # fits configs/fm_gmm.yaml and configs/ddpm_gmm.yaml if needed
    python benchmarks/fm_grid25.py --workdir runs/grid25 --skip_fit
    python benchmarks/fm_grid25.py --workdir runs/grid25 --skip_fit --reflow   # + configs/fm_gmm_reflow.yaml at 1-10 evaluations

Both configs train the same MLP (128 wide, 3 blocks, Fourier features) for the same 2,940 steps of batch 512 with
EMA 0.995. Each trained model then samples 2,500 points (seed 0) with every sampler at 5, 10, 20 and 50 network
evaluations: flow matching with Euler and Heun (Heun takes 2 per step, so its odd counts round down), DDPM with
DDIM (eta 0, trailing spacing, so that the chain starts at t = T-1 with few steps) and DPM-Solver++(2M). Mode metrics
as in `gen test` (metrics/gmm.py): modes within 3 std, the fraction of high-quality samples, reverse KL over modes.
With `--reflow`, also the reflowed flow of configs/fm_gmm_reflow.yaml (fitted from fm_gmm's checkpoint if missing)
beside its teacher with Euler at 1, 2, 5 and 10 evaluations (`--output` then gets the rows of both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EVALUATIONS = (5, 10, 20, 50)
FEW_EVALUATIONS = (1, 2, 5, 10)


def fit(config: str, workdir: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gen_lightning.cli", "fit", "--config", str(REPO / "configs" / config),
                    "--trainer.enable_progress_bar", "false"], cwd=workdir, check=True,
                   stdout=open(workdir / f"{Path(config).stem}.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/grid25")
    parser.add_argument("--skip_fit", action="store_true")
    parser.add_argument("--reflow", action="store_true", help="also fit/compare configs/fm_gmm_reflow.yaml")
    parser.add_argument("--output", default=str(REPO / "docs" / "results" / "fm_grid25.json"))
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    fit_seconds = {}
    for name in ("fm_gmm", "ddpm_gmm", *(("fm_gmm_reflow",) if args.reflow else ())):
        if not (args.skip_fit and (workdir / "checkpoints" / name / "last.ckpt").is_file()):
            fit_seconds[name] = fit(f"{name}.yaml", workdir)

    from gen_lightning.data.gmm import GaussianMixture
    from gen_lightning.metrics.gmm import gmm_mode_metrics
    from gen_lightning.models.diffusion import DDPM
    from gen_lightning.models.flow_matching import FlowMatching
    from gen_lightning.samplers.ddim import DDIMSampler
    from gen_lightning.samplers.dpm_solver import DPMSolverPP2MSampler
    from gen_lightning.samplers.ode import EulerSampler, HeunSampler

    gmm = GaussianMixture.preset("grid25")
    fm = FlowMatching.load_from_checkpoint(workdir / "checkpoints" / "fm_gmm" / "last.ckpt", map_location="cpu", weights_only=False)
    ddpm = DDPM.load_from_checkpoint(workdir / "checkpoints" / "ddpm_gmm" / "last.ckpt", map_location="cpu", weights_only=False)
    samplers = {
        "FM Euler": (fm, lambda n: EulerSampler(n)),
        "FM Heun": (fm, lambda n: HeunSampler(max(n // 2, 1))),
        "DDPM DDIM": (ddpm, lambda n: DDIMSampler(n, spacing="trailing")),
        "DDPM DPM-Solver++(2M)": (ddpm, lambda n: DPMSolverPP2MSampler(n)),
    }
    jobs = [(label, n) for label in samplers for n in EVALUATIONS]
    if args.reflow:
        reflow = FlowMatching.load_from_checkpoint(workdir / "checkpoints" / "fm_gmm_reflow" / "last.ckpt", map_location="cpu",
                                                   weights_only=False)
        samplers["FM reflow Euler"] = (reflow, lambda n: EulerSampler(n))
        jobs += [(label, n) for label in ("FM Euler", "FM reflow Euler") for n in FEW_EVALUATIONS if (label, n) not in jobs]
    rows = []
    for label, n in jobs:
        model, make = samplers[label]
        model.sampler = make(n)
        started = time.perf_counter()
        x = model.sample(2500, generator=torch.Generator().manual_seed(0))
        seconds = time.perf_counter() - started
        m = {k: float(v) for k, v in gmm_mode_metrics(x, gmm).items()}
        rows.append({"sampler": label, "evaluations": model.network_evaluations_per_sample, "modes": m["modes_covered"],
                     "high_quality": m["high_quality_fraction"], "reverse_kl": m["reverse_kl_modes"], "seconds": seconds})
        print(json.dumps(rows[-1]), flush=True)
    out = {"command": "python benchmarks/fm_grid25.py " + " ".join(sys.argv[1:]), "threads": torch.get_num_threads(),
           "load_at_end": os.getloadavg()[0], "fit_seconds": fit_seconds, "rows": rows}
    Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print("| sampler | evaluations | modes (of 25) | high quality | reverse KL |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['evaluations']} | {r['modes']:.0f} | {r['high_quality']:.3f} | {r['reverse_kl']:.4f} |")


if __name__ == "__main__":
    main()
