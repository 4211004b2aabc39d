"""``budget.max_trainable_params`` (platform/budget.py): an over-budget sample is rejected in the
driver before any trial exists, told to Optuna as PRUNED with its reason, and resampled; the
count is exactly what the trial would train (adapters + rebuilt heads). The slow test runs a
real search (Ray, Optuna, MLflow) around the synthetic training function and checks that no
rejected sample ever became a trial."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import optuna
import pytest

from platform import spaces
from platform.budget import MAX_CONSECUTIVE_REJECTIONS, BudgetedOptunaSearch, ParameterCounter, rejected
from trainables import htdemucs, lora, loop
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["kick", "hihat", "bass", "other", "vocals"]


@pytest.fixture
def config(make_tiny, tiny_kwargs, tmp_path) -> dict:
    path = tmp_path / "tiny.safetensors"
    htdemucs.save_checkpoint(make_tiny(), path, tiny_kwargs)
    return {"model": {"family": "htdemucs", "base": str(path), "sources": FIVE,
                      "parents": {"kick": "drums", "hihat": "drums"}},
            "data": {}, "lora": {"rank": 8, "alpha": 16.0}}


def count(config: dict, rank: int) -> int:
    setup = loop.base_model(config)
    model, _ = lora.apply(copy.deepcopy(setup.model), lora.LoraSpec(rank=rank), setup.modules_to_save,
                          setup.family.default_targets)
    return lora.trainable_parameters(model)


def searcher(config: dict, budget: int, storage: str, values=(2, 8), sampler=None) -> BudgetedOptunaSearch:
    params = [spaces.Param(("lora", "rank"), "lora.rank", "choice", {"values": list(values)}, {})]
    return BudgetedOptunaSearch(space=spaces.DefineByRun(params), configs=spaces.SampleToConfig(params),
                                metric="valid/sdr", mode="max",
                                sampler=sampler or optuna.samplers.RandomSampler(seed=0), study_name="budget",
                                record=storage, budget=budget, counter=ParameterCounter(config))


def test_the_count_is_the_trials_own_including_the_new_heads(config):
    counter = ParameterCounter(config)
    setup = loop.base_model(config)
    heads = sum(p.numel() for h in setup.modules_to_save for p in dict(setup.model.named_modules())[h].parameters())
    assert heads > 0 and counter({"lora": {"rank": 4}}) == count(config, 4) > heads
    assert counter({"lora": {"rank": 8}}) > counter({"lora": {"rank": 4}})


def test_over_budget_samples_are_pruned_in_optuna_and_never_returned(config, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    budget = (count(config, 2) + count(config, 8)) // 2
    s = searcher(config, budget, storage)
    for i in range(4):
        sample = s.suggest(f"t{i}")
        assert sample == {"lora": {"rank": 2}}  # every configuration Tune receives fits, nested where it belongs
        s.on_trial_complete(f"t{i}", result={"valid/sdr": 1.0, "training_iteration": 1})
    s.flush()  # the record is written on a thread of its own
    trials = optuna.load_study(study_name="budget", storage=storage).get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t.params == {"lora.rank": 8} for t in pruned)
    assert len([t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]) == 4
    rows = rejected(storage, "budget")
    assert [r["optuna_trial"] for r in rows] == [t.number for t in pruned]
    assert all(r["trainable_params"] == count(config, 8) and
               r["reason"] == f"{count(config, 8)} trainable parameters > budget.max_trainable_params = {budget}"
               for r in rows)


def test_with_tpe_rejections_are_ignored_and_every_trial_fits(config, tmp_path):
    """With TPE (what searches use), half the space over budget and the objective rising with
    the rank (so TPE leans towards the budget's edge): every configuration it hands Tune fits,
    the search keeps going, and the rejected samples are PRUNED trials TPE ranks worst."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    budget = (count(config, 4) + count(config, 5)) // 2  # ranks 1-4 of 1-8 fit
    s = searcher(config, budget, storage, values=tuple(range(1, 9)),
                 sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, n_startup_trials=3))
    for i in range(8):
        rank = s.suggest(f"t{i}")["lora"]["rank"]
        assert rank <= 4
        s.on_trial_complete(f"t{i}", result={"valid/sdr": float(rank), "training_iteration": 1})
    s.flush()
    trials = optuna.load_study(study_name="budget", storage=storage).get_trials()
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert all(t.params["lora.rank"] > 4 for t in trials if t.state == optuna.trial.TrialState.PRUNED)


def test_the_searcher_saves_and_restores_for_resume(config, tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    budget = (count(config, 2) + count(config, 8)) // 2
    s = searcher(config, budget, storage)
    s.suggest("t0")
    s.save(str(tmp_path / "searcher.pkl"))
    restored = searcher(config, budget, storage)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("t0", result={"valid/sdr": 1.0, "training_iteration": 1})  # the saved trial
    assert restored.suggest("t1") == {"lora": {"rank": 2}} and restored.budget == budget


def test_the_count_matches_lora_arithmetic_on_a_roformer(tmp_path):
    """Independently of PEFT: a Linear layer's adapter has r * (fan_in + fan_out) parameters, and
    a new source's mask estimator trains whole."""
    from test_bs_roformer import SOURCES, SR, TINY, tiny

    from trainables import bs_roformer

    path = tmp_path / "roformer.safetensors"
    model = tiny()
    bs_roformer.save_checkpoint(model, path, "bs_roformer", TINY["bs_roformer"], SOURCES, SR, 1.0)
    cfg = {"model": {"family": "bs_roformer", "base": str(path), "sources": ["kick", *SOURCES[1:]],
                     "parents": {"kick": "drums"}}, "data": {}, "lora": {"rank": 4, "alpha": 8.0}}
    counter = ParameterCounter(cfg)
    ranks = lora.resolve_ranks(model, lora.LoraSpec(rank=4), default_targets=bs_roformer.BSRoformerFamily.default_targets)
    modules = dict(model.named_modules())
    expected = sum(r * sum(lora.fan(modules[n])) for n, r in ranks.items()) + \
        sum(p.numel() for p in model.mask_estimators[0].parameters())
    assert counter({"lora": {"rank": 4}}) == expected


def test_a_budget_nothing_fits_stops_with_the_smallest_count(config, tmp_path):
    s = searcher(config, 10, f"sqlite:///{tmp_path / 'optuna.db'}")
    with pytest.raises(RankhouseError, match=rf"{MAX_CONSECUTIVE_REJECTIONS} samples in a row were rejected "
                                             rf"\(budget 10, the smallest had {count(config, 2)}; the last: "):
        s.suggest("t0")


def test_the_counter_pickles_without_its_model(config):
    import pickle

    counter = ParameterCounter(config)
    counter({"lora": {"rank": 2}})
    assert counter._setup is not None
    clone = pickle.loads(pickle.dumps(counter))
    assert clone._setup is None and clone({"lora": {"rank": 2}}) == counter({"lora": {"rank": 2}})


def test_budget_key_is_checked(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text("study: s\nmodel: {sources: [kick]}\nbudget: {max_trainable_params: 0}\n")
    with pytest.raises(RankhouseError, match="budget.max_trainable_params: 0; expected null or an integer >= 1"):
        spaces.load(path)


@pytest.mark.slow
def test_a_search_never_starts_a_trial_for_a_rejected_sample(tmp_path):
    import ray
    import ray.cloudpickle

    import benchmarks.scheduling as scheduling
    from platform import study_runs, tune
    from trainables import tracking

    ray.cloudpickle.register_pickle_by_value(scheduling)
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", [
        "search.num_samples=4", "search.max_concurrent=1", "search.scheduler.type=fifo", "train.epochs=1",
        "resources.cpus_per_worker=1.0", f"data.root={tmp_path}", f"tracking.output={tmp_path / 'out'}"])
    prepared = scheduling.synthetic_prepared(study, epoch_ms=10.0)
    count_of, nest = ParameterCounter(prepared.config), spaces.SampleToConfig(study.params)
    fixed = {p.key: min(p.spec["values"]) for p in study.params if p.type == "choice" and p.key.startswith("lora.")}
    widest = {p.key: max(p.spec["values"]) for p in study.params if p.type == "choice" and p.key.startswith("lora.")}
    small, large = count_of(nest(fixed)), count_of(nest(widest))
    budget = small + (large - small) // 4  # the lower quarter of the range fits
    study.config["budget"]["max_trainable_params"] = budget
    out = study_runs.output_dir(study)
    out.mkdir(parents=True)
    uri = study_runs.tracking_uri(study, out)
    saved = dict(os.environ)
    try:
        _, exp_id, parent_id = study_runs.start_parent(uri, study, prepared, out)
        results = tune.run_search(study, prepared, out, uri, exp_id, parent_id, train=scheduling.synthetic_train)
        rows = rejected(study_runs.optuna_storage_url(study, out), study_runs.optuna_study_name(study, parent_id))
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
    assert len(results) == 4 and not results.errors
    assert rows, "three quarters of the range are over budget: some sample must have been rejected"
    client = tracking.client(uri)
    runs = list(tracking.children(client, exp_id, parent_id))
    assert len(runs) == 4  # a child run per trial that ran, none for a rejected sample
    ran = [spaces.sampled_values(study.params, r.config) for r in results]
    for row in rows:
        assert row["trainable_params"] > budget and row["params"] not in ran
    for r in results:
        assert count_of(r.config) <= budget
