"""Search-space files: load (Hydra compose: ``defaults:``, command-line overrides), validate, sample.

Every error names the file, the key path and what was expected, before Ray starts. The space
is sampled define-by-run through Optuna, so a parameter can depend on another (``when:``).

    search:
      space:
        lora.rank: {type: choice, values: [4, 8, 16]}
        optim.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
        optim.warmup: {type: uniform, low: 0.0, high: 0.3, when: {optim.schedule: [linear, cosine]}}
        lora.layer_ranks."encoder.0.*": {type: choice, values: [0, 4, 8]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from platform import msst
from trainables.errors import RankhouseError

REQUIRED = object()
FREE = "free-form mapping"  # a mapping of user keys (layer_ranks patterns, parents, stems)


class Optional_:
    """A key that may be null, or else a value of these types."""

    def __init__(self, *types: type):
        self.types = types


DEFAULTS: dict[str, Any] = {
    "study": REQUIRED,
    # config: the architecture file of a checkpoint that does not carry its own (MSST's YAML)
    "model": {"family": "htdemucs", "base": "embedded", "config": Optional_(str), "sources": REQUIRED,
              "parents": FREE},
    "data": {
        "root": "embedded",
        "embedded": {"preset": "techhouse", "songs": 24, "seconds": 20.0, "seed": 0, "valid": Optional_(int)},
        "stems": FREE,
        "segment": 3.0,
        "cache_dir": Optional_(str),
        "tolerance_db": 30.0,
    },
    "train": {"epochs": 4, "steps_per_epoch": 25, "batch_size": 4, "seed": 0, "valid_max_seconds": Optional_(float),
              "augment": True, "bf16": True},
    "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "scaling": "standard", "rank_mode": "custom",
             "targets": Optional_(list), "layer_ranks": FREE,
             # layer group (the family's: HT-Demucs encoder, tencoder, transformer, decoder, tdecoder) -> on/off
             "placement": FREE, "gradient_init_scale": 2.0, "gradient_at": 0.5},
    "optim": {"lr": 1.0e-3, "schedule": "cosine", "warmup": 0.0, "weight_decay": 0.0, "grad_clip": 0.5},
    # one {metric, mode} or a list of them (multi-objective: the first is primary, the rest
    # ``also``; see objectives())
    "objective": {"metric": "valid/sdr", "mode": "max", "also": Optional_(list)},
    # a sample with more trainable parameters (adapters + rebuilt heads) never runs (platform/budget.py)
    "budget": {"max_trainable_params": Optional_(int)},
    "search": {
        "algorithm": "optuna",
        "sampler": "tpe",  # tpe (multivariate TPE; multi-objective TPE for several objectives) or random
        # random samples before TPE starts modelling; null: platform.searcher.startup_trials picks
        "startup_trials": Optional_(int),
        "num_samples": 8,
        "max_concurrent": 2,
        "seed": 0,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "space": FREE,
    },
    "resources": {"workers_per_trial": 1, "cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "max_failures": 0,
                  "executor": "auto"},
    "tracking": {"uri": Optional_(str), "experiment": Optional_(str), "output": Optional_(str)},
    "run": {"storage_path": Optional_(str)},
    "registry": {
        "model_name": Optional_(str),
        "merged": False,  # also write the new champion merged into its base (MSST's merge_weights)
        "min_gain": 0.0,  # dB of holdout SDR a candidate must gain over the champion
        # tracks no trial trained or was selected on; root null: the study's own data (its valid
        # split, which the search selected on: biased, so promote warns)
        "holdout": {"root": Optional_(str), "split": "valid", "max_seconds": 10.0,
                    "embedded": {"preset": "techhouse", "songs": 4, "seconds": 12.0, "seed": 1000,
                                 "valid": Optional_(int)}},
    },
}
# what a value must satisfy beyond its type, checked for fixed values and for every value a
# search can sample, so no trial fails on something the file could have said
RULES: dict[tuple[str, ...], tuple[Callable[[Any], bool], str]] = {
    ("optim", "lr"): (lambda v: v > 0, "a learning rate > 0"),
    ("optim", "warmup"): (lambda v: 0 <= v < 1, "a fraction of the steps, 0 <= warmup < 1"),
    ("optim", "weight_decay"): (lambda v: v >= 0, "weight_decay >= 0"),
    ("optim", "grad_clip"): (lambda v: v >= 0, "a gradient norm >= 0 (0: no clipping)"),
    ("optim", "schedule"): (lambda v: v in ("constant", "linear", "cosine"), "one of constant, linear, cosine"),
    ("lora", "rank"): (lambda v: isinstance(v, int) and v >= 1, "an integer rank >= 1"),
    ("lora", "alpha"): (lambda v: v > 0, "alpha > 0"),
    ("lora", "dropout"): (lambda v: 0 <= v < 1, "0 <= dropout < 1"),
    ("lora", "scaling"): (lambda v: v in ("standard", "rslora"), "standard (alpha/r) or rslora (alpha/sqrt(r))"),
    ("lora", "rank_mode"): (lambda v: v in ("custom", "uniform", "heuristic", "gradient"),
                            "custom (rank + layer_ranks), uniform (one rank), heuristic (the family's allocation) "
                            "or gradient (reallocated after a warm-up)"),
    ("lora", "gradient_init_scale"): (lambda v: v >= 1, ">= 1 (starting ranks, x rank)"),
    ("lora", "gradient_at"): (lambda v: 0 < v <= 1, "0 < gradient_at <= 1 (a fraction of the first epoch)"),
    ("lora", "layer_ranks", "*"): (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                                   "an integer rank >= 0 (0: no adapter)"),
    ("lora", "placement", "*"): (lambda v: isinstance(v, bool), "true or false (adapters in this layer group)"),
    ("model", "parents", "*"): (lambda v: isinstance(v, str), "a source name of the base"),
    ("data", "stems", "*"): (lambda v: isinstance(v, str) or (isinstance(v, list) and v and
                                                              all(isinstance(x, str) and x for x in v)),
                             "a stem name or a list of stem names"),
    ("data", "segment"): (lambda v: v > 0, "seconds > 0"),
    ("data", "tolerance_db"): (lambda v: v > 0, "dB > 0"),
    ("registry", "min_gain"): (lambda v: v >= 0, "dB >= 0"),
    ("budget", "max_trainable_params"): (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("train", "valid_max_seconds"): (lambda v: v is None or v > 0, "null or seconds > 0"),
    ("search", "startup_trials"): (lambda v: v is None or v >= 1, "null or an integer >= 1"),
    ("train", "epochs"): (lambda v: v >= 1, "an integer >= 1"),
    ("train", "steps_per_epoch"): (lambda v: v >= 1, "an integer >= 1"),
    ("train", "batch_size"): (lambda v: v >= 1, "an integer >= 1"),
}
FREE_KEYS = (("lora", "layer_ranks"), ("lora", "placement"), ("model", "parents"), ("data", "stems"))
# objectives beyond the epoch metrics: what a trial's adapter costs (constant over its epochs)
COST_METRICS = ("trainable_params", "adapter_bytes")


def _rule(path: tuple[str, ...]):
    return RULES.get(path) or (RULES.get((*path[:2], "*")) if path[:2] in FREE_KEYS and len(path) == 3 else None)


def _check_rule(file: Path, path: tuple[str, ...], value: Any, where: str) -> None:
    rule = _rule(path)
    if rule is None:
        return
    ok, what = rule
    try:
        good = ok(value)
    except TypeError:
        good = False
    if not good:
        raise RankhouseError(f"{file}: {where}: {value!r}; expected {what}")


DISTRIBUTIONS = {"choice": {"values"}, "uniform": {"low", "high"}, "loguniform": {"low", "high"},
                 "int": {"low", "high", "step"}, "logint": {"low", "high"}}
SCHEDULERS = ("asha", "fifo")


@dataclass
class Param:
    path: tuple[str, ...]
    key: str  # as written in the file
    type: str
    spec: dict
    when: dict[str, list]


@dataclass
class Study:
    file: Path
    config: dict  # fixed values: the base of every trial's config
    params: list[Param]

    @property
    def name(self) -> str:
        return self.config["study"]

    def error(self, key: str, what: str) -> RankhouseError:
        return RankhouseError(f"{self.file}: {key}: {what}")


def split_key(key: str) -> tuple[str, ...]:
    """``lora.layer_ranks."encoder.0.*"`` -> ("lora", "layer_ranks", "encoder.0.*")."""
    if not re.fullmatch(r'(?:"[^"]+"|[^."]+)(?:\.(?:"[^"]+"|[^."]+))*', key):
        raise ValueError(key)
    return tuple(a or b for a, b in re.findall(r'"([^"]+)"|([^."]+)', key))


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(v), type(v).__name__)


def _check(file: Path, value: Any, default: Any, path: str) -> Any:
    where = f"{file}: {path}"
    if default is REQUIRED:
        if value is None:
            raise RankhouseError(f"{where}: required; set it in the file or as {path}=...")
        return value
    if default is FREE:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RankhouseError(f"{where}: expected a mapping, got {value!r}")
        return value
    if isinstance(default, dict):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise RankhouseError(f"{where}: expected a mapping, got {value!r}")
        unknown = sorted(set(value) - set(default))
        if unknown:
            key = f"{path}.{unknown[0]}" if path else unknown[0]
            raise RankhouseError(f"{file}: {key}: unknown key; expected one of {', '.join(default)}")
        return {k: _check(file, value.get(k), d, f"{path}.{k}" if path else k) for k, d in default.items()}
    if isinstance(default, Optional_):
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and float in default.types:
            value = float(value)
        if not isinstance(value, default.types) or isinstance(value, bool):
            names = " or ".join(_type_name(t()) for t in default.types)
            raise RankhouseError(f"{where}: expected {names} or null, got {value!r}")
        return value
    if value is None or default is None:  # default None: a user key in a free-form mapping (rules apply)
        return default if value is None else value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise RankhouseError(f"{where}: expected {_type_name(default)}, got {value!r}")
    return value


def _known(path: list[str]) -> bool:
    """Is this a config key (one a file may leave to its default)?"""
    node = DEFAULTS
    for part in path:
        if node is FREE:
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _compose(file: Path, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not file.is_file():
        raise RankhouseError(f"{file}: no such search-space file")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(file.parent.resolve()), version_base=None, job_name="rankhouse"):
            plain = compose(config_name=file.stem)
            # a key the file leaves to its default is still a key: Hydra calls it new, so add it
            # with Hydra's "+" (unknown keys keep failing, with Hydra's message)
            adjusted = []
            for text, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
                key = o.key_or_group
                if (o.type.name == "CHANGE" and OmegaConf.select(plain, key, default=None) is None
                        and _known(key.split("."))):
                    text = "+" + text
                adjusted.append(text)
            cfg = compose(config_name=file.stem, overrides=adjusted)
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # Hydra/OmegaConf/YAML: one line, naming the file
        msg = " ".join(str(exc).split())
        raise RankhouseError(f"{file}: {msg}") from None
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(data, dict):
        raise RankhouseError(f"{file}: expected a mapping at the top level")
    return data


def _param(file: Path, config: dict, key: str, spec: Any, earlier: dict[str, Param]) -> Param:
    where = f"{file}: search.space.{key}"
    try:
        path = split_key(key)
    except ValueError:
        raise RankhouseError(f'{where}: not a key path; write e.g. lora.rank or lora.layer_ranks."encoder.0.*"') from None
    default = DEFAULTS
    for i, part in enumerate(path):
        free = default is FREE
        if not free and (not isinstance(default, dict) or part not in default):
            known = ", ".join(default) if isinstance(default, dict) else "nothing (a value, not a mapping)"
            raise RankhouseError(f"{where}: {'.'.join(path[:i + 1])} is not a config key; expected one of {known}")
        if free:
            if i != len(path) - 1:
                raise RankhouseError(f"{where}: a free-form mapping takes one key level (quote keys with dots)")
            default = None  # a user key inside a free-form mapping: any value
            break
        default = default[part]
    if default is FREE:
        raise RankhouseError(f"{where}: {key} is a free-form mapping; search one of its keys, "
                             f'e.g. {key}."name"')
    if isinstance(default, dict):
        raise RankhouseError(f"{where}: {key} is a section; search its keys instead")
    if not isinstance(spec, dict) or "type" not in spec:
        raise RankhouseError(f"{where}: expected a mapping with a type: one of {', '.join(DISTRIBUTIONS)}")
    kind = spec["type"]
    if kind not in DISTRIBUTIONS:
        raise RankhouseError(f"{where}.type: {kind!r}; expected one of {', '.join(DISTRIBUTIONS)}")
    fields = set(spec) - {"type", "when"}
    unknown = fields - DISTRIBUTIONS[kind]
    if unknown:
        raise RankhouseError(f"{where}.{sorted(unknown)[0]}: unknown for type {kind}; "
                             f"expected {', '.join(sorted(DISTRIBUTIONS[kind]))}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise RankhouseError(f"{where}.values: expected a non-empty list")
        for i, v in enumerate(values):  # each value must be one the key accepts
            _check(file, v, default, f"search.space.{key}.values[{i}]")
            _check_rule(file, path, v, f"search.space.{key}.values[{i}]")
    else:
        for bound in ("low", "high"):
            v = spec.get(bound)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise RankhouseError(f"{where}.{bound}: expected a number, got {v!r}")
            if kind in ("int", "logint") and not isinstance(v, int):
                raise RankhouseError(f"{where}.{bound}: expected an integer for type {kind}, got {v!r}")
        if not spec["low"] < spec["high"]:
            raise RankhouseError(f"{where}: low ({spec['low']}) must be below high ({spec['high']})")
        if kind in ("loguniform", "logint") and spec["low"] <= 0:
            raise RankhouseError(f"{where}.low: {kind} needs low > 0, got {spec['low']}")
        if "step" in spec and (not isinstance(spec["step"], int) or spec["step"] < 1):
            raise RankhouseError(f"{where}.step: expected an integer >= 1")
        integer = (isinstance(default, int) and not isinstance(default, bool)) or path[:2] == ("lora", "layer_ranks")
        numeric = integer or isinstance(default, float) or (isinstance(default, Optional_) and float in default.types)
        if not numeric:
            raise RankhouseError(f"{where}.type: {kind} samples numbers but {key} is not numeric; use choice")
        if integer and kind in ("uniform", "loguniform"):
            raise RankhouseError(f"{where}.type: {key} takes integers; use int, logint or choice")
        for bound in ("low", "high"):
            _check_rule(file, path, spec[bound], f"search.space.{key}.{bound}")
    when = spec.get("when") or {}
    if not isinstance(when, dict):
        raise RankhouseError(f"{where}.when: expected a mapping of earlier choice parameters to lists of values")
    for other, values in when.items():
        if other not in earlier or earlier[other].type != "choice":
            raise RankhouseError(f"{where}.when.{other}: must name a choice parameter listed before {key}")
        values = values if isinstance(values, list) else [values]
        bad = [v for v in values if v not in earlier[other].spec["values"]]
        if bad:
            raise RankhouseError(f"{where}.when.{other}: {bad[0]!r} is not one of its values "
                                 f"{earlier[other].spec['values']}")
        when[other] = values
    return Param(path, key, kind, spec, when)


def load(file: Path | str, overrides: list[str] = ()) -> Study:
    file = Path(file)
    raw = msst.translate(file, _compose(file, overrides))
    if isinstance(raw.get("objective"), list):
        raw["objective"] = _objective_list(file, raw["objective"])
    config = _check(file, raw, DEFAULTS, "")
    study = config["study"]
    if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", study):
        raise RankhouseError(f"{file}: study: {study!r}; expected a name of letters, digits, '-', '_' or '.'")
    sources = config["model"]["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise RankhouseError(f"{file}: model.sources: expected a non-empty list of source names")
    s = config["search"]
    if s["algorithm"] != "optuna":
        raise RankhouseError(f"{file}: search.algorithm: {s['algorithm']!r}; expected optuna")
    if s["sampler"] not in ("tpe", "random"):
        raise RankhouseError(f"{file}: search.sampler: {s['sampler']!r}; expected tpe or random")
    if s["scheduler"]["type"] not in SCHEDULERS:
        raise RankhouseError(f"{file}: search.scheduler.type: {s['scheduler']['type']!r}; expected one of {SCHEDULERS}")
    for key, minimum in (("num_samples", 1), ("max_concurrent", 1)):
        if s[key] < minimum:
            raise RankhouseError(f"{file}: search.{key}: {s[key]}; expected an integer >= {minimum}")
    for key in ("epochs", "steps_per_epoch", "batch_size"):
        if config["train"][key] < 1:
            raise RankhouseError(f"{file}: train.{key}: {config['train'][key]}; expected an integer >= 1")
    r = config["resources"]
    if r["workers_per_trial"] < 1 or r["cpus_per_worker"] <= 0 or r["gpus_per_worker"] < 0:
        raise RankhouseError(f"{file}: resources: need workers_per_trial >= 1, cpus_per_worker > 0, gpus_per_worker >= 0")
    if r["executor"] not in ("auto", "direct", "train"):
        raise RankhouseError(f"{file}: resources.executor: {r['executor']!r}; expected auto, direct or train")
    if r["executor"] == "direct" and r["workers_per_trial"] > 1:
        raise RankhouseError(f"{file}: resources.executor: direct runs one worker per trial; "
                             "use train (or auto) for workers_per_trial > 1")
    for section, keys in config.items():
        if isinstance(keys, dict):
            for k, v in keys.items():
                if (section, k) in FREE_KEYS:
                    for name, value in v.items():
                        _check_rule(file, (section, k, "*"), value, f"{section}.{k}.{name}")
                else:
                    _check_rule(file, (section, k), v, f"{section}.{k}")
    sch = s["scheduler"]
    if sch["type"] == "asha":
        if not 1 <= sch["grace_period"] <= config["train"]["epochs"]:
            raise RankhouseError(f"{file}: search.scheduler.grace_period: {sch['grace_period']}; expected "
                                 f"1 <= grace_period <= train.epochs ({config['train']['epochs']})")
        if sch["reduction_factor"] < 2:
            raise RankhouseError(f"{file}: search.scheduler.reduction_factor: {sch['reduction_factor']}; "
                                 "expected an integer >= 2")
    _check_objectives(file, config)
    params: dict[str, Param] = {}
    for key, spec in config["search"]["space"].items():
        params[key] = _param(file, config, key, spec, params)
    _check_rank_modes(file, config, params)
    return Study(file, config, list(params.values()))


def _objective_list(file: Path, given: list) -> dict:
    """``objective: [{metric, mode}, ...]`` -> the primary's mapping with the rest under ``also``."""
    if not given or not all(isinstance(o, dict) for o in given):
        raise RankhouseError(f"{file}: objective: expected a mapping {{metric, mode}} or a non-empty list of them")
    for i, o in enumerate(given):
        unknown = sorted(set(o) - {"metric", "mode"})
        if unknown:
            raise RankhouseError(f"{file}: objective[{i}].{unknown[0]}: unknown key; expected metric, mode")
    first = given[0]
    return {**first, "also": [{"metric": o.get("metric"), "mode": o.get("mode", "max")} for o in given[1:]] or None}


def objectives(config: dict) -> list[tuple[str, str]]:
    """[(metric, mode), ...]: the primary objective (what ASHA stops on, what ``best`` and
    promotion rank by) first, then any further ones of a multi-objective search."""
    o = config["objective"]
    return [(o["metric"], o["mode"])] + [(a["metric"], a["mode"]) for a in o.get("also") or []]


def _check_objectives(file: Path, config: dict) -> None:
    epoch_metrics = {"train/loss", "valid/loss", "valid/sdr", *(f"valid/sdr/{s}" for s in config["model"]["sources"])}
    also = config["objective"]["also"] or []
    if not all(isinstance(a, dict) and set(a) <= {"metric", "mode"} for a in also):
        raise RankhouseError(f"{file}: objective.also: expected a list of {{metric, mode}} mappings")
    seen = set()
    for i, (metric, mode) in enumerate(objectives(config)):
        where = "objective" if not also else f"objective[{i}]"
        allowed = epoch_metrics if i == 0 else epoch_metrics | set(COST_METRICS)
        if metric not in allowed:
            extra = "; trainable_params and adapter_bytes may be further objectives, not the first" \
                if metric in COST_METRICS else ""
            raise RankhouseError(f"{file}: {where}.metric: {metric!r}; expected one of "
                                 f"{', '.join(sorted(allowed))}{extra}")
        if mode not in ("max", "min"):
            raise RankhouseError(f"{file}: {where}.mode: {mode!r}; expected max or min")
        if metric in seen:
            raise RankhouseError(f"{file}: {where}.metric: {metric} is already an objective")
        seen.add(metric)


def _check_rank_modes(file: Path, config: dict, params: dict[str, Param]) -> None:
    """Per-layer ranks are only sampled where ``lora.rank_mode`` is custom (uniform and heuristic
    set every layer's rank themselves): refuse a space whose trials would fail on it."""
    mode = next((p for p in params.values() if p.path == ("lora", "rank_mode")), None)
    modes = mode.spec["values"] if mode else [config["lora"]["rank_mode"]]
    if config["lora"]["layer_ranks"] and [m for m in modes if m != "custom"]:
        raise RankhouseError(f"{file}: lora.layer_ranks: rank_mode {' / '.join(m for m in modes if m != 'custom')} "
                             "sets every layer's rank itself; remove the fixed layer_ranks or use rank_mode: custom")
    for p in params.values():
        if p.path[:2] != ("lora", "layer_ranks"):
            continue
        modes = p.when.get(mode.key) if mode else None
        if modes is None:
            modes = mode.spec["values"] if mode else [config["lora"]["rank_mode"]]
        if [m for m in modes if m != "custom"]:
            raise RankhouseError(f"{file}: search.space.{p.key}: per-layer ranks need lora.rank_mode custom; "
                                 f"add when: {{lora.rank_mode: [custom]}}" if mode else
                                 f"{file}: search.space.{p.key}: per-layer ranks need lora.rank_mode custom "
                                 f"(it is {config['lora']['rank_mode']})")


def trial_config(study: Study, sampled: dict[str, Any]) -> dict:
    """The full config of one trial: the fixed values with the sampled ones set (keys as in the file)."""
    from trainables.trial import merge

    config = merge(study.config, sampled, {p.key: p.path for p in study.params})
    config.pop("search", None)
    return config


class DefineByRun:
    """Optuna define-by-run sampler for OptunaSearch: a conditional parameter is only suggested
    when its ``when`` holds, so Optuna models each branch separately. A class, not a closure:
    Tune pickles the searcher (with this) into its experiment state for ``--resume``."""

    def __init__(self, params: list[Param]):
        self.params = params

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for p in self.params:
            if any(chosen.get(other) not in values for other, values in p.when.items()):
                continue
            s = p.spec
            if p.type == "choice":
                value = trial.suggest_categorical(p.key, s["values"])
            elif p.type in ("uniform", "loguniform"):
                value = trial.suggest_float(p.key, s["low"], s["high"], log=p.type == "loguniform")
            else:
                value = trial.suggest_int(p.key, s["low"], s["high"], step=s.get("step", 1), log=p.type == "logint")
            chosen[p.key] = value
