"""The search's Optuna sampler: TPE starts modelling after a share of the samples, not after 10."""

import optuna
import pytest

from platform.searcher import sampler, startup_trials

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

