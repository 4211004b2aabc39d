"""The separation task's training loss, a config choice (``train.loss``): L1 on waveforms, or
MSST's default for SCNet (its quantile-masked MSE)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from platform import spaces
from trainables.errors import RankhouseError
from trainables.separation import masked_mse

SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "scnet_techhouse.yaml"


def test_masked_mse_is_msst_s_masked_loss_by_hand():
    torch.manual_seed(0)
    est, ref = torch.randn(4, 2, 2, 100), torch.randn(4, 2, 2, 100)  # (batch, sources, channels, samples)
    errors = ((est - ref) ** 2).mean(dim=(-2, -1))  # (batch, sources)
    expected = 0.0
    for s in range(2):
        column = errors[:, s]
        cut = torch.quantile(column, 0.75)
        expected += float((column * (column < cut)).sum())
    assert float(masked_mse(est, ref, 0.75)) == pytest.approx(expected / errors.numel())


def test_the_worst_item_of_a_batch_does_not_steer_the_step():
    torch.manual_seed(1)
    est, ref = torch.randn(8, 1, 2, 50, requires_grad=True), torch.randn(8, 1, 2, 50)
    loss = masked_mse(est, ref, 0.9)
    worse = ref.clone()
    worst = int(((est - ref) ** 2).mean(dim=(1, 2, 3)).argmax())
    worse[worst] += 100.0  # a segment whose stems do not add up to its mixture, say
    assert float(masked_mse(est, worse, 0.9)) == pytest.approx(float(loss))
    loss.backward()
    assert float(est.grad[worst].abs().max()) == 0.0 and float(est.grad.abs().sum()) > 0


def test_the_loss_is_checked_before_anything_runs():
    assert spaces.load(SPACE).config["train"]["loss"] == "l1"
    assert spaces.load(SPACE, ["train.loss=msst_masked"]).config["train"]["loss_quantile"] == 0.95
    with pytest.raises(RankhouseError, match=re.escape("train.loss: 'mse'; expected l1 or msst_masked")):
        spaces.load(SPACE, ["train.loss=mse"])
    with pytest.raises(RankhouseError, match="msst_masked drops each batch's worst items"):
        spaces.load(SPACE, ["train.loss=msst_masked", "train.batch_size=1"])
