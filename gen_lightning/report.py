"""`gen compare`: finished runs side by side, as tables, figures and a TensorBoard run.

    gen compare lightning_logs/*/version_1 --output docs/results/compare

A run is a directory holding the metrics.json that `gen test` wrote. Its training curves
come from the TensorBoard events of the fit that made its checkpoint, and its sample grid
from that fit's `samples/` folder. `archive_run` copies a run into a folder of its own that
holds all three (metrics.json, curves.json, samples.png), which `gen compare` reads the same
way once the fit's folder is gone (the MNIST league keeps its rows so, in docs/).

Normalization (stated on the figures, and in docs/):
  - each metric is min-max scaled across the compared runs to [0, 1], with 1 the best run;
    whether lower or higher is better is decided by `LOWER_IS_BETTER` / `HIGHER_IS_BETTER`;
  - a metric that all runs share one value of scales to 1 for all; a missing one is "n/a"
    (blank in the heatmap, 0 on the radar, and named in the radar's legend);
  - the radar's four axes each take the mean of their metrics' normalized scores:
    quality, stability (loss CV over the last 10% of steps), controllability (accuracy on
    requested labels, absolute) and efficiency (sampling ms/img and training img/s).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

LOWER_IS_BETTER = ("fid", "kid", "kl", "nll", "bpd", "nelbo", "ms_per", "cv", "nonfinite", "loss", "seconds", "energy_distance")
# descriptive values with no better direction (an EBM's mean energy on data, spreads of other metrics): tabled, not ranked
NO_DIRECTION = ("energy_data", "_std")
HIGHER_IS_BETTER = ("acc", "entropy", "modes_covered", "high_quality", "inception_score", "precision", "recall", "per_second", "classes_covered", "diversity")
RADAR_AXES = {
    "quality": ("classifier_fid", "fid", "reverse_kl_modes", "kl_data_model", "nll_nats", "bpd", "high_quality_fraction"),
    "stability": ("loss_cv_tail", "g_loss_cv_tail", "d_loss_cv_tail"),
    "controllability": ("label_accuracy", "within_class_diversity_min"),
    "efficiency": ("sample_ms_per_img", "train_images_per_second"),
}


@dataclass
class Run:
    name: str
    path: Path
    model: str
    dataset: str
    metrics: dict[str, float | None]
    info: dict[str, float | None]
    curves: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    sample_grid: Path | None = None


def higher_is_better(metric: str) -> bool:
    name = metric.lower()
    if any(k in name for k in HIGHER_IS_BETTER):
        return True
    if any(k in name for k in LOWER_IS_BETTER):
        return False
    raise ValueError(f"no direction known for metric {metric!r}; add it to LOWER_IS_BETTER or HIGHER_IS_BETTER")


def read_curves(log_dir: Path | None) -> dict[str, tuple[list[int], list[float]]]:
    """Every `train/*` and `val/*` scalar of a fit's TensorBoard events."""
    if log_dir is None or not log_dir.is_dir():
        return {}
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    curves = {}
    for tag in acc.Tags().get("scalars", []):
        if tag.startswith(("train/", "val/")) and not tag.endswith("_epoch"):
            events = acc.Scalars(tag)
            curves[tag.removesuffix("_step")] = ([e.step for e in events], [e.value for e in events])
    return curves


ARCHIVED_CURVES, ARCHIVED_GRID = "curves.json", "samples.png"


def fit_dir_of(path: Path, report: dict) -> Path | None:
    """The folder of the fit that made the checkpoint a test run `path` (with its metrics.json `report`) scored."""
    fit_dir = report.get("trained", {}).get("fit_log_dir")
    fit_dir = Path(fit_dir) if fit_dir else None
    if fit_dir is not None and not fit_dir.is_absolute() and not fit_dir.is_dir():
        # relative to where `gen fit` ran, an ancestor of this test run's directory (logger names may hold a
        # slash, as the league's cpu/<recipe> does, so the depth is not fixed)
        fit_dir = next((p / fit_dir for p in path.resolve().parents if (p / fit_dir).is_dir()), fit_dir)
    return fit_dir


def last_grid(fit_dir: Path | None) -> Path | None:
    grids = sorted((fit_dir / "samples").glob("*.png")) if fit_dir and (fit_dir / "samples").is_dir() else []
    return grids[-1] if grids else None


def archive_run(path: Path, dest: Path) -> Path:
    """Copy the test run `path` into `dest`: its metrics.json, its fit's curves as curves.json and its fit's last
    sample grid as samples.png, so that `gen compare dest` reads the same run after the fit's folder is gone."""
    report = json.loads((path / "metrics.json").read_text())
    fit_dir = fit_dir_of(path, report)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    curves = read_curves(fit_dir) if fit_dir is not None and fit_dir.is_dir() else {}
    (dest / ARCHIVED_CURVES).write_text(json.dumps({tag: {"steps": s, "values": v} for tag, (s, v) in curves.items()}) + "\n")
    grid = last_grid(fit_dir)
    if grid is not None:
        shutil.copyfile(grid, dest / ARCHIVED_GRID)
    return dest


def load_run(path: Path) -> Run:
    report = json.loads((path / "metrics.json").read_text())
    fit_dir = fit_dir_of(path, report)
    if (path / ARCHIVED_CURVES).is_file():  # an archived run (archive_run): everything in its own folder
        saved = json.loads((path / ARCHIVED_CURVES).read_text())
        curves = {tag: (c["steps"], c["values"]) for tag, c in saved.items()}
        grid = path / ARCHIVED_GRID if (path / ARCHIVED_GRID).is_file() else None
    else:
        curves, grid = read_curves(fit_dir), last_grid(fit_dir)
    training = report.get("training", {})
    stability = training.get("stability", {})
    metrics = {k.removeprefix("test/"): v for k, v in report["metrics"].items()}
    metrics.update({k: v for k, v in stability.items() if k.endswith("_cv_tail") and "loss" in k})  # loss stability only
    speed = training.get("speed", {})
    metrics["train_images_per_second"] = speed.get("train_images_per_second")
    info = {
        "train_seconds": speed.get("fit_wall_seconds"),
        "sample_ms_per_img": metrics.get("sample_ms_per_img"),
        "parameters": report.get("num_parameters"),
        "epochs": report.get("trained", {}).get("epochs"),
    }
    name = path.parent.name if path.name.startswith("version_") else path.name
    if report.get("untrained"):
        name += " (untrained)"  # `gen test --allow_untrained`: a reference point, not a trained model
    return Run(name, path, report["model"].rsplit(".", 1)[-1], report["data"].get("dataset", "?"), metrics, info,
               curves, grid)  # fmt: skip


def expand(patterns: list[str]) -> list[Path]:
    paths = []
    for p in patterns:
        matches = sorted(glob.glob(p)) or [p]
        paths += [Path(m) for m in matches if (Path(m) / "metrics.json").is_file()]
    if not paths:
        raise SystemExit(f"error: no run directory with a metrics.json in {patterns}; run `gen test` on each run first")
    return paths


def fmt(v) -> str:
    if isinstance(v, str):  # "inf" / "nan" from metrics.json
        return v
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    metric_names = sorted({k for r in runs for k in r.metrics} - {"sample_ms_per_img"})
    header = ["run", "model", "dataset", *metric_names, "train_seconds", "sample_ms_per_img", "parameters", "epochs"]
    rows = [[r.name, r.model, r.dataset, *(fmt(r.metrics.get(m)) for m in metric_names),
             *(fmt(r.info[k]) for k in ("train_seconds", "sample_ms_per_img", "parameters", "epochs"))] for r in runs]  # fmt: skip
    return header, rows


def normalized(runs: list[Run], metric: str) -> list[float | None]:
    """Min-max across runs, 1 = best; None where the run lacks the metric."""
    values = [r.metrics.get(metric) for r in runs]
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return [None] * len(runs)
    lo, hi = min(finite), max(finite)
    out = []
    for v in values:
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            out.append(None)
        elif hi == lo:
            out.append(1.0)
        else:
            s = (v - lo) / (hi - lo)
            out.append(s if higher_is_better(metric) else 1 - s)
    return out


def numeric_metrics(runs: list[Run]) -> list[str]:
    names = sorted({k for r in runs for k, v in r.metrics.items() if isinstance(v, (int, float))})
    return [m for m in names if m != "num_modes" and not any(k in m for k in NO_DIRECTION)]


def fig_bars(runs: list[Run]) -> plt.Figure:
    metrics = numeric_metrics(runs)
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(metrics) / cols), cols, figsize=(4 * cols, 2.6 * math.ceil(len(metrics) / cols)), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        vals = [r.metrics.get(m) for r in runs]
        ax.bar(range(len(runs)), [v if isinstance(v, (int, float)) and math.isfinite(v) else 0 for v in vals], color="tab:blue")
        for i, v in enumerate(vals):
            ax.text(i, 0, fmt(v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(runs)), [r.name for r in runs], rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{m} ({'higher' if higher_is_better(m) else 'lower'} is better)", fontsize=8)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def fig_heatmap(runs: list[Run]) -> plt.Figure:
    metrics = numeric_metrics(runs)
    grid = np.array([[np.nan if v is None else v for v in normalized(runs, m)] for m in metrics]).T  # (runs, metrics)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(metrics), 1.5 + 0.5 * len(runs)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(runs)), [r.name for r in runs], fontsize=8)
    ax.set_title("min-max across runs, 1 = best; blank = n/a", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


def radar_scores(runs: list[Run]) -> dict[str, list[float | None]]:
    scores = {}
    for axis, metrics in RADAR_AXES.items():
        per_metric = [normalized(runs, m) if axis != "controllability" else [r.metrics.get(m) for r in runs] for m in metrics]
        scores[axis] = []
        for i in range(len(runs)):
            vals = [col[i] for col in per_metric if col[i] is not None]
            scores[axis].append(sum(vals) / len(vals) if vals else None)
    return scores


def fig_radar(runs: list[Run]) -> plt.Figure:
    scores = radar_scores(runs)
    axes = list(scores)
    angles = np.linspace(0, 2 * np.pi, len(axes), endpoint=False).tolist()
    fig = plt.figure(figsize=(6, 6))
    ax = fig.add_subplot(polar=True)
    for i, r in enumerate(runs):
        vals = [scores[a][i] or 0.0 for a in axes]
        missing = [a for a in axes if scores[a][i] is None]
        label = r.name + (f" (n/a: {', '.join(missing)})" if missing else "")
        ax.plot(angles + angles[:1], vals + vals[:1], label=label)
        ax.fill(angles + angles[:1], vals + vals[:1], alpha=0.1)
    ax.set_xticks(angles, axes)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=7)
    fig.text(0.02, 0.01, "Each axis: mean of its metrics min-max scaled across runs (1 = best);\n"
             "controllability is the absolute accuracy on requested labels; n/a plotted as 0.", fontsize=7)  # fmt: skip
    return fig


def fig_curves(runs: list[Run]) -> plt.Figure:
    tags = sorted({t for r in runs for t in r.curves})
    cols = 3
    rows = max(1, math.ceil(len(tags) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        for r in runs:
            if tag in r.curves:
                ax.plot(*r.curves[tag], label=r.name, lw=0.8)
        ax.set_title(tag, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tags) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def fig_mosaic(runs: list[Run]) -> plt.Figure:
    fig, axes = plt.subplots(1, len(runs), figsize=(3.5 * len(runs), 3.8), squeeze=False)
    for ax, r in zip(axes.flat, runs):
        if r.sample_grid is not None:
            ax.imshow(plt.imread(r.sample_grid))
        else:
            ax.text(0.5, 0.5, "n/a", ha="center", va="center")
        ax.set_title(f"{r.name}\n{r.model} on {r.dataset}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def fig_cube(runs: list[Run]) -> plt.Figure:
    """Quality x stability x controllability (the radar's scores), one point per run; n/a plotted at 0."""
    scores = radar_scores(runs)
    fig = plt.figure(figsize=(6, 5.5))
    ax = fig.add_subplot(projection="3d")
    for i, r in enumerate(runs):
        q, s_, c = (scores[a][i] or 0.0 for a in ("quality", "stability", "controllability"))
        ax.scatter([q], [s_], [c], s=40)
        ax.text(q, s_, c, " " + r.name, fontsize=7)
    ax.set_xlabel("quality", fontsize=8)
    ax.set_ylabel("stability", fontsize=8)
    ax.set_zlabel("controllability", fontsize=8)
    ax.set(xlim=(0, 1), ylim=(0, 1), zlim=(0, 1))
    ax.set_title("radar scores in 3-D (1 = best; n/a at 0)", fontsize=9)
    return fig


def quality_against_minutes(run: Run, metric: str = "val/classifier_fid") -> tuple[list[float], list[float]] | None:
    """(fit minutes, metric) pairs of a fit that logged `metric` and `val/fit_minutes` (SampleQuality or FitClock),
    matched by step; None without them."""
    if metric not in run.curves or "val/fit_minutes" not in run.curves:
        return None
    minutes = dict(zip(*run.curves["val/fit_minutes"]))
    pairs = sorted((minutes[step], value) for step, value in zip(*run.curves[metric]) if step in minutes)
    return ([m for m, _ in pairs], [v for _, v in pairs]) if pairs else None


# the models whose validation loss is an exact NLL in nats (of the binarized validation digits): their curve against
# minutes is the likelihood families' quality curve (PixelCNN draws no samples during its fit: too slow for its budget)
NLL_CURVES = {"AutoregressiveModel": "val/loss"}


def nll_against_minutes(run: Run) -> tuple[list[float], list[float]] | None:
    """(fit minutes, validation NLL in nats) of a run whose model's `val/loss` is an exact NLL; None otherwise."""
    metric = NLL_CURVES.get(run.model.rsplit(".", 1)[-1])
    return quality_against_minutes(run, metric) if metric else None


def fig_quality_minutes(runs: list[Run]) -> plt.Figure:
    fig, (ax_fid, ax_nll) = plt.subplots(1, 2, figsize=(12.0, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colors, markers = plt.cm.tab20.colors, "osD^v<>ph*"  # one look per run: the default cycle repeats after 10
    for i, r in enumerate(runs):
        look = {"marker": markers[i % len(markers)], "color": colors[(2 * i) % 20 + (2 * i // 20) % 2], "label": r.name}
        for ax, curve in ((ax_fid, quality_against_minutes(r)), (ax_nll, nll_against_minutes(r))):
            if curve is not None:
                ax.plot(*curve, **look)
    ax_fid.set_yscale("log")
    ax_fid.set_ylabel("classifier FID during fit (log scale, lower is better)")
    ax_nll.set_ylabel("exact NLL of validation digits during fit (nats, lower is better)")
    empty = {ax_fid: "no run logged val/classifier_fid with val/fit_minutes (SampleQuality)",
             ax_nll: "no autoregressive run logged val/loss with val/fit_minutes (SampleQuality or FitClock)"}
    for ax, message in empty.items():
        ax.set_xlabel("minutes of gen fit (wall clock, sample evaluations excluded)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper right")
        else:
            ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=8, wrap=True)
    fig.tight_layout()
    return fig


FIGURES = {"bars": fig_bars, "heatmap": fig_heatmap, "radar": fig_radar, "cube": fig_cube, "curves": fig_curves,
           "quality_vs_minutes": fig_quality_minutes, "samples": fig_mosaic}


def check_one_dataset(runs: list[Run]) -> None:
    """Metrics of different datasets (MNIST and GMM, ring8 and grid25) are not comparable: refuse to rank them together."""
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        by = "; ".join(f"{d}: {', '.join(r.name for r in runs if r.dataset == d)}" for d in datasets)
        raise SystemExit(f"error: gen compare ranks runs of one dataset at a time, got {len(datasets)} ({by}); "
                         "run it once per dataset")


def compare(patterns: list[str], output: Path) -> dict[str, Path]:
    runs = [load_run(p) for p in expand(patterns)]
    check_one_dataset(runs)
    output.mkdir(parents=True, exist_ok=True)
    header, rows = table(runs)
    written = {"table_md": output / "compare.md", "table_csv": output / "compare.csv"}
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    written["table_md"].write_text("\n".join(md) + "\n")
    with written["table_csv"].open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    for old in (output / "tensorboard").glob("events.out.tfevents.*"):
        old.unlink()  # the comparison is rewritten as a whole, like compare.md: one event file, not one per call
    writer = SummaryWriter(str(output / "tensorboard"))
    writer.add_text("compare/table", "\n".join(md))
    for name, make in FIGURES.items():
        fig = make(runs)
        written[name] = output / f"{name}.png"
        fig.savefig(written[name], dpi=110, bbox_inches="tight")
        writer.add_figure(f"compare/{name}", fig)  # closes the figure
    writer.close()
    return written


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="gen compare", description="Finished runs side by side: tables and figures.")
    parser.add_argument("runs", nargs="+", help="run directories holding metrics.json, or globs of them")
    parser.add_argument("--output", default="compare", help="folder for the tables, PNGs and the TensorBoard run")
    ns = parser.parse_args(args)
    for kind, path in compare(ns.runs, Path(ns.output)).items():
        print(f"{kind}: {path}")
