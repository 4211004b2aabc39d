"""The embedded base's plateau rule (Keras' min_delta semantics), resuming a base run, and
starting one from earlier weights (``--init``)."""

from __future__ import annotations

import argparse
import json

import pytest

from platform import base
from trainables.errors import RankhouseError


def args_for(work, **kw):
    return argparse.Namespace(**{"work": work, "min_delta": 0.05, "lr": 2e-4, "out": work / "asset.safetensors", **kw})


def write_run(work, sdrs):
    work.mkdir(parents=True, exist_ok=True)
    (work / "best.safetensors").write_bytes(b"weights")
    curve = [{"epoch": i + 1, "step": 50 * (i + 1), "minutes": 1.5 * (i + 1), "lr": 5e-4, "train_loss": 0.01,
              "valid": v} for i, v in enumerate(sdrs)]
    (work / "curve.json").write_text(json.dumps(curve))


def test_a_slow_creep_still_counts_once_it_adds_up_to_min_delta(tmp_path):
    # +0.03 dB per epoch: no single epoch beats the best by 0.05, every second one beats the bar
    write_run(tmp_path, [6.0 + 0.03 * i for i in range(10)])
    curve, best, offset = base.resume_state(args_for(tmp_path), 1.0)
    assert best["improved_epoch"] == 9 and best["bar"] == pytest.approx(6.24)
    assert best["epoch"] == 10 and offset == {"epoch": 10, "step": 500, "minutes": 15.0}


def test_a_curve_written_before_every_task_had_a_base_still_resumes(tmp_path):
    write_run(tmp_path, [5.0, 6.0, 6.2])
    curve = json.loads((tmp_path / "curve.json").read_text())
    (tmp_path / "curve.json").write_text(json.dumps([{**{k: v for k, v in c.items() if k != "valid"},
                                                      "valid_sdr": c["valid"]} for c in curve]))
    curve, best, _ = base.resume_state(args_for(tmp_path), 1.0)
    assert best["value"] == 6.2 and best["epoch"] == 3 and [c["valid"] for c in curve] == [5.0, 6.0, 6.2]


def test_noise_around_a_level_is_a_plateau(tmp_path):
    write_run(tmp_path, [5.0, 6.0, 6.04, 5.98, 6.03, 6.01, 6.045, 5.99])
    _, best, _ = base.resume_state(args_for(tmp_path), 1.0)
    assert best["improved_epoch"] == 2 and best["epoch"] == 7


def test_a_minimised_objective_plateaus_when_it_stops_falling(tmp_path):
    """A loss (the ACE-Step family's valid/fm_loss): its best is its lowest, its bar falls."""
    write_run(tmp_path, [0.70, 0.40, 0.30, 0.29, 0.31, 0.285, 0.295])
    _, best, _ = base.resume_state(args_for(tmp_path, min_delta=0.02), -1.0)
    assert best["epoch"] == 6 and best["value"] == pytest.approx(-0.285)
    assert best["improved_epoch"] == 3 and best["bar"] == pytest.approx(-0.30)  # none since is 0.02 below 0.30


def test_resume_needs_an_earlier_run(tmp_path):
    with pytest.raises(RankhouseError, match="no best.safetensors/curve.json"):
        base.resume_state(args_for(tmp_path / "nothing"), 1.0)


def test_lr_stages_group_consecutive_epochs():
    curve = [{"epoch": e, "lr": 5e-4 if e <= 2 else 2e-4} for e in range(1, 5)]
    assert base.lr_stages(curve) == [{"lr": 5e-4, "first_epoch": 1, "last_epoch": 2},
                                     {"lr": 2e-4, "first_epoch": 3, "last_epoch": 4}]


def test_init_maps_a_base_of_the_bs_roformer_package_onto_msst_keys(tmp_path):
    """The previous embedded BS-RoFormer (the package's layout) as a starting point: blocks leave
    their hyper-connection wrapper and the value-residual gates MSST lacks are dropped."""
    import torch
    from safetensors.torch import save_file

    old = {"layers.0.0.layers.0.0.branch.to_qkv.weight": torch.ones(6, 2),
           "layers.1.0.layers.0.0.branch.to_value_residual_mix.weight": torch.zeros(2, 2),
           "final_norm.gamma": torch.ones(2)}
    save_file(old, str(tmp_path / "old.safetensors"))
    state = base.initial_weights(tmp_path / "old.safetensors")
    assert sorted(state) == ["final_norm.gamma", "layers.0.0.layers.0.0.to_qkv.weight"]


@pytest.mark.parametrize("argv, message", [
    (["--init", "nowhere.safetensors"], "--init nowhere.safetensors: no such file"),
    (["--init", "x.safetensors", "--resume"], "--init and --resume"),
])
def test_init_is_checked_before_any_data_is_rendered(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base, "study", lambda *a, **k: pytest.fail("rendered before checking --init"))
    with pytest.raises(RankhouseError, match=message):
        base.main(["--family", "bs_roformer", "--work", str(tmp_path / "w"), *argv])
