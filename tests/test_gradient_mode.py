"""``lora.rank_mode: gradient`` (trainables/realloc.py): ranks reallocated after a warm-up, once or progressively,
on a real HT-Demucs (Linear, Conv1d, Conv2d, ConvTranspose1d/2d and MultiheadAttention
adapters) and through the real training loop, within the parameters of the uniform rank."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch

from test_loop_training import config as loop_config  # noqa: F401 (a fixture)
from trainables import checkpoint, lora, loop, realloc
from trainables.errors import RankhouseError
from trainables.family import get_family

HTDEMUCS = get_family("htdemucs")


def adapter_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)


@pytest.fixture
def warmed(make_tiny):
    """A gradient-mode adapter on the tiny HT-Demucs whose B factors are non-zero (as after a warm-up)."""
    base = make_tiny()
    spec = lora.LoraSpec.from_config({"rank": 2, "alpha": 4.0, "rank_mode": "gradient"})
    model, ranks = HTDEMUCS.apply_lora(copy.deepcopy(base), spec)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return base, model, ranks, spec


def test_the_warm_up_starts_at_init_scale_times_rank_clamped_to_each_layer(make_tiny):
    model = make_tiny()
    ranks = lora.resolve_ranks(model, lora.LoraSpec(rank=3, rank_mode="gradient", gradient_init_scale=1.5),
                               default_targets=HTDEMUCS.default_targets)
    modules = lora.adaptable_modules(model)
    assert ranks == {n: min(5, min(lora.fan(modules[n]))) for n in ranks}  # ceil(3 x 1.5) = 5
    assert {n.split(".")[0] for n in ranks} == {"encoder", "tencoder", "crosstransformer", "decoder", "tdecoder"}
    with pytest.raises(RankhouseError, match="lora.gradient_at: 0.0; expected 0 < gradient_at <= 1"):
        lora.LoraSpec.from_config({"rank_mode": "gradient", "gradient_at": 0})
    with pytest.raises(RankhouseError, match="rank_mode gradient sets every layer's rank itself"):
        lora.LoraSpec.from_config({"rank_mode": "gradient", "layer_ranks": {"encoder.*": 4}})


def test_every_layer_type_is_rebuilt_exactly_at_its_own_rank(warmed, tiny_mix):
    """SVD factors re-stored at the same ranks reproduce the model: the matricisation of each
    layer type (Linear, Conv, ConvTranspose, both projections of MultiheadAttention) is right."""
    _, model, ranks, _ = warmed
    kinds = {type(layer).__name__ for layers in realloc.lora_layers(model).values() for layer in layers}
    assert {"Linear", "LoraConv1d", "LoraConv2d", "LoraConvTranspose", "MultiheadAttention"} <= kinds
    with torch.no_grad():
        before = model(tiny_mix)
        realloc.reshape(model, dict(ranks))
        after = model(tiny_mix)
    assert torch.allclose(after, before, atol=1e-5)


def test_allocation_stays_within_the_uniform_budget_and_follows_importance(warmed):
    _, model, ranks, spec = warmed
    # one module learned far more than the others: it must end with more rank than the budget's 2
    loud = "crosstransformer.layers.0.linear1"
    with torch.no_grad():
        for layer in realloc.lora_layers(model)[loud]:
            layer.lora_B["default"].weight.mul_(50)
    budget = realloc.uniform_budget(model, spec.rank)
    scores = realloc.importances(model)
    assert set(scores) == set(ranks)
    for imps, cost in scores.values():
        assert imps == sorted(imps, reverse=True) and cost > 0
    new = realloc.allocate(scores, budget)
    assert all(1 <= new[n] <= ranks[n] for n in ranks)
    assert new[loud] == ranks[loud] == 4
    realloc.reshape(model, new)
    assert adapter_params(model) <= budget
    uniform, _ = HTDEMUCS.apply_lora(copy.deepcopy(warmed[0]), lora.LoraSpec(rank=2, rank_mode="uniform"))
    assert budget == adapter_params(uniform)


def test_allocate_keeps_the_best_components_per_parameter():
    scores = {"a": ([9.0, 8.0, 1.0], 10), "b": ([5.0, 0.5, 0.4], 1), "c": ([0.1, 0.1, 0.1], 100)}
    # the minimum (1 each) costs 111; 20 more buy a's 2nd (0.8/param) and b's 2nd and 3rd (0.5, 0.4/param)
    assert realloc.allocate(scores, 131) == {"a": 2, "b": 3, "c": 1}
    assert realloc.allocate(scores, 111) == {"a": 1, "b": 1, "c": 1}


def test_the_pruned_adapter_saves_and_reloads_with_its_new_ranks(warmed, tiny_mix, tmp_path):
    base, model, _, spec = warmed
    new = realloc.allocate(realloc.importances(model), realloc.uniform_budget(model, spec.rank))
    realloc.reshape(model, new)
    assert len(set(new.values())) > 1  # a real reallocation, not uniform again
    lora.save(model, tmp_path)
    reloaded = lora.load(copy.deepcopy(base), tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(tiny_mix), model(tiny_mix), atol=1e-6)
    assert {n: layers[0].r["default"] for n, layers in realloc.lora_layers(reloaded).items()} == new


@pytest.fixture
def config(loop_config):
    """test_loop_training's trial in gradient mode, with enough steps for a warm-up half an epoch long."""
    cfg = copy.deepcopy(loop_config)
    cfg["lora"].update(rank_mode="gradient", gradient_at=0.5)
    cfg["optim"].update(lr=3e-3, warmup=0.0)
    cfg["train"]["steps_per_epoch"] = 4
    return cfg


def test_the_schedule_prunes_on_a_cubic_from_the_warm_up_to_the_budget_within_the_first_epoch():
    assert realloc.schedule(0.5, 8, 1, 1000, 400) == {4: 400}
    plan = realloc.schedule(0.5, 8, 4, 1000, 400)
    assert list(plan) == [4, 5, 7, 8]  # evenly spread from gradient_at to the epoch's last step
    assert list(plan.values()) == [400 + int(600 * (1 - k / 4) ** 3) for k in (1, 2, 3, 4)]
    assert plan[8] == 400 and all(a > b for a, b in zip(plan.values(), list(plan.values())[1:]))
    # an epoch too short for every step: those that land together keep the later, smaller budget
    assert realloc.schedule(0.5, 4, 5, 1000, 400) == {2: 400 + int(600 * (1 - 1 / 5) ** 3),
                                                     3: 400 + int(600 * (1 - 3 / 5) ** 3), 4: 400}
    with pytest.raises(RankhouseError, match=r"lora.gradient_steps: 0; expected >= 1 \(reallocations"):
        lora.LoraSpec.from_config({"rank_mode": "gradient", "gradient_steps": 0})


@pytest.mark.parametrize("reallocations", [1, 3])
def test_the_loop_reallocates_in_the_first_epoch_and_resumes_exactly(config, reallocations, tmp_path, one_thread):
    config["lora"]["gradient_steps"] = reallocations
    described, reports, logs = [], [], []
    straight = tmp_path / "straight"

    def report(metrics, folder):
        reports.append(metrics)
        shutil.copytree(folder, straight / f"epoch{metrics['epoch']}")

    def on_setup(setup):
        described.append((dict(setup.ranks), lora.trainable_parameters(setup.model), list(setup.modules_to_save)))

    loop.train(config, report, device=torch.device("cpu"), log=logs.append, on_setup=on_setup)
    assert [r["epoch"] for r in reports] == [1, 2]
    assert len(described) == 1  # described once, with its final ranks
    ranks, trainable, heads = described[0]
    pruned = [line for line in logs if "gradient: ranks reallocated over" in line]
    assert len(pruned) == reallocations
    sums = [int(line.split("rank sum ")[1].split(" -> ")[1].split(",")[0]) for line in pruned]
    assert sums == sorted(sums, reverse=True) and sums[-1] == sum(ranks.values())
    if reallocations > 1:
        assert sums[0] > sums[-1]  # the schedule prunes in steps, not all at once
    setup = loop.base_model(config)
    uniform, _ = HTDEMUCS.apply_lora(copy.deepcopy(setup.model), lora.LoraSpec(rank=2, rank_mode="uniform"),
                                     setup.modules_to_save)
    assert trainable <= lora.trainable_parameters(uniform)  # heads included on both sides
    # only adapters and the rebuilt heads train
    assert heads == setup.modules_to_save and all(1 <= r <= 4 for r in ranks.values())
    state = checkpoint.load(straight / "epoch1")[1]
    assert state["ranks"] == ranks
    saved = lora.load_config(straight / "epoch1" / checkpoint.ADAPTER)
    assert {n: saved.rank_pattern.get(n.replace(".", "\\."), saved.r) for n in ranks} == ranks

    resumed_reports = []

    def report_again(metrics, folder):
        resumed_reports.append(metrics)
        shutil.copytree(folder, tmp_path / "resumed" / f"epoch{metrics['epoch']}")

    loop.train(config, report_again, resume_from=straight / "epoch1", device=torch.device("cpu"), log=lambda *a: None)
    assert [r["epoch"] for r in resumed_reports] == [2]
    assert resumed_reports[0]["train/loss"] == reports[1]["train/loss"]
    from safetensors.torch import load_file

    a = load_file(str(straight / "epoch2" / checkpoint.ADAPTER / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "epoch2" / checkpoint.ADAPTER / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_budget_counter_counts_a_gradient_trial_as_its_uniform_rank(config):
    from platform.budget import ParameterCounter

    counter = ParameterCounter(config)
    assert counter({"lora": {"rank": 2, "rank_mode": "gradient"}}) == counter({"lora": {"rank": 2,
                                                                                "rank_mode": "uniform"}})


def test_pruning_keeps_the_heads_moments_and_skips_a_step_with_nothing_to_prune(config, one_thread):
    config["lora"].update(gradient_steps=3)
    logs = []
    recipe = loop.Recipe(config, torch.device("cpu"), log=logs.append)
    recipe.setup()
    recipe.train_epoch(0)
    heads = [p for n, p in recipe.model.named_parameters() if p.requires_grad and "lora_" not in n]
    assert heads and all(int(recipe.optimizer.state[p]["step"]) == recipe.steps for p in heads)
    factors = [p for n, p in recipe.model.named_parameters() if "lora_" in n]
    last = max(recipe.realloc_plan)
    # rebuilt at the last reallocation: moments from there on only
    assert all(int(recipe.optimizer.state[p].get("step", 0)) == recipe.steps - last for p in factors)

    # the warm-up at the budget's own rank: no step prunes, so nothing is rebuilt
    config["lora"].update(gradient_init_scale=1.0)
    logs.clear()
    recipe = loop.Recipe(config, torch.device("cpu"), log=logs.append)
    recipe.setup()
    before = [p for n, p in recipe.model.named_parameters() if "lora_" in n]
    recipe.train_epoch(0)
    after = [p for n, p in recipe.model.named_parameters() if "lora_" in n]
    assert not [line for line in logs if "ranks reallocated" in line]
    assert len(before) == len(after) and all(a is b for a, b in zip(before, after))
