"""The shared loop run bare on real rendered audio: it reports every epoch, resumes exactly from
its own checkpoint, and fails a trial on a non-finite loss with that reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainables import checkpoint, htdemucs, loop


@pytest.fixture
def config(corpus, tiny_kwargs, tmp_path):
    torch.manual_seed(0)
    model = htdemucs.new_model(["drums", "bass", "other", "vocals"], tiny_kwargs)
    base = tmp_path / "base.safetensors"
    htdemucs.save_checkpoint(model, base, tiny_kwargs)
    return {
        "model": {"family": "htdemucs", "base": str(base), "sources": ["kick", "hihat", "bass", "other", "vocals"],
                  "parents": {"kick": "drums", "hihat": "drums"}},
        "data": {"root": str(corpus), "segment": 1.0, "cache_dir": str(tmp_path / "cache")},
        "lora": {"rank": 2, "alpha": 4.0},
        "optim": {"lr": 1e-3, "schedule": "cosine", "warmup": 0.2},
        "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 1, "seed": 3, "valid_max_seconds": 2.0},
    }


def run(cfg, resume=None, keep: Path | None = None):
    reports = []

    def report(metrics, folder):
        reports.append(metrics)
        if keep is not None:
            shutil.copytree(folder, keep / f"epoch{metrics['epoch']}")

    loop.train(cfg, report, resume_from=resume, device=torch.device("cpu"), log=lambda *a: None)
    return reports


def adapter(folder: Path) -> dict:
    return load_file(str(folder / checkpoint.ADAPTER / "adapter_model.safetensors"))


def test_reports_every_epoch_with_sdr_per_source(config, one_thread):
    reports = run(config)
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        assert {"train/loss", "valid/loss", "valid/sdr", "lr"} <= set(r)
        assert {f"valid/sdr/{s}" for s in config["model"]["sources"]} <= set(r)
        per_source = [r[f"valid/sdr/{s}"] for s in config["model"]["sources"]]
        assert r["valid/sdr"] == pytest.approx(sum(per_source) / len(per_source))


def test_resume_from_checkpoint_continues_exactly(config, tmp_path, one_thread):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    full = run(config, keep=straight)
    rest = run(config, resume=straight / "epoch1", keep=resumed)
    assert [r["epoch"] for r in rest] == [2]  # only the missing epoch ran
    a, b = adapter(straight / "epoch2"), adapter(resumed / "epoch2")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rest[0]["train/loss"] == full[1]["train/loss"]


def test_real_optimizer_steps_leave_the_frozen_base_unchanged(config, one_thread):
    """After real AdamW steps (weight decay included) every frozen weight is bit for bit what the
    trial started from; the adapters and the rebuilt heads, and only they, moved."""
    setups, before = [], {}

    def snapshot(setup):
        setups.append(setup)
        before.update({n: p.detach().clone() for n, p in setup.model.named_parameters()})

    loop.train(config, lambda metrics, folder: None, device=torch.device("cpu"), log=lambda *a: None,
               on_setup=snapshot)
    after = dict(setups[0].model.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    trained = [n for n, p in after.items() if p.requires_grad]
    assert frozen and all(torch.equal(after[n].detach(), before[n]) for n in frozen)
    assert {n for n in trained if "lora_" not in n} and all(
        "lora_" in n or ".modules_to_save." in n for n in trained)
    moved = [n for n in trained if not torch.equal(after[n].detach(), before[n])]
    assert any("lora_B" in n for n in moved) and any(".modules_to_save." in n for n in moved)


def test_msst_s_masked_loss_trains_another_adapter(config, tmp_path, one_thread):
    """``train.loss: msst_masked`` reaches the loop: the same run with it ends elsewhere than with L1."""
    config["train"]["batch_size"] = 2  # the mask drops each batch's worst items: one item would be all
    l1, masked = tmp_path / "l1", tmp_path / "masked"
    l1.mkdir(), masked.mkdir()
    first = run(config, keep=l1)
    config["train"]["loss"] = "msst_masked"
    second = run(config, keep=masked)
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in first + second)
    assert first[-1]["train/loss"] != second[-1]["train/loss"]
    a, b = adapter(l1 / "epoch2"), adapter(masked / "epoch2")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_fails_the_trial_with_the_reason(config, one_thread):
    config["optim"].update(lr=1e30, schedule="constant", warmup=0.0, grad_clip=0.0)
    config["train"].update(epochs=1, steps_per_epoch=6)
    with pytest.raises(loop.TrialFailed, match="non-finite"):
        run(config)
