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
from typing import Any

from platform import msst
from trainables import schema
from trainables.errors import RankhouseError
from trainables.family import get_family
from trainables.task import Task
from trainables.trial import executor

# objectives beyond the epoch metrics: what a trial's adapter costs (constant over its epochs)
COST_METRICS = ("trainable_params", "adapter_bytes")
DEFAULT_FAMILY = schema.SCHEMA["model"]["family"].default


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
    task: Task  # the task of the study's model family: its metrics, data and holdout scores

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


def study_schema(file: Path, raw: dict) -> tuple[schema.Schema, Task]:
    """The schema of a study: the generic sections with its family's and its task's own keys."""
    model = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    try:
        family = get_family(str(model.get("family") or DEFAULT_FAMILY))
    except RankhouseError as exc:
        raise RankhouseError(f"{file}: {exc}") from None
    return schema.for_family(family), family.task


def _compose(file: Path, overrides: list[str]) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    if not file.is_file():
        raise RankhouseError(f"{file}: no such search-space file")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(file.parent.resolve()), version_base=None, job_name="rankhouse"):
            plain = compose(config_name=file.stem)
            known, _ = study_schema(file, OmegaConf.to_container(plain, resolve=False))
            # a key the file leaves to its default is still a key: Hydra calls it new, so add it
            # with Hydra's "+" (unknown keys keep failing, with Hydra's message)
            adjusted = []
            for text, o in zip(overrides, OverridesParser.create().parse_overrides(list(overrides))):
                key = o.key_or_group
                if (o.type.name == "CHANGE" and OmegaConf.select(plain, key, default=None) is None
                        and schema.lookup(known, tuple(key.split("."))) is not None):
                    text = "+" + text
                adjusted.append(text)
            cfg = compose(config_name=file.stem, overrides=adjusted)
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except RankhouseError:
        raise
    except MissingMandatoryValue as exc:  # "???" in the file: a value only the user can give
        raise RankhouseError(f"{file}: {exc.full_key}: required; give it on the command line, "
                             f"e.g. {exc.full_key}=VALUE") from None
    except Exception as exc:  # Hydra/OmegaConf/YAML: one line, naming the file
        msg = " ".join(str(exc).split())
        raise RankhouseError(f"{file}: {msg}") from None
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(data, dict):
        raise RankhouseError(f"{file}: expected a mapping at the top level")
    return data


def _param(file: Path, sch: schema.Schema, key: str, spec: Any, earlier: dict[str, Param]) -> Param:
    where = f"{file}: search.space.{key}"
    try:
        path = split_key(key)
    except ValueError:
        raise RankhouseError(f"{where}: not a key path; write e.g. lora.rank or "
                             'lora.layer_ranks."encoder.0.*"') from None
    node: Any = sch
    for i, part in enumerate(path):
        if isinstance(node, schema.Key):  # only a free mapping has keys below a Key
            if not node.free:
                raise RankhouseError(f"{where}: {'.'.join(path[:i + 1])} is not a config key; expected one of "
                                     "nothing (a value, not a mapping)")
            if i != len(path) - 1:
                raise RankhouseError(f"{where}: a free-form mapping takes one key level (quote keys with dots)")
            break
        if part not in node:
            raise RankhouseError(f"{where}: {'.'.join(path[:i + 1])} is not a config key; expected one of "
                                 f"{', '.join(node)}")
        node = node[part]
    else:
        if isinstance(node, dict):
            raise RankhouseError(f"{where}: {key} is a section; search its keys instead")
        if node.free:
            raise RankhouseError(f'{where}: {key} is a free-form mapping; search one of its keys, e.g. {key}."name"')
    item = node.free  # a user key inside a free-form mapping: its rule applies, any type
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
    prefix = f"{file}: "
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise RankhouseError(f"{where}.values: expected a non-empty list")
        for i, v in enumerate(values):  # each value must be one the key accepts
            schema.check_value(node, v, f"search.space.{key}.values[{i}]", prefix, item=item)
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
        integer = node.type is int or path[:2] == ("lora", "layer_ranks")
        if not (integer or node.type is float):
            raise RankhouseError(f"{where}.type: {kind} samples numbers but {key} is not numeric; use choice")
        if integer and kind in ("uniform", "loguniform"):
            raise RankhouseError(f"{where}.type: {key} takes integers; use int, logint or choice")
        for bound in ("low", "high"):  # the rule only: a bound of an integer key may be written 1.0
            schema.check_value(node, spec[bound], f"search.space.{key}.{bound}", prefix, item=True)
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
    sch, task = study_schema(file, raw)
    config = schema.validate(sch, raw, f"{file}: ")
    r = config["resources"]
    if r["executor"] == "direct" and r["workers_per_trial"] > 1:
        raise RankhouseError(f"{file}: resources.executor: direct runs one worker per trial; "
                             "use train (or auto) for workers_per_trial > 1")
    sch_cfg, epochs = config["search"]["scheduler"], config["train"]["epochs"]
    if sch_cfg["type"] in ("asha", "optuna") and not 1 <= sch_cfg["grace_period"] <= epochs:
        raise RankhouseError(f"{file}: search.scheduler.grace_period: {sch_cfg['grace_period']}; expected "
                             f"1 <= grace_period <= train.epochs ({epochs})")
    if sch_cfg["type"] == "hyperband" and executor(r) != "direct":
        raise RankhouseError(f"{file}: search.scheduler.type: hyperband pauses trials until their bracket fills, "
                             f"which the train executor's queued workers cannot wait for; use asha or optuna, or "
                             f"one worker per trial (resources.executor: direct)")
    try:
        task.check_config(config)
    except RankhouseError as exc:
        raise RankhouseError(f"{file}: {exc}") from None
    _check_objectives(file, config, task)
    _check_holdout(file, config)
    params: dict[str, Param] = {}
    for key, spec in config["search"]["space"].items():
        params[key] = _param(file, sch, key, spec, params)
    _check_rank_modes(file, config, params)
    return Study(file, config, list(params.values()), task)


def _check_holdout(file: Path, config: dict) -> None:
    """Promotion's holdout must be data no trial trained or was selected on: not the study's own
    dataset folder, nor the embedded corpus rendered from the same preset and seed (whose
    songs are the training songs, whatever their count and length)."""
    data, holdout = config["data"], config["registry"]["holdout"]
    root = holdout["root"]
    if root is None:
        return
    if str(root) == "embedded":
        if str(data.get("root")) != "embedded":
            return
        ours, theirs = data.get("embedded") or {}, holdout.get("embedded") or {}
        if ours.get("seed") == theirs.get("seed") and ours.get("preset") == theirs.get("preset"):
            raise RankhouseError(f"{file}: registry.holdout.embedded.seed: {theirs.get('seed')} renders the training "
                                 f"songs (data.embedded has the same preset and seed); give the holdout another seed")
    elif Path(str(root)).expanduser().resolve() == Path(str(data.get("root"))).expanduser().resolve():
        raise RankhouseError(f"{file}: registry.holdout.root: {root} is data.root, the songs the trials train and are "
                             "selected on; give a dataset no trial sees (or null to score the valid split, biased)")


def _objective_list(file: Path, given: list) -> dict:
    """``objective: [{metric, mode}, ...]`` -> the primary's mapping with the rest under ``also``."""
    if not given or not all(isinstance(o, dict) for o in given):
        raise RankhouseError(f"{file}: objective: expected a mapping {{metric, mode}} or a non-empty list of them")
    for i, o in enumerate(given):
        unknown = sorted(set(o) - {"metric", "mode"})
        if unknown:
            raise RankhouseError(f"{file}: objective[{i}].{unknown[0]}: unknown key; expected metric, mode")
    first = given[0]
    return {**first, "also": [{"metric": o.get("metric"), "mode": o.get("mode")} for o in given[1:]] or None}


def objectives(config: dict) -> list[tuple[str, str]]:
    """[(metric, mode), ...]: the primary objective (what ASHA stops on, what ``best`` and
    promotion rank by) first, then any further ones of a multi-objective search."""
    o = config["objective"]
    return [(o["metric"], o["mode"])] + [(a["metric"], a["mode"]) for a in o.get("also") or []]


def _check_objectives(file: Path, config: dict, task: Task) -> None:
    """Every objective is a metric the task reports (or, after the first, an adapter cost);
    an objective left out is the task's default, a mode left out the metric's direction."""
    o = config["objective"]
    epoch_metrics = task.metrics(config)
    o["metric"] = o["metric"] or task.default_objective
    also = o["also"] or []
    if not all(isinstance(a, dict) and set(a) <= {"metric", "mode"} for a in also):
        raise RankhouseError(f"{file}: objective.also: expected a list of {{metric, mode}} mappings")
    seen = set()
    for i, current in enumerate([o, *also]):
        where = "objective" if not also else f"objective[{i}]"
        metric = current.get("metric")
        allowed = set(epoch_metrics) if i == 0 else set(epoch_metrics) | set(COST_METRICS)
        if metric not in allowed:
            extra = "; trainable_params and adapter_bytes may be further objectives, not the first" \
                if metric in COST_METRICS else ""
            raise RankhouseError(f"{file}: {where}.metric: {metric!r}; expected one of "
                                 f"{', '.join(sorted(allowed))} (the {task.name} task's metrics){extra}")
        if current.get("mode") is None:
            current["mode"] = epoch_metrics[metric].mode if metric in epoch_metrics else "min"
        if current["mode"] not in ("max", "min"):
            raise RankhouseError(f"{file}: {where}.mode: {current['mode']!r}; expected max or min")
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


class SampleToConfig:
    """A sample, as Optuna names its values (``{'lora.layer_ranks."encoder.*"': 8}``) -> the config
    sections they belong in (``{"lora": {"layer_ranks": {"encoder.*": 8}}}``): what Tune shows and
    what the trial lays over the study's fixed config (``schema.overlay``). The one place a key's
    path is followed, in the driver. Picklable: Tune saves the searcher, and this with it."""

    def __init__(self, params: list[Param]):
        self.paths = {p.key: p.path for p in params}

    def __call__(self, sampled: dict[str, Any]) -> dict:
        nested: dict = {}
        for key, value in sampled.items():
            *sections, name = self.paths[key]
            node = nested
            for part in sections:
                node = node.setdefault(part, {})
            node[name] = value
        return nested


def sampled_values(params: list[Param], nested: dict) -> dict[str, Any]:
    """The sampled values of a trial's nested sample, by the names Optuna gave them (for tables)."""
    out = {}
    for p in params:
        node: Any = nested
        for part in p.path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node != {}:
            out[p.key] = node
    return out


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
