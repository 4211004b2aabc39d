"""The search's Optuna searcher: TPE starts modelling after a share of the samples, not after
10; the sampler's study is in memory and every finished trial is recorded once in SQLite."""

import optuna
import pytest

from platform import spaces
from platform.searcher import TRIAL_ATTR, BestEpochOptunaSearch, sampler, startup_trials

SEARCH = {"sampler": "tpe", "seed": 0, "startup_trials": None}


@pytest.mark.parametrize("num_samples,expected", [(4, 2), (8, 2), (12, 4), (21, 7), (90, 10)])
def test_default_startup_trials_is_a_third_of_the_samples_within_2_to_10(num_samples, expected):
    assert startup_trials({**SEARCH, "num_samples": num_samples}) == expected


def draws(chosen: optuna.samplers.BaseSampler, n: int) -> list[float]:
    study = optuna.create_study(sampler=chosen)
    study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - 0.3) ** 2, n_trials=n)
    return [t.params["x"] for t in study.trials]


@pytest.mark.parametrize("num_samples,startup", [(12, None), (12, 3)])
def test_tpe_draws_at_random_until_its_startup_trials_then_models(num_samples, startup):
    n = startup_trials({**SEARCH, "num_samples": num_samples, "startup_trials": startup})
    tpe = draws(sampler({**SEARCH, "num_samples": num_samples, "startup_trials": startup}), n + 2)
    random = draws(optuna.samplers.RandomSampler(seed=0), n + 2)
    # TPE's startup samples come from a RandomSampler of the same seed; the first modelled one differs
    assert tpe[:n] == random[:n]
    assert tpe[n] != random[n]


def test_random_sampler_ignores_startup_trials():
    chosen = sampler({**SEARCH, "sampler": "random", "num_samples": 12, "startup_trials": 3})
    assert draws(chosen, 5) == draws(optuna.samplers.RandomSampler(seed=0), 5)



def searcher(url: str) -> BestEpochOptunaSearch:
    params = [spaces.Param(("lora", "rank"), "lora.rank", "choice", {"values": [2, 4, 8, 16]}, {}),
              spaces.Param(("optim", "lr"), "optim.lr", "loguniform", {"low": 1e-4, "high": 1e-2}, {})]
    return BestEpochOptunaSearch(space=spaces.DefineByRun(params), metric="valid/sdr", mode="max",
                                 sampler=optuna.samplers.RandomSampler(seed=0), study_name="rec", record=url)


def recorded(url: str) -> dict[str, optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name="rec", storage=url)
    except KeyError:  # nothing finished yet: no study in the record
        return {}
    return {t.user_attrs[TRIAL_ATTR]: t for t in study.get_trials()}


def finish(s: BestEpochOptunaSearch, trial_id: str, sdr: float) -> None:
    s.on_trial_result(trial_id, {"valid/sdr": sdr, "training_iteration": 1})
    s.on_trial_complete(trial_id, result={"valid/sdr": sdr, "training_iteration": 1})


def test_the_record_holds_each_finished_trial_once_and_no_running_one(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = searcher(url)
    sampled = {t: s.suggest(t) for t in ("t0", "t1")}
    assert recorded(url) == {}  # asked and sampled, not finished: nothing written
    finish(s, "t0", 2.5)
    s.flush()
    got = recorded(url)
    assert list(got) == ["t0"] and got["t0"].state == optuna.trial.TrialState.COMPLETE and got["t0"].value == 2.5
    assert got["t0"].params == sampled["t0"]
    assert got["t0"].intermediate_values == {1: 2.5}

    # --resume: Tune restores the searcher it saved while t1 ran (and before t0's end was saved)
    saved = tmp_path / "searcher.pkl"
    s.save(str(saved))
    finish(s, "t1", 1.0)
    s.flush()  # the killed driver had recorded t1 after its last save
    restored = searcher(url)
    restored.restore(str(saved))
    finish(restored, "t1", 1.5)  # finished again after the restore: recorded once, the first time
    restored.suggest("t2")
    finish(restored, "t2", 3.0)
    restored.flush()
    got = recorded(url)
    assert sorted(got) == ["t0", "t1", "t2"] and got["t1"].value == 1.0 and got["t2"].value == 3.0
    # the restored sampler's own study knows every trial it was told of, t0 from the saved state
    assert [t.value for t in restored._ot_study.get_trials()] == [2.5, 1.5, 3.0]


def test_saving_the_searcher_waits_for_the_record_of_every_finished_trial(tmp_path):
    """The record is written on a thread of its own; Tune's saved state must never call finished
    a trial the record lacks, so ``save`` drains the queue first."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    s = searcher(url)
    ids = [f"t{i}" for i in range(8)]
    for i, trial_id in enumerate(ids):
        s.suggest(trial_id)
        finish(s, trial_id, float(i))
    s.save(str(tmp_path / "searcher.pkl"))
    got = recorded(url)
    assert sorted(got) == ids and [got[t].value for t in ids] == [float(i) for i in range(8)]
    # the saved state holds no thread or connection: it restores into a searcher that records again
    restored = searcher(url)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.suggest("t8")
    finish(restored, "t8", 8.0)
    restored.flush()
    assert sorted(recorded(url)) == ids + ["t8"]


def test_a_record_that_cannot_be_written_fails_the_next_flush(tmp_path):
    import sqlalchemy

    s = searcher(f"sqlite:///{tmp_path / 'missing' / 'optuna.db'}")  # SQLite cannot create the folder
    s.suggest("t0")
    finish(s, "t0", 1.0)  # queued: the driver's event loop is not held up by the write
    with pytest.raises(sqlalchemy.exc.OperationalError, match="unable to open database file"):
        s.flush()
    s.flush()  # reported once


def test_the_searcher_refuses_a_storage_for_its_own_study(tmp_path):
    with pytest.raises(ValueError, match="record="):
        BestEpochOptunaSearch(space=lambda t: None, metric="valid/sdr", mode="max",
                              storage=f"sqlite:///{tmp_path / 'x.db'}")
