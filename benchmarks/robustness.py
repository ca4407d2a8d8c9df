"""No run loses work: divergence in every family, and SIGTERM during `gen fit`, as a user meets them.

    python benchmarks/robustness.py            # writes docs/results/robustness.md

1. Each family's GMM config fitted with learning rate 1000 (`gen fit` in a subprocess): exit
   status, the line printed, and whether every checkpoint left holds finite weights.
2. `gen fit` of vae_gmm killed with SIGTERM mid-run (a real `kill`, a wall-clock time after its
   first checkpoint, so at whatever step it was), then resumed with `--ckpt_path`: the step it stopped at, the step the
   resumed run started from, and whether its final weights equal an uninterrupted run's.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
FAMILIES = {
    "vae_gmm": ["--model.init_args.optimizer.init_args.lr"],
    "gan_gmm_ring8": ["--model.init_args.g_optimizer.init_args.lr", "--model.init_args.d_optimizer.init_args.lr"],
    "ddpm_gmm": ["--model.init_args.optimizer.init_args.lr"],
    "ncsn_gmm": ["--model.init_args.optimizer.init_args.lr"],
    "made_gmm": ["--model.init_args.optimizer.init_args.lr"],
    "flow_gmm": ["--model.init_args.optimizer.init_args.lr"],
    "ebm_gmm": ["--model.init_args.optimizer.init_args.lr"],
}
QUIET = ["--trainer.enable_progress_bar", "false"]


def gen(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gen_lightning.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def finite(path: Path) -> bool:
    state = torch.load(path, weights_only=False, map_location="cpu")["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def divergence_rows(lr: str) -> list[str]:
    rows = ["| config | exit | line printed | checkpoints left, all finite |", "|---|---|---|---|"]
    for name, keys in FAMILIES.items():
        with tempfile.TemporaryDirectory() as tmp:
            args = ["fit", "--config", str(CONFIGS / f"{name}.yaml"), *QUIET]
            for key in keys:
                args += [key, lr]
            proc = gen(args, Path(tmp))
            _, err = proc.communicate()
            line = err.strip().splitlines()[-1] if err.strip() else ""
            ckpts = sorted((Path(tmp) / "checkpoints" / name).glob("*.ckpt"))
            kept = ", ".join(f"{p.name} ({'finite' if finite(p) else 'NOT FINITE'})" for p in ckpts) or "none"
            rows.append(f"| {name} | {proc.returncode} | `{line}` | {kept} |".replace("|E|", "\\|E\\|"))
            print(rows[-1], flush=True)
    return rows


def sigterm_rows(after_seconds: float) -> list[str]:
    config = str(CONFIGS / "vae_gmm.yaml")
    short = ["--data.init_args.n_train", "20000", "--trainer.max_epochs", "6", "--trainer.limit_val_batches", "2", *QUIET]
    ckpt = Path("checkpoints/vae_gmm/last.ckpt")
    with tempfile.TemporaryDirectory() as tmp:
        straight, cut = Path(tmp) / "straight", Path(tmp) / "interrupted"
        straight.mkdir(), cut.mkdir()
        t0 = time.perf_counter()
        gen(["fit", "--config", config, *short], straight).communicate()
        straight_s = time.perf_counter() - t0
        proc = gen(["fit", "--config", config, *short], cut)
        while not (cut / ckpt).is_file() and proc.poll() is None:  # the first epoch's last.ckpt: training is under way
            time.sleep(0.2)
        time.sleep(after_seconds)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate()
        line = err.strip().splitlines()[-1]
        stopped = torch.load(cut / ckpt, weights_only=True)
        resumed = gen(["fit", "--config", config, *short, "--ckpt_path", str(ckpt)], cut)
        resumed.communicate()
        a = torch.load(straight / ckpt, weights_only=True)
        b = torch.load(cut / ckpt, weights_only=True)
        equal = a["state_dict"].keys() == b["state_dict"].keys() and all(
            torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    return [
        f"Uninterrupted run: {a['global_step']} steps in {straight_s:.0f} s. SIGTERM sent {after_seconds:g} s after the "
        "first epoch's last.ckpt appeared.",
        "",
        "| measure | value |", "|---|---|",
        f"| exit status of the interrupted `gen fit` | {proc.returncode} |",
        f"| line printed | `{line}` |",
        f"| step saved in last.ckpt | {stopped['global_step']} (epoch {stopped['epoch']}, "
        f"{stopped['GMMDataModule'].get('batches_done')} batches into it) |",
        f"| resumed run: started at step / ended at step, exit | {stopped['global_step']} / {b['global_step']}, {resumed.returncode} |",
        f"| final weights equal the uninterrupted run's (torch.equal, every tensor) | {equal} |",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lr", default="1000")
    parser.add_argument("--sigterm_after", type=float, default=1.5, help="seconds after the first epoch's checkpoint")
    parser.add_argument("--output", default=str(REPO / "docs" / "results" / "robustness.md"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    lines = [
        "# No run loses work: divergence and interruption",
        "",
        f"`python benchmarks/robustness.py` on {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"load average {load:.1f} at the start.",
        "",
        f"## Every family's GMM config with learning rate {args.lr}",
        "",
        *divergence_rows(args.lr),
        "",
        "## SIGTERM during `gen fit` (vae_gmm), then `--ckpt_path last.ckpt`",
        "",
        *sigterm_rows(args.sigterm_after),
        "",
    ]
    Path(args.output).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
