"""The pieces of the training loop that need no model: lr schedules, overlap-add separation,
nSDR and pickle-free checkpoints (trainables/loop.py, separation.py, metrics.py, checkpoint.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainables import checkpoint
from trainables.errors import RankhouseError
from trainables.loop import lr_lambda
from trainables.metrics import nsdr
from trainables.separation import separate

pytestmark = pytest.mark.usefixtures("one_thread")


# --- lr schedules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_ramps_linearly_to_the_base_lr(schedule):
    f = lr_lambda(schedule, total=100, warmup=0.1)  # 10 warmup steps
    ramp = [f(s) for s in range(10)]
    assert ramp == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert all(0 < a < b < 1 for a, b in zip(ramp, ramp[1:]))
    assert f(10) == pytest.approx(1.0)  # the first step after warmup is the peak


def test_constant():
    f = lr_lambda("constant", total=50, warmup=0.0)
    assert [f(s) for s in (0, 1, 25, 49, 50, 80)] == [1.0] * 6


def test_linear_decays_to_zero_at_the_end():
    f = lr_lambda("linear", total=100, warmup=0.2)  # 20 warmup steps, 80 decay steps
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(99) == pytest.approx(1 / 80)
    assert f(100) == 0.0 and f(150) == 0.0  # never negative past the end
    g = lr_lambda("linear", total=10, warmup=0.0)
    assert [g(s) for s in range(11)] == pytest.approx([1 - s / 10 for s in range(11)])


def test_cosine_is_half_at_the_midpoint_after_warmup():
    f = lr_lambda("cosine", total=100, warmup=0.2)
    assert f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(40) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(100) == pytest.approx(0.0, abs=1e-12) and f(130) == pytest.approx(0.0, abs=1e-12)
    values = [f(s) for s in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_schedule_drives_lambda_lr_to_zero():
    """As the loop uses it: total = epochs * steps scheduler.step() calls end at lr 0."""
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("linear", 12, 0.25))
    lrs = [sched.get_last_lr()[0]]
    for _ in range(12):
        opt.step()
        sched.step()
        lrs.append(sched.get_last_lr()[0])
    assert lrs[0] == pytest.approx(1e-3 / 4)  # warmup: 3 steps
    assert max(lrs) == pytest.approx(1e-3) and lrs[-1] == 0.0


def test_unknown_schedule():
    with pytest.raises(RankhouseError, match=r"optim\.schedule: 'step'; expected one of"):
        lr_lambda("step", 10, 0.0)


# --- overlap-add separation ------------------------------------------------------------------------

class Scale(nn.Module):
    """An 'ideal' separator: source i is the mixture times weights[i], for any chunk."""

    def __init__(self, weights):
        super().__init__()
        self.weights = torch.as_tensor(weights, dtype=torch.float32)
        self.calls: list[tuple] = []

    def forward(self, x):  # (B, C, T) -> (B, S, C, T)
        self.calls.append(tuple(x.shape))
        return x[:, None].repeat(1, len(self.weights), 1, 1) * self.weights[None, :, None, None]


@pytest.mark.parametrize("length", [1, 37, 99, 100, 101, 175, 250, 399, 1000, 1234])
@pytest.mark.parametrize("segment", [100, 101])
def test_separate_reconstructs_exactly(length, segment):
    mix = torch.randn(2, length, generator=torch.Generator().manual_seed(length))
    weights = [1.0, 0.5, -2.0]
    model = Scale(weights)
    out = separate(model, mix, segment, overlap=0.25, batch_size=3)
    assert out.shape == (3, 2, length)
    expected = torch.stack([mix * w for w in weights])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert all(shape[-1] == segment for shape in model.calls)  # the model always sees full segments
    assert all(shape[0] <= 3 for shape in model.calls)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.9])
def test_separate_reconstructs_with_any_overlap(overlap):
    mix = torch.randn(1, 777, generator=torch.Generator().manual_seed(0))
    out = separate(Scale([1.0, 3.0]), mix, 64, overlap=overlap)
    # at 90 % overlap ~10 float32 chunks add up per sample: allow their rounding, relative to the value
    torch.testing.assert_close(out, torch.stack([mix, 3 * mix]), atol=1e-6, rtol=1e-6)


def test_separate_cross_fades_a_time_varying_model():
    """A model whose output depends on the chunk (here: its mean) is blended, not overwritten:
    the result stays within the range of the chunk estimates and changes smoothly."""

    class ChunkMean(nn.Module):
        def forward(self, x):
            return x.mean(dim=-1, keepdim=True).expand_as(x)[:, None]

    mix = torch.linspace(0, 1, 1000)[None].repeat(2, 1)
    out = separate(ChunkMean(), mix, 200, overlap=0.5)
    assert out.shape == (1, 2, 1000)
    assert out.min() >= mix.min() and out.max() <= mix.max()
    assert out[0, 0].diff().abs().max() < 0.01  # no jumps at chunk boundaries


# --- nSDR ------------------------------------------------------------------------------------------

def test_nsdr_known_values():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 2, 4000, generator=g)
    perfect = nsdr(ref, ref)
    assert perfect.shape == (3,) and (perfect > 100).all()
    np.testing.assert_allclose(nsdr(ref, torch.zeros_like(ref)), 0.0, atol=1e-9)
    np.testing.assert_allclose(nsdr(ref, 0.5 * ref), 10 * np.log10(1 / 0.25), atol=1e-6)
    assert 10 * np.log10(4) == pytest.approx(6.0206, abs=1e-4)
    # per source: a worse estimate of one source lowers only that source's SDR
    est = ref.clone()
    est[1] = 0.9 * ref[1]
    sdr = nsdr(ref, est)
    assert sdr[1] == pytest.approx(20.0, abs=1e-4) and sdr[0] > 100 and sdr[2] > 100


def test_nsdr_takes_numpy_and_silent_references():
    ref = np.zeros((2, 2, 100), dtype=np.float32)
    ref[0] = 1.0
    est = np.zeros_like(ref)
    out = nsdr(ref, est)
    assert np.isfinite(out).all()  # a silent reference is not NaN (museval would say NaN)
    assert out[0] == pytest.approx(0.0) and out[1] == pytest.approx(0.0)


# --- checkpoints -----------------------------------------------------------------------------------

def make_training(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", 10, 0.2))
    return model, opt, sched


def train_steps(model, opt, sched, n, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(5, 4, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def test_checkpoint_roundtrip_of_optimizer_state(tmp_path):
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 3, seed=1)
    metrics = {"valid/sdr": 1.5, "train/loss": 0.25}
    sampler_state = {"seed": 3, "draws": 12}
    checkpoint.save(tmp_path, opt, sched, epoch=2, step=3, sampler_state=sampler_state, metrics=metrics)
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["optimizer.safetensors", "state.json"]  # nothing pickled

    opt_state, state = checkpoint.load(tmp_path)
    want = opt.state_dict()
    assert set(opt_state["state"]) == set(want["state"])
    for idx, entry in want["state"].items():
        assert set(opt_state["state"][idx]) == set(entry)
        for key, value in entry.items():
            assert torch.equal(opt_state["state"][idx][key], value), (idx, key)
    # JSON has no tuples: compare as JSON sees them
    assert json.loads(json.dumps(opt_state["param_groups"])) == json.loads(json.dumps(want["param_groups"]))
    assert (state["epoch"], state["step"], state["metrics"]) == (2, 3, metrics)
    assert state["rng"]["sampler"] == sampler_state
    assert state["scheduler"]["last_epoch"] == 3


def test_checkpoint_resume_continues_identically(tmp_path):
    """Resuming (optimizer + scheduler + weights) gives the same parameters as never stopping."""
    model, opt, sched = make_training()
    train_steps(model, opt, sched, 3, seed=1)
    checkpoint.save_weights(model, tmp_path)
    checkpoint.save(tmp_path, opt, sched, 1, 3, None, {})
    train_steps(model, opt, sched, 4, seed=2)

    resumed, opt2, sched2 = make_training(seed=99)  # different init: everything must come from disk
    checkpoint.load_weights(resumed, tmp_path)
    opt_state, state = checkpoint.load(tmp_path)
    opt2.load_state_dict(opt_state)
    sched2.load_state_dict(state["scheduler"])
    assert state["scheduler"]["last_epoch"] == 3
    train_steps(resumed, opt2, sched2, 4, seed=2)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".th")]


def test_checkpoint_rng_state_roundtrip(tmp_path):
    model, opt, sched = make_training()
    checkpoint.save(tmp_path, opt, sched, 0, 0, None, {})
    expected = torch.rand(5)
    _, state = checkpoint.load(tmp_path)
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))  # as loop.train does
    assert torch.equal(torch.rand(5), expected)


def test_checkpoint_of_a_peft_model_is_the_adapter(tmp_path):
    from trainables import lora

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3)).requires_grad_(False)
    model, _ = lora.apply(base, lora.LoraSpec(rank=2, targets=["0", "1"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    checkpoint.save_weights(model, tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / checkpoint.MODEL).exists()
    torch.manual_seed(0)
    fresh, _ = lora.apply(nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3)).requires_grad_(False),
                          lora.LoraSpec(rank=2, targets=["0", "1"]))
    checkpoint.load_weights(fresh, tmp_path)
    x = torch.randn(4, 6)
    assert torch.equal(fresh(x), model(x))
