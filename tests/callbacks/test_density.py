"""DensityMetrics: NLL, bits/dim and KL(data || model) from a model's declared density, checked by hand."""

import math

import lightning as L
import pytest
import torch

from gen_lightning.callbacks import DensityMetrics, MetricsWriter
from gen_lightning.callbacks.outputs import ReportingCallback, collect_report
from gen_lightning.data import GMMDataModule
from gen_lightning.errors import ConfigError
from gen_lightning.models.base import GenerativeModel


class Gaussian2D(GenerativeModel):
    """p_model = N(0, scale^2 I) on 2-D data: a density known in closed form; `jitter` makes log_prob random."""

    def __init__(self, scale: float = 2.0, kind: str | None = "exact", jitter: float = 0.0):
        super().__init__()
        self.scale, self.kind, self.jitter = scale, kind, jitter
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    @property
    def density_kind(self):
        return self.kind

    def log_prob(self, x):
        log_p = -0.5 * (x / self.scale).pow(2).sum(1) - 2 * math.log(self.scale) - math.log(2 * math.pi)
        return log_p + self.jitter * torch.rand(x.shape[0])  # with jitter: one random draw, as a dequantization is

    def sample(self, n, labels=None, generator=None):
        return self.scale * torch.randn(n, 2, generator=generator)


def gmm_data():
    return GMMDataModule(preset="ring8", n_train=64, n_val=32, n_test=96, batch_size=32)


def run_test(model, callbacks):
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=callbacks)  # fmt: skip
    dm = gmm_data()
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    return metrics, dm, trainer


def test_nll_and_kl_equal_the_closed_form_over_the_test_split():
    model = Gaussian2D(scale=2.0)
    m, dm, _ = run_test(model, [DensityMetrics()])
    x = dm.split("test").x.float()
    nll = 0.5 * (x / 2.0).pow(2).sum(1) + 2 * math.log(2.0) + math.log(2 * math.pi)
    assert m["test/nll_nats"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert m["test/kl_data_model"] == pytest.approx((dm.log_prob(x) + nll).mean().item(), rel=1e-5)
    assert "test/bpd" not in m  # bits_per_dim is None for 2-D data (GenerativeModel's default)


def test_random_draws_in_log_prob_repeat_exactly_and_leave_the_global_generator_alone():
    model = Gaussian2D(jitter=1.0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first, _, _ = run_test(model, [DensityMetrics(seed=5)])
    assert torch.equal(torch.rand(3), expected_next)
    second, _, _ = run_test(model, [DensityMetrics(seed=5)])
    other, _, _ = run_test(model, [DensityMetrics(seed=6)])
    assert first["test/nll_nats"] == second["test/nll_nats"] != other["test/nll_nats"]


def test_models_without_a_density_log_nothing_and_a_bad_kind_is_refused():
    m, _, _ = run_test(Gaussian2D(kind=None), [DensityMetrics()])
    assert not any(k in m for k in ("test/nll_nats", "test/kl_data_model"))
    m, _, _ = run_test(Gaussian2D(), [DensityMetrics(enabled=False)])
    assert "test/nll_nats" not in m
    with pytest.raises(ConfigError, match="density_kind must be one of"):
        run_test(Gaussian2D(kind="approximate"), [DensityMetrics()])


def test_a_bound_says_so_and_data_without_a_density_omits_kl():
    cb = DensityMetrics()
    run_test(Gaussian2D(kind="bound"), [cb])
    assert "upper bound" in cb.metrics_report(None, None)["conventions"]["test/kl_data_model"]

    class NoDensity(L.LightningDataModule):
        dataset_name = "toy"

    trainer = type("T", (), {"datamodule": NoDensity()})()
    cb.setup(trainer, Gaussian2D(), "test")
    assert "no exact density" in cb.metrics_report(None, None)["omitted"]["test/kl_data_model"]


def test_metrics_json_collects_every_callbacks_rows_and_drops_omissions_of_logged_metrics(tmp_path):
    class Declares(Gaussian2D):
        omitted_metrics = {"test/nll_nats": "declared before a callback logs it", "test/bpd": "2-D data"}
        metric_conventions = {"test/nll_nats": "the model's own words"}

    class Notes(ReportingCallback):
        def setup(self, trainer, pl_module, stage):
            self.reset_report()
            self.note("extra", {"histogram": [1, 2]})
            self.note("conventions", {"test/nll_nats": "the callback's words"})

    writer = MetricsWriter()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, callbacks=[DensityMetrics(), Notes(), writer])
    trainer.test(Declares(), datamodule=gmm_data(), verbose=False)
    import json

    report = json.loads(writer.path.read_text())
    assert report["omitted"] == {"test/bpd": "2-D data"}  # test/nll_nats was logged by DensityMetrics
    assert report["conventions"]["test/nll_nats"] == "the callback's words"  # a later row wins
    assert report["extra"] == {"histogram": [1, 2]} and "test/kl_data_model" in report["conventions"]
    assert collect_report(trainer, Declares(), {})["omitted"]["test/nll_nats"] == "declared before a callback logs it"
