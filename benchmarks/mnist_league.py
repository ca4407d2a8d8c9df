"""The MNIST league: fit and test every CPU-tier recipe, then put them side by side.

    python benchmarks/mnist_league.py                      # every configs/cpu/*_mnist.yaml, one at a time
    python benchmarks/mnist_league.py --jobs 2             # two at a time, one thread each (2-core laptop)
    python benchmarks/mnist_league.py --only cgan_mnist vae_mnist
    python benchmarks/mnist_league.py --skip_fit           # re-test and re-compare finished fits

For each recipe: `gen fit`, `gen test` and `gen predict` (one row of samples for the mosaic), run
from `--workdir` (checkpoints/cpu/<name>, lightning_logs/cpu/<name>). Then `gen compare` of the
test runs, the real-data floor of the classifier FID at the same sample count (and the floor of each
recipe's class mix: real digits in the proportions of its samples' classes), a mosaic with one
row of samples per family, one row per digit for the conditional models, and a table, all in
`--output` (docs/results/mnist_league/). The timing of every step is the wall clock of its command,
with the machine's load beside it.

Every recipe that ran is archived in `--output`/runs/<recipe>/ (report.archive_run: its metrics.json, its fit's
curves and last sample grid, and the predicted samples), and runs.json points there, so the league can be
re-compared (`--only` alone) from the repository on any machine. A row whose evidence is missing (runs.json from
before the archive, whose run folders were on another machine) keeps its line of the previous table, marked as
carried, and stays out of the figures until the recipe runs again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def gen(args: list[str], cwd: Path, log: Path, threads: int | None) -> tuple[int, float]:
    """Run `gen ARGS` in `cwd`, output to `log`; (exit status, wall seconds)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with log.open("a") as f:
        f.write(f"\n$ gen {' '.join(args)}  (load {os.getloadavg()[0]:.1f})\n")
        f.flush()
        status = subprocess.call([sys.executable, "-m", "gen_lightning.cli", *args], cwd=cwd, env=env, stdout=f,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    return status, time.perf_counter() - started


def recipe_class(config: Path) -> type | None:
    """The model class a recipe's `model.class_path` names."""
    from types import SimpleNamespace

    import yaml

    from gen_lightning.cli import model_class

    return model_class(SimpleNamespace(class_path=yaml.safe_load(config.read_text())["model"]["class_path"]))


def archive(row: dict, output: Path) -> dict:
    """Copy a finished row's evidence into output/runs/<recipe>/ (module docstring); its paths become relative to output."""
    from gen_lightning.report import archive_run

    dest = archive_run(Path(row["metrics_json"]).parent, output / "runs" / row["name"])
    row = dict(row, run_dir=row["metrics_json"], metrics_json=str((dest / "metrics.json").relative_to(output)))
    if row.get("samples"):
        shutil.copyfile(row["samples"], dest / "samples.pt")
        row["samples"] = str((dest / "samples.pt").relative_to(output))
    return row


def evidence(row: dict, key: str, output: Path) -> Path | None:
    """The row's file `key` ("metrics_json", "samples"), relative paths read from `output`; None when it is gone."""
    if not row.get(key):
        return None
    path = Path(row[key]) if Path(row[key]).is_absolute() else output / row[key]
    return path if path.is_file() else None


def carried_lines(readme: Path) -> dict[str, str]:
    """The previous table's line of each recipe, from the league README (for rows whose evidence is gone)."""
    lines = {}
    for line in readme.read_text().splitlines() if readme.is_file() else []:
        cells = line.split("|")
        name = cells[1].strip().removesuffix(" (carried)") if line.startswith("| ") and len(cells) > 2 else ""
        if name.endswith("_mnist"):
            lines[name] = line
    return lines


def newest_metrics(workdir: Path, name: str) -> Path | None:
    found = sorted((workdir / "lightning_logs" / "cpu" / name).glob("version_*/metrics.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def run_recipe(config: Path, workdir: Path, data_root: Path, threads: int | None, skip_fit: bool) -> dict:
    name = config.stem
    log = workdir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    common = ["--config", str(config), "--data.init_args.root", str(data_root), "--trainer.enable_progress_bar", "false"]
    ckpt = workdir / "checkpoints" / "cpu" / name / "last.ckpt"
    row = {"name": name, "config": str(config.relative_to(REPO))}
    if not (skip_fit and ckpt.is_file()):
        row["fit_status"], row["fit_seconds"] = gen(["fit", *common], workdir, log, threads)
    row["test_status"], row["test_seconds"] = gen(["test", *common, "--ckpt_path", str(ckpt)], workdir, log, threads)
    out = workdir / "outputs" / "cpu" / name / "samples.pt"
    # the mosaic shows 10 samples a recipe; conditional ones also get a grid of 10 per digit (PixelCNN: 784 passes each)
    count = "100" if getattr(recipe_class(config), "conditional", False) else "10"
    row["predict_status"], _ = gen(["predict", *common, "--ckpt_path", str(ckpt), "--samples.num_samples", count,
                                    "--samples.output", str(out)], workdir, log, threads)  # fmt: skip
    metrics = newest_metrics(workdir, name)
    row["metrics_json"] = str(metrics) if metrics else None
    row["samples"] = str(out) if out.is_file() else None
    print(json.dumps(row), flush=True)
    return row


class RealDigits:
    """Real MNIST digits scored with the classifier shipped in gen_lightning: the floors of the league's classifier FID.

    `floor(n)`: `n` training digits drawn uniformly against the test split, what a perfect model scores.
    `class_mix_floor(histogram)`: training digits drawn in a model's class proportions (`histogram`: the classifier's
    count of its samples per class), the mean of `draws` draws: what the class make-up of the samples alone costs a
    model whose every sample were a real digit of its predicted class (a share of the FID only where the samples
    are recognizable: the classifier piles unrecognizable ones into a few classes).
    """

    def __init__(self, data_root: Path):
        from gen_lightning.data.mnist import MNISTDataModule
        from gen_lightning.metrics import classifier as clf_metrics

        self.metrics = clf_metrics
        dm = MNISTDataModule(root=str(data_root), value_range="0,1")
        dm.setup("fit")
        dm.setup("test")
        train = dm.split("train")
        self.train_x = train.x
        self.by_class = [torch.nonzero(train.y == k).flatten() for k in range(10)]  # training indices of each digit
        self.clf = clf_metrics.load_classifier()
        self.test_moments = clf_metrics.feature_moments(clf_metrics.classifier_features(self.clf, dm.split("test").x))

    def fid(self, index: torch.Tensor) -> float:
        moments = self.metrics.feature_moments(self.metrics.classifier_features(self.clf, self.train_x[index]))
        return self.metrics.frechet_distance(*moments, *self.test_moments)

    def floor(self, num_samples: int, seed: int = 0) -> float:
        g = torch.Generator().manual_seed(seed)
        return self.fid(torch.randperm(len(self.train_x), generator=g)[:num_samples])

    def class_mix_floor(self, histogram: list[int], draws: int = 3) -> float:
        fids = []
        for seed in range(draws):
            g = torch.Generator().manual_seed(seed)
            index = [i[torch.randperm(len(i), generator=g)[:n]] for i, n in zip(self.by_class, histogram)]
            fids.append(self.fid(torch.cat(index)))
        return sum(fids) / len(fids)


def mosaic(rows: list[dict], path: Path, output: Path) -> None:
    """One row of 10 samples per recipe; for conditional ones, digits 0-9 in order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if evidence(r, "samples", output)]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 0.95 * len(rows) + 0.3), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        saved = torch.load(evidence(r, "samples", output))
        x = saved["samples"][:10]  # uint8 (10, 1, 28, 28); conditional: labels 0..9
        ax.imshow(torch.cat(list(x[:, 0]), dim=1).numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_ylabel(r["name"].removesuffix("_mnist"), rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def digit_grids(rows: list[dict], output: Path) -> list[Path]:
    """For each conditional recipe: a 10 x 10 grid, one row per requested digit."""
    from torchvision.utils import save_image

    written = []
    for r in rows:
        if not evidence(r, "samples", output):
            continue
        saved = torch.load(evidence(r, "samples", output))
        if saved["labels"] is None:
            continue
        x, y = saved["samples"], saved["labels"]
        order = torch.cat([torch.nonzero(y == d)[:10, 0] for d in range(10)])
        path = output / f"{r['name']}_digits.png"
        save_image(x[order].float() / 255, path, nrow=10, padding=1)
        written.append(path)
    return written


def league_table(rows: list[dict], real: RealDigits, num_samples: int, output: Path) -> list[str]:
    header = ("| recipe | classifier FID (1,000 samples; floor {:.2f}) | real digits in the samples' class mix | "
              "classes covered | label accuracy | within-class diversity (min / mean) | NLL | fit minutes | "
              "gen test seconds | sampling ms/img |").format(real.floor(num_samples))
    lines = [header, "|" + "---|" * 10]
    carried = carried_lines(output / "README.md")
    for r in rows:
        found = evidence(r, "metrics_json", output)  # an earlier run's folder may be gone
        if not found and r["name"] in carried:
            cells = carried[r["name"]].split("|")
            lines.append("|".join([cells[0], f" {r['name']} (carried) ", *cells[2:]]))
            continue
        m = json.loads(found.read_text()) if found else {"metrics": {}}
        mm = m["metrics"]

        def get(key, fmt="{:.2f}"):
            v = mm.get(key)
            return fmt.format(v) if isinstance(v, (int, float)) else "n/a"

        unit = "nats (IWAE)" if m.get("model", "").endswith(".VAE") else "nats"  # one key, test/nll_nats, for every family
        nll = f"{mm['test/nll_nats']:.2f} {unit}" if isinstance(mm.get("test/nll_nats"), (int, float)) else "n/a"
        if isinstance(mm.get("test/bpd"), (int, float)):
            nll += f" ({mm['test/bpd']:.3f} bits/dim)"
        acc = get("test/label_accuracy", "{:.1%}")
        div = (f"{get('test/within_class_diversity_min')} / {get('test/within_class_diversity_mean')}"
               if "test/within_class_diversity_min" in mm else "n/a")
        fit_seconds = m.get("training", {}).get("speed", {}).get("fit_wall_seconds")  # FitStats, from the checkpoint
        fit_min = f"{fit_seconds / 60:.1f}" if isinstance(fit_seconds, (int, float)) else "n/a"
        histogram = m.get("extra", {}).get("class_histogram")  # ClassifierMetrics: the samples' predicted classes
        mix = f"{real.class_mix_floor(histogram):.2f}" if histogram else "n/a"
        lines.append(f"| {r['name']} | {get('test/classifier_fid')} | {mix} | {get('test/classes_covered', '{:.0f}')} | {acc} | {div} | "
                     f"{nll} | {fit_min} | {r.get('test_seconds', float('nan')):.0f} | {get('test/sample_ms_per_img', '{:.3g}')} |")
    lines.append("")
    lines.append(f"FID with the classifier shipped in gen_lightning/assets, {num_samples} samples against the 10,000 test "
                 f"digits; the floor is {num_samples} real training digits scored the same way. The class-mix column "
                 f"draws real training digits in the proportions of the classes the classifier sees in the samples "
                 f"(mean of 3 draws): what the class proportions alone would cost if every sample were a real digit of its "
                 f"predicted class. It reads as a share of the FID only where the samples are recognizable digits; where "
                 f"they are not (NADE, MADE, the flows) the classifier piles them into a few classes and the column can "
                 f"exceed the FID itself.")
    if any("(carried)" in line for line in lines):
        lines.append("")
        lines.append("Rows marked (carried) keep their line of the previous table: their run folders (metrics.json, curves, "
                     "samples) were on an earlier machine, before the league archived its runs in runs/, and are gone. "
                     "They are left out of gen compare's figures and the mosaic until the recipe runs again.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=str(REPO / "configs" / "cpu"), help="folder of the CPU-tier recipes")
    parser.add_argument("--only", nargs="*", help="recipe names (config stems) to run; `--only` alone: none, just compare")
    parser.add_argument("--jobs", type=int, default=1, help="recipes at a time; with 2, each gets one thread")
    parser.add_argument("--workdir", default=".", help="where checkpoints/, lightning_logs/ and outputs/ go")
    parser.add_argument("--data_root", default=str(SHARED_DATA), help="the folder that holds MNIST/raw")
    parser.add_argument("--skip_fit", action="store_true", help="keep existing checkpoints; only test and compare")
    parser.add_argument("--output", default=str(REPO / "docs" / "results" / "mnist_league"))
    args = parser.parse_args()

    every = sorted(Path(args.configs).glob("*_mnist.yaml"))
    configs = [c for c in every if c.stem in args.only] if args.only is not None else every
    workdir, output = Path(args.workdir).resolve(), Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    threads = 1 if args.jobs > 1 else None
    started, load = time.perf_counter(), os.getloadavg()[0]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        ran = list(pool.map(lambda c: run_recipe(c, workdir, Path(args.data_root), threads, args.skip_fit), configs))
    ran = [archive(r, output) if r.get("metrics_json") else r for r in ran]
    # the league is every recipe with a finished test, whether it ran now or in an earlier call (--only)
    earlier = json.loads((output / "runs.json").read_text()) if (output / "runs.json").is_file() else []
    by_name = {r["name"]: r for r in earlier} | {r["name"]: r for r in ran}
    rows = [by_name[c.stem] for c in every if c.stem in by_name and by_name[c.stem].get("metrics_json")]
    (output / "runs.json").write_text(json.dumps(rows, indent=2) + "\n")

    tested = [str(evidence(r, "metrics_json", output).parent) for r in rows if evidence(r, "metrics_json", output)]
    if tested:
        subprocess.call([sys.executable, "-m", "gen_lightning.cli", "compare", *tested, "--output", str(output)])
    real = RealDigits(Path(args.data_root))
    mosaic(rows, output / "mosaic.png", output)
    digit_grids(rows, output)
    lines = [
        "# The MNIST league (CPU tier)",
        "",
        f"`python benchmarks/mnist_league.py --jobs {args.jobs}` on {os.cpu_count()} CPU cores, torch {torch.__version__}; "
        f"load average {load:.1f} at the start; {(time.perf_counter() - started) / 60:.0f} minutes in all.",
        "",
        *league_table(rows, real, 1000, output),
        "",
        "![one row of samples per recipe](mosaic.png)",
        "",
        "Figures from `gen compare`: compare.md (every metric), bars.png, heatmap.png, radar.png, cube.png, "
        "quality_vs_minutes.png, samples.png.",
        "",
    ]
    (output / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
