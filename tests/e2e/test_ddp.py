"""Multi-device training comes from Lightning's strategies: DDP on two CPU processes."""

import os
import subprocess
import sys

import torch
from conftest import CONFIGS


def test_fit_with_ddp_on_two_cpu_processes(workdir):
    # A subprocess, as a user runs it: DDP relaunches the command once per rank.
    cmd = [
        sys.executable, "-m", "gen_lightning", "fit", "--config", str(CONFIGS / "vae_gmm.yaml"),
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.max_steps", "6", "--trainer.limit_val_batches", "2", "--data.init_args.n_train", "4096",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stdout + result.stderr
    ckpt = torch.load(workdir / "checkpoints" / "vae_gmm" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6
