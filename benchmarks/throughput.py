"""Training and sampling throughput on this machine, against a plain PyTorch loop and against peer libraries.

    python benchmarks/throughput.py                         # everything below; writes docs/results/throughput.md
    python benchmarks/throughput.py --families vae_mnist gan_mnist --repeats 3
    python benchmarks/throughput.py --skip_families         # the U-Net and DDIM comparisons only

1. **Lightning against a plain loop**, per CPU-tier recipe (configs/cpu/<family>.yaml, built as `gen fit` builds it):
   img/s of the training step run by a Lightning Trainer (TensorBoard logging every `log_every_n_steps` as in the
   recipe, the project's divergence guard) and by a plain loop over the same DataLoader, model, loss and optimizer
   (`loss = model.training_step(batch, i); zero_grad; backward; step`, or for the GAN its D and G steps written out).
   The two alternate A/B/A/B in this one process; each figure is the median step time after `--warmup` steps.
   bf16 autocast is timed too when the CPU has native bf16 (avx512_bf16/AMX), or with `--bf16`.
2. **The project U-Net against diffusers' `UNet2DModel`** (and lucidrains' `Unet` when
   `denoising_diffusion_pytorch` is installed: `pip install -e ".[bench]"`) at the CPU DDPM recipe's configuration,
   one training step (forward, MSE, backward, Adam) each, interleaved, with parameter counts beside the times.
3. **DDIM-50 sampling**, ms per image: the project's `DDIMSampler` against diffusers' `DDIMScheduler` loop, both
   driving the same U-Net from the same x_T (leading spacing, eta 0, x0 clipped). Without clipping the two must
   agree: the largest difference of their samples is printed.
4. With `--threads`: the U-Net and VAE steps at one thread and at every core the process may use, interleaved.

Timings taken beside other jobs are noise; the load average is printed, and ratios (measured interleaved) are the
figures to read.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import lightning as L
import torch

from gen_lightning.cli import GenCLI, cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["vae_mnist", "gan_mnist", "cgan_mnist", "ddpm_mnist", "cddpm_mnist", "ncsn_mnist", "fm_mnist", "ebm_mnist",
            "nade_mnist", "made_mnist", "pixelcnn_mnist", "realnvp_mnist", "glow_mnist"]


def build(name: str):
    cli = GenCLI(args=["--config", str(REPO / "configs" / "cpu" / f"{name}.yaml"), "--data.init_args.root",
                       str(REPO.parent / "shared" / "data")], run=False)
    return cli.model, cli.datamodule, cli.trainer.log_every_n_steps


class StepClock(L.Callback):
    """Seconds between consecutive training batch ends: the whole step as the loop runs it (data, hooks, logging)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter())


def lightning_steps(model, dm, steps: int, precision: str, log_every: int, logdir: str) -> list[float]:
    clock = StepClock()
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0, precision=precision,
                        logger=L.pytorch.loggers.TensorBoardLogger(logdir, name="throughput"), log_every_n_steps=log_every,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock], accelerator="cpu", devices=1)
    trainer.fit(model, dm)
    return [b - a for a, b in zip(clock.times, clock.times[1:])]


def first_optimizer(configured):
    """The optimizer out of whatever configure_optimizers returned (an optimizer, a dict, or lists of them)."""
    if isinstance(configured, torch.optim.Optimizer):
        return configured
    if isinstance(configured, dict):
        return first_optimizer(configured["optimizer"])
    return first_optimizer(configured[0])


def plain_gan_step(model, opts, batch):
    """The GAN's D step and G step written out: what its training_step does, without Lightning."""
    x, y = batch
    labels = model.labels_of(x, y)
    opt_g, opt_d = opts
    fake = model.generate(x.shape[0], labels)
    model.generator.requires_grad_(False)
    d_loss = model.d_loss_fn(model.critic(x, labels), model.critic(fake.detach(), labels))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    model.generator.requires_grad_(True)
    model.discriminator.requires_grad_(False)
    g_loss = model.g_loss_fn(model.critic(fake, labels))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    model.discriminator.requires_grad_(True)


def plain_steps(model, dm, steps: int, bf16: bool) -> list[float]:
    """A plain PyTorch loop over the same DataLoader and batch conversion: the model's own loss (training_step),
    backward, step."""
    model.trainer = None  # detached from the last Trainer: self.log is then a no-op, as in any plain loop
    model.train()
    configured = model.configure_optimizers()
    manual = not model.automatic_optimization
    opts = [first_optimizer(c) for c in configured[0]] if manual else first_optimizer(configured)
    times, it = [], iter(dm.train_dataloader())
    for i in range(steps):
        batch = dm.on_after_batch_transfer(next(it), 0)  # as Lightning does: 8-bit -> the model's float range
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            if manual:
                plain_gan_step(model, opts, batch)
            else:
                loss = model.training_step(batch, i)
                opts.zero_grad(set_to_none=True)
                loss.backward()
                opts.step()
        times.append(time.perf_counter())
    return [b - a for a, b in zip(times, times[1:])]


def steps_for(model, dm, warmup: int, steps: int, min_seconds: float) -> int:
    """At least `steps`, and enough that each timed stretch lasts `min_seconds` (a plain-loop step timed first): a
    fast step (the VAE's ~30 ms) timed over 6 steps measures the Trainer's first iterations and the machine's noise."""
    step = statistics.median(plain_steps(model, dm, warmup + 3, False)[warmup:])
    return max(steps, math.ceil(min_seconds / step))


def family_rows(families, warmup: int, steps: int, repeats: int, bf16: bool, min_seconds: float = 0.0) -> list[dict]:
    rows = []
    precisions = ["32-true"] + (["bf16-mixed"] if bf16 else [])
    with tempfile.TemporaryDirectory() as logdir:
        for name in families:
            model, dm, log_every = build(name)
            dm.prepare_data()
            dm.setup("fit")
            model.bind_data(dm)
            batch = dm.train_dataloader().batch_size
            n = steps_for(model, dm, warmup, steps, min_seconds)
            for precision in precisions:
                light, plain = [], []
                for _ in range(repeats):  # A/B/A/B
                    light += lightning_steps(model, dm, warmup + n + 1, precision, log_every, logdir)[warmup:]
                    plain += plain_steps(model, dm, warmup + n + 1, precision == "bf16-mixed")[warmup:]
                lt, pt = statistics.median(light), statistics.median(plain)
                row = {"recipe": name, "precision": precision, "batch": batch, "lightning_img_s": batch / lt,
                       "plain_img_s": batch / pt, "ratio": pt / lt, "steps": len(light)}
                rows.append(row)
                print(f"{name:16s} {precision:10s} batch {batch:4d}: Lightning {row['lightning_img_s']:8.1f} img/s, "
                      f"plain {row['plain_img_s']:8.1f} img/s, ratio {row['ratio']:.3f} ({len(light)}+{len(plain)} steps)",
                      flush=True)
    return rows


# ---- peers: the same U-Net configuration in diffusers and lucidrains -------------------------------------------------
UNET = dict(in_channels=1, image_size=28, channels=16, channel_mults=[1, 2, 2], num_res_blocks=1, attention_resolutions=[7],
            dropout=0.0)  # configs/cpu/ddpm_mnist.yaml


def project_unet():
    from gen_lightning.nets.unet import UNet

    return UNet(**UNET)


def diffusers_unet():
    from diffusers import UNet2DModel

    c = UNET["channels"]
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=tuple(c * m for m in UNET["channel_mults"]),
                       layers_per_block=UNET["num_res_blocks"], norm_num_groups=4, attention_head_dim=None,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def lucidrains_unet():
    from denoising_diffusion_pytorch import Unet

    return Unet(dim=UNET["channels"], dim_mults=tuple(UNET["channel_mults"]), channels=1, full_attn=(False, False, True))


def unet_call(kind: str, net):
    """net(x, step t) in each library's own time convention: ours t / 1000, the peers the integer step."""
    if kind == "project":
        return lambda x, t: net(x, t.float() / 1000)
    if kind == "diffusers":
        return lambda x, t: net(x, t).sample
    return lambda x, t: net(x, t)


def unet_rows(batch: int, warmup: int, steps: int, repeats: int) -> list[dict]:
    makers = {"project": project_unet, "diffusers": diffusers_unet, "lucidrains": lucidrains_unet}
    nets = {}
    for kind, make in makers.items():
        try:
            nets[kind] = make()
        except ImportError as e:
            print(f"{kind}: not installed ({e.name}); pip install -e \".[bench]\"")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    opts = {k: torch.optim.Adam(n.parameters(), 1e-3) for k, n in nets.items()}
    times = {k: [] for k in nets}
    for r in range(repeats * (warmup + steps)):
        for kind, net in nets.items():  # interleaved: one step of each in turn
            call = unet_call(kind, net)
            start = time.perf_counter()
            loss = (call(x, t) - x).pow(2).mean()
            opts[kind].zero_grad(set_to_none=True)
            loss.backward()
            opts[kind].step()
            if r % (warmup + steps) >= warmup:
                times[kind].append(time.perf_counter() - start)
    rows = []
    for kind, net in nets.items():
        ms = 1000 * statistics.median(times[kind])
        rows.append({"net": kind, "params": sum(p.numel() for p in net.parameters()), "ms_per_step": ms,
                     "ratio": statistics.median(times[kind]) / statistics.median(times["project"])})
        print(f"U-Net step, {kind:10s}: {rows[-1]['params']:9,d} params, {ms:8.1f} ms (batch {batch})", flush=True)
    return rows


def ddim_rows(batch: int, repeats: int, bf16: bool) -> tuple[list[dict], float]:
    from diffusers import DDIMScheduler

    from gen_lightning.samplers.ddim import DDIMSampler
    from gen_lightning.samplers.schedules import Denoiser, LinearSchedule

    net = project_unet().eval()
    with torch.no_grad():  # trained-looking weights: the zero-initialized output conv would make every sample x_T
        for p in net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    schedule = LinearSchedule()
    ours = DDIMSampler(50, eta=0.0, spacing="leading", clip_x0=True, progress=False)
    denoiser = Denoiser(net, schedule, "eps", clip_range=(-1.0, 1.0))
    schedulers = {clip: DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                                      clip_sample=clip, set_alpha_to_one=True, timestep_spacing="leading", steps_offset=0)
                  for clip in (True, False)}

    def run_ours(x):
        return ours.sample(denoiser, tuple(x.shape), x_init=x.clone())

    def run_diffusers(x, clip=True):
        scheduler = schedulers[clip]
        scheduler.set_timesteps(50)
        for step in scheduler.timesteps:
            eps = net(x, torch.full((x.shape[0],), int(step)).float() / 1000)
            x = scheduler.step(eps, step, x).prev_sample
        return x

    x_T = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    rows, gap = [], float("nan")
    for precision in ["fp32"] + (["bf16"] if bf16 else []):
        times = {"project": [], "diffusers": []}
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            for _ in range(repeats + 1):  # the first round warms up
                for kind, run in (("project", run_ours), ("diffusers", run_diffusers)):
                    start = time.perf_counter()
                    run(x_T)
                    times[kind].append(time.perf_counter() - start)
        if precision == "fp32":  # agreement, without x0 clipping: diffusers clips x0 but keeps the net's eps, while
            # the project recomputes eps from the clipped x0 (improved-diffusion's variant), so clipped runs differ
            denoiser.clip_range = None
            with torch.no_grad():
                gap = (run_ours(x_T[:8]) - run_diffusers(x_T[:8], clip=False)).abs().max().item()
            denoiser.clip_range = (-1.0, 1.0)
        for kind in times:
            ms = 1000 * statistics.median(times[kind][1:]) / batch
            rows.append({"sampler": kind, "precision": precision, "ms_per_image": ms,
                         "ratio": statistics.median(times[kind][1:]) / statistics.median(times["project"][1:])})
            print(f"DDIM-50, {kind:10s} {precision}: {ms:7.2f} ms/image (batch {batch})", flush=True)
    print(f"DDIM-50 without x0 clipping: largest difference between the two samplers' images from one x_T: {gap:.2e}")
    return rows, gap


def thread_rows(batch: int, warmup: int, steps: int, repeats: int) -> list[dict]:
    """The U-Net step (CPU DDPM recipe) and the VAE step (CPU VAE recipe) at 1 thread and at every core, interleaved."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    vae, vae_dm, _ = build("vae_mnist")
    vae_dm.prepare_data()
    vae_dm.setup("fit")
    vae.bind_data(vae_dm)
    vae_batch = vae_dm.on_after_batch_transfer(next(iter(vae_dm.train_dataloader())), 0)
    unet = project_unet()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 1000, (batch,), generator=g)
    steps_of = {
        "U-Net (ddpm_mnist)": (unet, lambda: (unet(x, t.float() / 1000) - x).pow(2).mean(), batch),
        "VAE (vae_mnist)": (vae, lambda: vae.training_step(vae_batch, 0), vae_batch[0].shape[0]),
    }
    rows, before = [], torch.get_num_threads()
    for name, (module, loss_of, b) in steps_of.items():
        opt = torch.optim.Adam(module.parameters(), 1e-4)
        times = {1: [], cores: []}
        for r in range(repeats * (warmup + steps)):
            for threads in times:
                torch.set_num_threads(threads)
                start = time.perf_counter()
                loss = loss_of()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if r % (warmup + steps) >= warmup:
                    times[threads].append(time.perf_counter() - start)
        one, many = statistics.median(times[1]), statistics.median(times[cores])
        rows.append({"step": name, "batch": b, "ms_1": 1000 * one, "threads": cores, "ms_n": 1000 * many, "speedup": one / many})
        print(f"{name}: 1 thread {1000 * one:.1f} ms, {cores} threads {1000 * many:.1f} ms, speed-up {one / many:.2f}", flush=True)
    torch.set_num_threads(before)
    return rows


def write_markdown(path: Path, header: str, fam, unets, ddim, gap, command: str, threads=()) -> None:
    lines = ["# Throughput on a CPU: Lightning against a plain loop, the U-Net and DDIM against diffusers", "",
             f"`{command}`", "", header, ""]
    if fam:
        lines += ["## Training step: Lightning Trainer against a plain PyTorch loop (same model, loss, optimizer, data)", "",
                  "| recipe | precision | batch | Lightning img/s | plain img/s | Lightning / plain | timed steps each |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} | {r['precision']} | {r['batch']} | {r['lightning_img_s']:.1f} | {r['plain_img_s']:.1f} | "
                  f"{r['ratio']:.3f} | {r['steps']} |" for r in fam]
        lines.append("")
    if unets:
        lines += ["## U-Net training step at the CPU DDPM recipe's configuration", "",
                  "| net | parameters | ms per step | time / project's |", "|---|---|---|---|"]
        lines += [f"| {r['net']} | {r['params']:,} | {r['ms_per_step']:.1f} | {r['ratio']:.2f} |" for r in unets]
        lines.append("")
    if ddim:
        lines += ["## DDIM-50 sampling, same network and x_T", "",
                  "| sampler | precision | ms per image | time / project's |", "|---|---|---|---|"]
        lines += [f"| {r['sampler']} | {r['precision']} | {r['ms_per_image']:.2f} | {r['ratio']:.2f} |" for r in ddim]
        lines += ["", f"Both samplers clip x0 to [-1, 1] in the timed runs. Without clipping, the largest difference between "
                  f"their images from the same x_T is {gap:.2e} (with it they differ by design: diffusers keeps the "
                  "network's eps after clipping x0, the project recomputes eps from the clipped x0, as improved-diffusion does)."]
    if threads:
        lines += ["", "## Threads: one against every core, in one process (meaningful on an otherwise idle machine)", "",
                  "| step | batch | 1 thread, ms | all cores, ms | cores | speed-up |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['step']} | {r['batch']} | {r['ms_1']:.1f} | {r['ms_n']:.1f} | {r['threads']} | {r['speedup']:.2f} |"
                  for r in threads]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="*", default=FAMILIES)
    p.add_argument("--skip_families", action="store_true")
    p.add_argument("--skip_peers", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--min_seconds", type=float, default=2.0, help="time each family's step over at least this long per repeat")
    p.add_argument("--unet_batch", type=int, default=64)
    p.add_argument("--sample_batch", type=int, default=100)
    p.add_argument("--threads", action="store_true", help="also time the U-Net and VAE steps at 1 thread and at every core")
    p.add_argument("--bf16", action="store_true", help="time bf16 autocast even without native bf16 (slow: emulated)")
    p.add_argument("--output", type=Path, default=REPO / "docs" / "results" / "throughput.md")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer, in the plain loop
    torch.manual_seed(0)
    bf16 = args.bf16 or cpu_has_native_bf16()
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}; "
              f"load average at the start {os.getloadavg()[0]:.1f}. Medians after {args.warmup} warm-up steps; "
              + ("bf16 autocast timed." if bf16 else "bf16 not timed: this CPU has no native bf16 (it is emulated, 10-20x slower)."))
    print(header, flush=True)
    fam = [] if args.skip_families else family_rows(args.families, args.warmup, args.steps, args.repeats, bf16, args.min_seconds)
    unets, ddim, gap = [], [], float("nan")
    if not args.skip_peers:
        unets = unet_rows(args.unet_batch, args.warmup, args.steps, args.repeats)
        try:
            ddim, gap = ddim_rows(args.sample_batch, args.repeats, bf16)
        except ImportError as e:
            print(f"DDIM against diffusers skipped: {e.name} is not installed; pip install -e \".[bench]\"")
    threads = thread_rows(args.unet_batch, args.warmup, args.steps, args.repeats) if args.threads else []
    command = "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_markdown(args.output, header, fam, unets, ddim, gap, command.strip(), threads)


if __name__ == "__main__":
    main()
