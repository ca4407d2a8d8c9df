"""Lightning callbacks: sample grids, metrics.json and sample files. EMA is Lightning's EMAWeightAveraging (callbacks.ema.EMA adds the decay warm-up)."""

from gen_lightning.callbacks.density import DensityMetrics
from gen_lightning.callbacks.ema import EMA
from gen_lightning.callbacks.gmm_metrics import GMMMetrics
from gen_lightning.callbacks.ode_likelihood import ODELikelihood
from gen_lightning.callbacks.outputs import MetricsWriter, SampleWriter
from gen_lightning.callbacks.quality import FitClock, SampleQuality
from gen_lightning.callbacks.sample_grid import LatentInterpolation, SampleGrid

__all__ = ["DensityMetrics", "EMA", "FitClock", "GMMMetrics", "LatentInterpolation", "MetricsWriter", "ODELikelihood", "SampleQuality", "SampleGrid", "SampleWriter"]
