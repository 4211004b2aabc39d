"""Search-space files (platform/spaces.py): Hydra composition and overrides, validation with
one-line errors naming the file and the key path, define-by-run sampling through Optuna."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from platform import spaces
from trainables import schema
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
TECHHOUSE = ROOT / "search_spaces" / "techhouse.yaml"
MINIMAL = {"study": "s", "model": {"sources": ["kick", "bass"]}}


def write(folder: Path, name: str, data: dict | str) -> Path:
    path = folder / f"{name}.yaml"
    # sort_keys=False: the order of search.space entries is meaningful (when: names earlier ones)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def with_space(**space) -> dict:
    data = copy.deepcopy(MINIMAL)
    data["search"] = {"space": space}
    return data


# --- the shipped file ------------------------------------------------------------------------------

def test_techhouse_loads():
    study = spaces.load(TECHHOUSE)
    assert study.name == "techhouse" and study.file == TECHHOUSE
    cfg = study.config
    assert cfg["model"]["sources"] == ["kick", "hihat", "bass", "other", "vocals"]
    assert cfg["model"]["parents"] == {"kick": "drums", "hihat": "drums"}
    assert cfg["train"]["steps_per_epoch"] == 20 and cfg["train"]["bf16"] is True  # default filled in
    assert cfg["lora"]["layer_ranks"] == {} and cfg["lora"]["scaling"] == "standard"
    params = {p.path: p for p in study.params}
    assert list(params) == [
        ("lora", "rank"), ("lora", "alpha"), ("lora", "dropout"),
        ("lora", "layer_ranks", "encoder.*"), ("lora", "layer_ranks", "tencoder.*"),
        ("lora", "layer_ranks", "crosstransformer.*"), ("lora", "layer_ranks", "decoder.*"),
        ("lora", "layer_ranks", "tdecoder.*"), ("optim", "lr"), ("optim", "schedule"), ("optim", "warmup"),
    ]
    assert params[("lora", "layer_ranks", "encoder.*")].key == 'lora.layer_ranks."encoder.*"'
    assert params[("lora", "alpha")].type == "loguniform"
    assert params[("optim", "warmup")].when == {"optim.schedule": ["linear", "cosine"]}
    assert all(not p.when for p in study.params if p.path != ("optim", "warmup"))


def test_techhouse_gpu_loads():
    study = spaces.load(ROOT / "search_spaces" / "techhouse_gpu.yaml")
    assert study.params


@pytest.mark.parametrize("name", ["techhouse", "bs_roformer_techhouse", "bs_roformer_vocals", "scnet_techhouse"])
def test_shipped_spaces_take_their_common_part_from_one_shared_file(name):
    """The corpus, training size, schedule and holdout are written once (shared/techhouse.yaml,
    a Hydra ``defaults:`` entry); a space's own keys win over it."""
    shared = yaml.safe_load((ROOT / "search_spaces" / "shared" / "techhouse.yaml").read_text())
    file = ROOT / "search_spaces" / f"{name}.yaml"
    own = yaml.safe_load(file.read_text())
    assert own["defaults"] == ["shared/techhouse@_here_", "_self_"] and "data" not in own and "train" not in own
    config = spaces.load(file).config

    def within(part, whole):  # every key the shared file sets, at the value it sets
        return all(within(v, whole[k]) if isinstance(v, dict) else whole[k] == v for k, v in part.items())

    for section in ("data", "train", "resources", "registry"):
        assert within(shared[section], config[section]), section
    want = own.get("search", {}).get("num_samples", shared["search"]["num_samples"])
    assert config["search"]["num_samples"] == want and config["optim"]["grad_clip"] == own["optim"]["grad_clip"]


@pytest.mark.parametrize("name", ["techhouse", "techhouse_gpu", "bs_roformer_techhouse", "bs_roformer_vocals",
                                  "scnet_techhouse"])
def test_every_rank_a_shipped_space_can_sample_fits_its_embedded_base(name):
    """What preflight checks before a search starts, checked for the shipped spaces: the widest
    adapter any trial could ask for applies to the embedded base (no rank above a layer's width)."""
    from platform.preflight import widest_lora
    from trainables import lora
    from trainables.family import get_family

    study = spaces.load(ROOT / "search_spaces" / f"{name}.yaml")
    family = get_family(study.config["model"]["family"])
    model, heads = family.adapt(family.build_base(study.config["model"]), study.config["model"])
    _, ranks = family.apply_lora(model, lora.LoraSpec.from_config(widest_lora(study)), heads)
    assert ranks and all(r >= 1 for r in ranks.values())


def test_split_key():
    assert spaces.split_key('lora.layer_ranks."encoder.0.*"') == ("lora", "layer_ranks", "encoder.0.*")
    assert spaces.split_key("optim.lr") == ("optim", "lr")
    for bad in ('lora."x', "lora..rank", ".lora", 'lora.layer_ranks."a"b'):
        with pytest.raises(ValueError):
            spaces.split_key(bad)


# --- Hydra: overrides and defaults -----------------------------------------------------------------

def test_overrides():
    study = spaces.load(TECHHOUSE, ["search.num_samples=2", "train.epochs=1", "lora.scaling=rslora"])
    assert study.config["search"]["num_samples"] == 2
    assert study.config["train"]["epochs"] == 1 and study.config["lora"]["scaling"] == "rslora"
    assert spaces.load(TECHHOUSE).config["search"]["num_samples"] == 8  # no state kept between loads


@pytest.mark.parametrize("override, key", [("search.nope=2", "search.nope"), ("+search.nope=2", "search.nope"),
                                           ("+lora.rnk=3", "lora.rnk"), ("lora.rnk=3", "lora.rnk")])
def test_override_of_an_unknown_key(override, key):
    with pytest.raises(RankhouseError) as err:
        spaces.load(TECHHOUSE, [override])
    msg = str(err.value)
    assert msg.startswith(f"{TECHHOUSE}: ") and key in msg and "\n" not in msg


def test_override_of_a_key_the_file_leaves_to_its_default(tmp_path):
    study = spaces.load(TECHHOUSE, ["train.valid_max_seconds=4.0", "resources.executor=direct",
                                    "lora.layer_ranks.tdecoder=2", "+optim.weight_decay=0.01"])
    assert study.config["train"]["valid_max_seconds"] == 4.0
    assert study.config["resources"]["executor"] == "direct"
    assert study.config["lora"]["layer_ranks"] == {"tdecoder": 2}
    assert study.config["optim"]["weight_decay"] == 0.01
    # a key the file sets to null explicitly is overridable too
    path = write(tmp_path, "nulls", {**MINIMAL, "tracking": {"uri": None}})
    assert spaces.load(path, ["tracking.uri=sqlite:///x.db"]).config["tracking"]["uri"] == "sqlite:///x.db"


@pytest.mark.parametrize("overrides, message", [
    (["resources.executor=ray"], "resources.executor: 'ray'; expected auto, direct or train"),
    (["resources.executor=direct", "resources.workers_per_trial=2"], "resources.executor: direct runs one worker"),
])
def test_executor_errors(overrides, message):
    with pytest.raises(RankhouseError, match=re.escape(f"{TECHHOUSE}: {message}")):
        spaces.load(TECHHOUSE, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["registry.holdout.embedded.seed=0"], "registry.holdout.embedded.seed: 0 renders the training songs"),
    (["registry.holdout.embedded.seed=0", "registry.holdout.embedded.songs=2", "registry.holdout.embedded.seconds=5"],
     "registry.holdout.embedded.seed: 0 renders the training songs"),
    (["data.root=DATA", "registry.holdout.root=DATA/"], "registry.holdout.root: DATA/ is data.root"),
])
def test_a_holdout_that_is_the_training_data_is_refused(overrides, message, tmp_path):
    overrides = [o.replace("DATA", str(tmp_path)) for o in overrides]
    with pytest.raises(RankhouseError, match=re.escape(f"{TECHHOUSE}: {message.replace('DATA', str(tmp_path))}")):
        spaces.load(TECHHOUSE, overrides)


@pytest.mark.parametrize("overrides", [
    [],  # the shipped holdout: the same preset, another seed
    ["registry.holdout.embedded.seed=0", "registry.holdout.embedded.preset=generic"],  # other music
    ["registry.holdout.root=null"],  # the valid split, documented as biased
    ["data.root=DATA/a", "registry.holdout.root=DATA/b"],
])
def test_a_holdout_apart_from_the_training_data_is_accepted(overrides, tmp_path):
    overrides = [o.replace("DATA", str(tmp_path)) for o in overrides]
    assert spaces.load(TECHHOUSE, overrides).config["registry"]["holdout"]["root"] in (None, "embedded",
                                                                                       f"{tmp_path}/b")


def test_override_with_a_wrong_type():
    with pytest.raises(RankhouseError, match=r"techhouse\.yaml: train\.epochs: expected an integer, got 'x'"):
        spaces.load(TECHHOUSE, ["train.epochs=x"])


def test_missing_file(tmp_path):
    with pytest.raises(RankhouseError, match="nothing.yaml: no such search-space file"):
        spaces.load(tmp_path / "nothing.yaml")


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = write(tmp_path, "broken", "study: s\nmodel: {sources: [a, b\n")
    with pytest.raises(RankhouseError) as err:
        spaces.load(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_a_value_the_file_leaves_to_the_user_is_required_then_taken(tmp_path):
    path = write(tmp_path, "mine", "study: s\nmodel: {sources: [kick, bass]}\ndata:\n  root: ???\n")
    with pytest.raises(RankhouseError) as err:
        spaces.load(path)
    assert str(err.value) == f"{path}: data.root: required; give it on the command line, e.g. data.root=VALUE"
    assert spaces.load(path, [f"data.root={tmp_path}"]).config["data"]["root"] == str(tmp_path)


def test_defaults_composition(tmp_path):
    shutil.copy(TECHHOUSE, tmp_path / "techhouse.yaml")
    shutil.copytree(TECHHOUSE.parent / "shared", tmp_path / "shared")
    path = write(tmp_path, "mine", {
        "defaults": ["techhouse", "_self_"],
        "study": "mine",
        "train": {"epochs": 2},
        "lora": {"scaling": "rslora"},
        "search": {"num_samples": 3, "space": {"lora.rank": {"type": "choice", "values": [2, 4]},
                                               "optim.weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}}},
    })
    study = spaces.load(path)
    assert study.name == "mine" and study.file == path
    assert study.config["train"]["epochs"] == 2
    assert study.config["train"]["steps_per_epoch"] == 20  # from techhouse
    assert study.config["lora"]["scaling"] == "rslora" and study.config["lora"]["rank"] == 8
    assert study.config["search"]["num_samples"] == 3
    params = {p.key: p for p in study.params}
    assert params["lora.rank"].spec["values"] == [2, 4]
    assert "optim.warmup" in params and "optim.weight_decay" in params
    # overrides apply on top of the composition
    assert spaces.load(path, ["train.epochs=5"]).config["train"]["epochs"] == 5


# --- validation: every error names the file and the key path ---------------------------------------

def _space_when(*items):
    return with_space(**dict(items))


SCHEDULE = ("optim.schedule", {"type": "choice", "values": ["linear", "constant"]})
WARMUP = ("optim.warmup", {"type": "uniform", "low": 0.0, "high": 0.3, "when": {"optim.schedule": ["linear"]}})

ERRORS = {
    "null-able key of the wrong type": ({**MINIMAL, "train": {"valid_max_seconds": "abc"}}, "train.valid_max_seconds",
                                        "expected a number or null"),
    "lr <= 0": ({**MINIMAL, "optim": {"lr": 0.0}}, "optim.lr", "expected a learning rate > 0"),
    "unknown schedule": ({**MINIMAL, "optim": {"schedule": "step"}}, "optim.schedule", "one of constant, linear"),
    "warmup >= 1": ({**MINIMAL, "optim": {"warmup": 1.5}}, "optim.warmup", "0 <= warmup < 1"),
    "layer rank not an integer": ({**MINIMAL, "lora": {"layer_ranks": {"encoder.*": "high"}}},
                                  "lora.layer_ranks.encoder.*", "an integer rank >= 0"),
    "stems not names": ({**MINIMAL, "data": {"stems": {"kick": 5}}}, "data.stems.kick", "a stem name"),
    "grace period > epochs": ({**MINIMAL, "train": {"epochs": 2}, "search": {"scheduler": {"grace_period": 3}}},
                              "search.scheduler.grace_period", "1 <= grace_period <= train.epochs (2)"),
    "reduction factor < 2": ({**MINIMAL, "search": {"scheduler": {"reduction_factor": 1}}},
                             "search.scheduler.reduction_factor", "expected an integer >= 2"),
    "unknown objective metric": ({**MINIMAL, "objective": {"metric": "valid/sdr/kik"}}, "objective.metric",
                                 "'valid/sdr/kik'; expected one of"),
    "sampled value breaks a rule": (with_space(**{"optim.schedule": {"type": "choice", "values": ["cosine", "step"]}}),
                                    "search.space.optim.schedule.values[1]", "one of constant, linear"),
    "bound breaks a rule": (with_space(**{"optim.lr": {"type": "uniform", "low": -0.1, "high": 0.1}}),
                            "search.space.optim.lr.low", "a learning rate > 0"),
    "numeric distribution on a string key": (with_space(**{"optim.schedule": {"type": "uniform", "low": 0.0, "high": 1.0}}),
                                             "search.space.optim.schedule.type", "is not numeric; use choice"),
    "float distribution on an integer key": (with_space(**{"lora.rank": {"type": "uniform", "low": 2.0, "high": 8.0}}),
                                             "search.space.lora.rank.type", "takes integers"),
    "unknown nested key": ({**MINIMAL, "lora": {"rnk": 4}}, "lora.rnk", "unknown key; expected one of rank, alpha"),
    "wrong type": ({**MINIMAL, "train": {"epochs": "four"}}, "train.epochs", "expected an integer, got 'four'"),
    "float for int": ({**MINIMAL, "train": {"epochs": 4.5}}, "train.epochs", "expected an integer"),
    "bool": ({**MINIMAL, "train": {"augment": "yes"}}, "train.augment", "expected a boolean"),
    "section as scalar": ({**MINIMAL, "lora": 3}, "lora", "expected a mapping, got 3"),
    "missing study": ({"model": {"sources": ["a"]}}, "study", "required"),
    "bad study name": ({**MINIMAL, "study": "a b"}, "study", "expected a name"),
    "missing sources": ({"study": "s", "model": {"family": "htdemucs"}}, "model.sources", "required"),
    "sources not a list": ({"study": "s", "model": {"sources": "kick"}}, "model.sources", "expected a non-empty list"),
    "epochs < 1": ({**MINIMAL, "train": {"epochs": 0}}, "train.epochs", "expected an integer >= 1"),
    "bad objective mode": ({**MINIMAL, "objective": {"mode": "maximize"}}, "objective.mode", "expected max or min"),
    "unknown scheduler": ({**MINIMAL, "search": {"scheduler": {"type": "bohb"}}}, "search.scheduler.type",
                          "'bohb'; expected one of"),
    "hyperband with queued workers": ({**MINIMAL, "resources": {"workers_per_trial": 2},
                                       "search": {"scheduler": {"type": "hyperband"}}},
                                      "search.scheduler.type", "use asha or optuna"),
    "optuna's grace period > epochs": ({**MINIMAL, "train": {"epochs": 2},
                                        "search": {"scheduler": {"type": "optuna", "grace_period": 3}}},
                                       "search.scheduler.grace_period", "1 <= grace_period <= train.epochs (2)"),
    "negative bootstrap count": ({**MINIMAL, "search": {"scheduler": {"type": "optuna", "bootstrap_count": -1}}},
                                 "search.scheduler.bootstrap_count", "expected an integer >= 0"),
    "unknown algorithm": ({**MINIMAL, "search": {"algorithm": "hyperopt"}}, "search.algorithm", "expected optuna"),
    "unknown sampler": ({**MINIMAL, "search": {"sampler": "cmaes"}}, "search.sampler", "'cmaes'; expected tpe or random"),
    "no startup trials": ({**MINIMAL, "search": {"startup_trials": 0}}, "search.startup_trials",
                          "0; expected null or an integer >= 1"),
    "bad distribution": (with_space(**{"lora.rank": {"type": "normal", "low": 1, "high": 2}}),
                         "search.space.lora.rank.type", "'normal'; expected one of choice, uniform"),
    "no type": (with_space(**{"lora.rank": [4, 8]}), "search.space.lora.rank", "expected a mapping with a type"),
    "choice without values": (with_space(**{"lora.rank": {"type": "choice"}}), "search.space.lora.rank.values",
                              "expected a non-empty list"),
    "choice with empty values": (with_space(**{"lora.rank": {"type": "choice", "values": []}}),
                                 "search.space.lora.rank.values", "expected a non-empty list"),
    "field of another type": (with_space(**{"lora.rank": {"type": "choice", "values": [4], "low": 1}}),
                              "search.space.lora.rank.low", "unknown for type choice"),
    "low == high": (with_space(**{"optim.lr": {"type": "uniform", "low": 0.1, "high": 0.1}}), "search.space.optim.lr",
                    "low (0.1) must be below high (0.1)"),
    "low > high": (with_space(**{"lora.rank": {"type": "int", "low": 8, "high": 2}}), "search.space.lora.rank",
                   "must be below high"),
    "bound not a number": (with_space(**{"optim.lr": {"type": "uniform", "low": "a", "high": 0.1}}),
                           "search.space.optim.lr.low", "expected a number"),
    "loguniform low 0": (with_space(**{"optim.lr": {"type": "loguniform", "low": 0.0, "high": 0.1}}),
                         "search.space.optim.lr.low", "loguniform needs low > 0"),
    "loguniform low < 0": (with_space(**{"optim.lr": {"type": "loguniform", "low": -1.0, "high": 0.1}}),
                           "search.space.optim.lr.low", "loguniform needs low > 0"),
    "int with float bounds": (with_space(**{"lora.rank": {"type": "int", "low": 1.5, "high": 8}}),
                              "search.space.lora.rank.low", "expected an integer for type int"),
    "int with bad step": (with_space(**{"lora.rank": {"type": "int", "low": 2, "high": 8, "step": 0}}),
                          "search.space.lora.rank.step", "expected an integer >= 1"),
    "not a config key": (with_space(**{"lora.rnk": {"type": "choice", "values": [1]}}), "search.space.lora.rnk",
                         "lora.rnk is not a config key; expected one of rank, alpha"),
    "below a value": (with_space(**{"lora.rank.x": {"type": "choice", "values": [1]}}), "search.space.lora.rank.x",
                      "is not a config key"),
    "a section": (with_space(**{"lora": {"type": "choice", "values": [1]}}), "search.space.lora",
                  "lora is a section; search its keys instead"),
    "a nested section": (with_space(**{"search.scheduler": {"type": "choice", "values": [1]}}),
                         "search.space.search.scheduler", "is a section"),
    "not a key path": (with_space(**{'lora.layer_ranks."encoder.*': {"type": "choice", "values": [1]}}),
                       'search.space.lora.layer_ranks."encoder.*', "not a key path"),
    "unquoted dots in a free key": (with_space(**{"lora.layer_ranks.encoder.0": {"type": "choice", "values": [1]}}),
                                    "search.space.lora.layer_ranks.encoder.0", "quote keys with dots"),
    "when names a later parameter": (_space_when(WARMUP, SCHEDULE), "search.space.optim.warmup.when.optim.schedule",
                                     "must name a choice parameter listed before optim.warmup"),
    "when names an unknown parameter": (_space_when(("optim.warmup", {**WARMUP[1], "when": {"optim.schedul": ["linear"]}})),
                                        "search.space.optim.warmup.when.optim.schedul", "must name a choice parameter"),
    "when names a non-choice": (_space_when(("optim.lr", {"type": "uniform", "low": 0.1, "high": 0.2}),
                                            ("optim.warmup", {**WARMUP[1], "when": {"optim.lr": [0.1]}})),
                                "search.space.optim.warmup.when.optim.lr", "must name a choice parameter"),
    "when value not a choice": (_space_when(SCHEDULE, ("optim.warmup", {**WARMUP[1], "when": {"optim.schedule": ["cosine"]}})),
                                "search.space.optim.warmup.when.optim.schedule",
                                "'cosine' is not one of its values ['linear', 'constant']"),
    "when not a mapping": (_space_when(SCHEDULE, ("optim.warmup", {**WARMUP[1], "when": ["optim.schedule"]})),
                           "search.space.optim.warmup.when", "expected a mapping"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_the_file_and_the_key_path(case, tmp_path):
    data, key, what = ERRORS[case]
    path = write(tmp_path, "space", data)
    with pytest.raises(RankhouseError) as err:
        spaces.load(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}: "), msg
    assert what in msg, msg
    assert "\n" not in msg


def test_unknown_top_level_key_names_the_key(tmp_path):
    path = write(tmp_path, "space", {**MINIMAL, "trian": {"epochs": 2}})
    with pytest.raises(RankhouseError) as err:
        spaces.load(path)
    assert str(err.value).startswith(f"{path}: trian: unknown key; expected one of study, model"), str(err.value)


def test_unknown_top_level_key_is_an_error(tmp_path):
    path = write(tmp_path, "space", {**MINIMAL, "trian": {"epochs": 2}})
    with pytest.raises(RankhouseError, match=r"space\.yaml: .*trian: unknown key"):
        spaces.load(path)


@pytest.mark.parametrize("key", ["lora.layer_ranks", "model.parents"])
def test_space_key_addressing_a_free_form_section(key, tmp_path):
    path = write(tmp_path, "space", with_space(**{key: {"type": "choice", "values": [0, 4]}}))
    with pytest.raises(RankhouseError, match=rf"search\.space\.{key}: "):
        spaces.load(path)


def test_choice_values_must_fit_the_key(tmp_path):
    path = write(tmp_path, "space", with_space(**{"lora.rank": {"type": "choice", "values": [4, "eight"]}}))
    with pytest.raises(RankhouseError, match=r"search\.space\.lora\.rank"):
        spaces.load(path)


def test_valid_space_forms(tmp_path):
    path = write(tmp_path, "space", with_space(**{
        'lora.layer_ranks."encoder.0.*"': {"type": "choice", "values": [0, 4]},
        "lora.layer_ranks.tdecoder": {"type": "int", "low": 1, "high": 8, "step": 1},
        'model.parents."kick"': {"type": "choice", "values": ["drums", "other"]},
        "lora.rank": {"type": "logint", "low": 2, "high": 16},
        "optim.schedule": {"type": "choice", "values": ["constant", "cosine"]},
        "optim.warmup": {"type": "uniform", "low": 0.0, "high": 0.2, "when": {"optim.schedule": "cosine"}},
    }))
    params = {p.key: p for p in spaces.load(path).params}
    assert params['lora.layer_ranks."encoder.0.*"'].path == ("lora", "layer_ranks", "encoder.0.*")
    assert params["lora.layer_ranks.tdecoder"].path == ("lora", "layer_ranks", "tdecoder")
    assert params['model.parents."kick"'].path == ("model", "parents", "kick")
    assert params["optim.warmup"].when == {"optim.schedule": ["cosine"]}  # a scalar becomes a list


# --- define-by-run sampling ------------------------------------------------------------------------

def test_define_by_run_with_a_real_study():
    study_spec = spaces.load(TECHHOUSE)
    sample = spaces.DefineByRun(study_spec.params)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=5))
    seen = set()
    for i in range(24):
        trial = study.ask()
        assert sample(trial) is None
        params = dict(trial.params)
        schedule = params["optim.schedule"]
        seen.add(schedule)
        assert ("optim.warmup" in params) == (schedule in ("linear", "cosine")), params
        if "optim.warmup" in params:
            assert 0.0 <= params["optim.warmup"] <= 0.3
        assert params["lora.rank"] in (4, 8, 16) and 3e-4 <= params["optim.lr"] <= 5e-3
        assert params['lora.layer_ranks."encoder.*"'] in (0, 4, 8, 16)
        study.tell(trial, float(i % 5))
    assert seen == {"constant", "linear", "cosine"}


@pytest.mark.parametrize("schedule, has_warmup", [("constant", False), ("linear", True), ("cosine", True)])
def test_define_by_run_condition(schedule, has_warmup):
    """With the schedule fixed: the conditional parameter is asked for exactly when its condition holds
    (FixedTrial raises if a parameter it was not given is suggested)."""
    study_spec = spaces.load(TECHHOUSE)
    fixed = {p.key: (p.spec["values"][0] if p.type == "choice" else p.spec["low"]) for p in study_spec.params}
    fixed["optim.schedule"] = schedule
    if not has_warmup:
        fixed.pop("optim.warmup")
    trial = optuna.trial.FixedTrial(fixed)
    spaces.DefineByRun(study_spec.params)(trial)
    assert ("optim.warmup" in trial.params) is has_warmup
    assert set(trial.params) == set(fixed)


def test_define_by_run_int_and_log_distributions(tmp_path):
    path = write(tmp_path, "space", with_space(**{
        "lora.rank": {"type": "logint", "low": 2, "high": 16},
        "train.batch_size": {"type": "int", "low": 2, "high": 8, "step": 2},
        "optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
    }))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    spaces.DefineByRun(spaces.load(path).params)(trial)
    dists = trial.distributions
    assert dists["lora.rank"] == optuna.distributions.IntDistribution(2, 16, log=True)
    assert dists["train.batch_size"] == optuna.distributions.IntDistribution(2, 8, step=2)
    assert dists["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert trial.params["train.batch_size"] in (2, 4, 6, 8)


# --- trial config ----------------------------------------------------------------------------------

def test_a_sample_reaches_the_trial_nested_where_its_key_belongs():
    study = spaces.load(TECHHOUSE)
    before = copy.deepcopy(study.config)
    sampled = {'lora.layer_ranks."encoder.*"': 4, 'lora.layer_ranks."tdecoder.*"': 0, "lora.rank": 16,
               "optim.lr": 1e-3, "optim.schedule": "linear", "optim.warmup": 0.1}
    nested = spaces.SampleToConfig(study.params)(sampled)
    assert nested["lora"]["layer_ranks"] == {"encoder.*": 4, "tdecoder.*": 0}  # what Tune shows
    assert spaces.sampled_values(study.params, nested) == sampled  # named as Optuna and MLflow name them
    cfg = schema.overlay({k: v for k, v in study.config.items() if k != "search"}, nested)
    assert cfg["lora"]["layer_ranks"] == {"encoder.*": 4, "tdecoder.*": 0}
    assert cfg["lora"]["rank"] == 16 and cfg["lora"]["alpha"] == 16.0
    assert cfg["optim"] == {**before["optim"], "lr": 1e-3, "schedule": "linear", "warmup": 0.1}
    assert "search" not in cfg
    assert cfg["model"] == before["model"] and cfg["train"] == before["train"]
    assert study.config == before  # the study's fixed config is not mutated

