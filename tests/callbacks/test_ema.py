"""The EMA callback: Lightning's EMAWeightAveraging with the decay warmed up as min(decay, (1 + n) / (10 + n))."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from gen_lightning.callbacks.ema import EMA, warmup_decay
from gen_lightning.errors import ConfigError


def test_warmup_decay_golden_values():
    assert warmup_decay(0.999, 1) == pytest.approx(2 / 11)
    assert warmup_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmup_decay(0.999, 10**6) == 0.999  # capped at the configured decay
    assert warmup_decay(0.9, torch.tensor(1)).item() == pytest.approx(2 / 11)


def _average_of(values, callback):
    net = nn.Linear(1, 1, bias=False)
    average = AveragedModel(net, **callback._kwargs)
    for v in values:
        net.weight.data.fill_(v)
        average.update_parameters(net)
    return average.module.weight.item()


def test_average_follows_the_recursion_by_hand():
    # first update copies (n = 0); then a_n = d_n a + (1 - d_n) w with d_n = min(0.5, (1 + n) / (10 + n))
    values = [1.0, 3.0, 5.0, 0.0]
    expected = values[0]
    for n, w in enumerate(values[1:], start=1):
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * w
    assert _average_of(values, EMA(decay=0.5)) == pytest.approx(expected)


def test_without_warmup_it_is_lightnings_plain_ema():
    values = [1.0, 3.0, 5.0]
    assert _average_of(values, EMA(decay=0.5, warmup=False)) == pytest.approx((0.5 * 1.0 + 0.5 * 3.0) * 0.5 + 0.5 * 5.0)


def test_short_runs_are_not_dominated_by_the_initial_weights():
    # 100 updates towards a constant 1 from a start at 0: the plain EMA at 0.999 keeps 0.999^99 ~ 91% of the start
    plain = _average_of([0.0] + [1.0] * 99, EMA(decay=0.999, warmup=False))
    warm = _average_of([0.0] + [1.0] * 99, EMA(decay=0.999))
    assert plain == pytest.approx(1 - 0.999**99)
    assert warm > 0.99


def test_bad_decay_is_one_config_error():
    with pytest.raises(ConfigError, match="decay must be in"):
        EMA(decay=1.5)


class _Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1.0).pow(2).sum()  # w -> 1 under SGD

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(20, 1), batch_size=1)


def test_is_a_lightning_weight_averaging_callback_in_a_fit(tmp_path):
    model = _Model()
    trainer = L.Trainer(max_epochs=1, callbacks=[EMA(decay=0.999)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model)
    # raw w after k steps: 1 - 0.8^k; the warmed-up average trails it but is far from the initial 0
    # (the plain 0.999 EMA of the same run would be below 0.02)
    assert 0.5 < model.w.item() < 1 - 0.8**20


def test_a_fit_shorter_than_the_warm_up_says_so(tmp_path, caplog):
    """20 averages against the 8,990 after which (1 + n) / (10 + n) >= 0.999: the line names both and the last decay."""
    import logging

    model = _Model()
    trainer = L.Trainer(max_epochs=1, callbacks=[EMA(decay=0.999)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        trainer.fit(model)
    assert "this fit took 20 averages and the warm-up reaches decay 0.999 after 8,990" in caplog.text
    assert "last decay was 0.7000" in caplog.text  # (1 + 20) / (10 + 20)
    caplog.clear()
    trainer = L.Trainer(max_epochs=1, callbacks=[EMA(decay=0.5)], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with caplog.at_level(logging.INFO):
        trainer.fit(_Model())
    assert "EMA:" not in caplog.text  # 0.5 is reached at the first average
