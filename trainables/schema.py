"""The study config's schema, declared once: every section and key with its default, type,
range and one line of documentation.

Validation (``platform.spaces``), the defaults a trial runs with (``complete``: the loop, the
base trainer), ``LoraSpec`` and the generated reference (``docs/config.md``, from ``markdown``)
all read this one declaration. A task adds its own keys (``Task.options``, e.g. separation's
``model.sources``) and a family its own (``Family.options``), so a family of a new kind
declares what it needs without editing ``platform/``. Lives in ``trainables`` because trials run it on Ray workers.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Callable

from trainables.errors import RankhouseError

REQUIRED = object()
ANY = object  # ``type=ANY``: the rule alone decides
Schema = dict  # section name -> Key or a nested Schema


@dataclass(frozen=True)
class Key:
    """One config key. ``free``: a mapping of the user's own keys (``layer_ranks`` patterns),
    whose every value the rule checks."""

    default: Any
    doc: str
    type: type | None = None  # None: the default's type
    nullable: bool = False
    rule: Callable[[Any], bool] | None = None
    expect: str = ""  # what ``rule`` demands, in words: "expected <expect>"
    free: bool = False

    def __post_init__(self):
        if self.type is None and not self.free:
            if self.default is None or self.default is REQUIRED:
                raise ValueError(f"Key({self.doc!r}): give a type when the default is null or required")
            object.__setattr__(self, "type", type(self.default))
        if self.default is None and not self.nullable:
            object.__setattr__(self, "nullable", True)
        if self.rule is not None and not self.expect:
            raise ValueError(f"Key({self.doc!r}): a rule needs its expect text")


def _in(*values) -> Callable[[Any], bool]:
    return lambda v: v in values


def _int_at_least(n: int) -> Callable[[Any], bool]:
    return lambda v: v >= n


SCHEMA: Schema = {
    "study": Key(REQUIRED, "the study's name: its MLflow experiment and output folder", type=str,
                 rule=lambda v: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", v) is not None,
                 expect="a name of letters, digits, '-', '_' or '.'"),
    "model": {
        "family": Key("htdemucs", "a family registered in trainables/family.py (see the task sections below), "
                                  "or your own as package.module:Class"),
        "base": Key("embedded", "embedded (the family's small base), a checkpoint file, a pretrained name the "
                                "family knows, or scratch"),
        "config": Key(None, "the architecture file of a checkpoint that does not carry its own (MSST's YAML)",
                      type=str),
    },
    "data": {
        "root": Key("embedded", "a dataset folder (its layout is the task's), or embedded: data.embedded's"),
        "cache_dir": Key(None, "where decoded data is cached (default: beside the dataset)", type=str),
    },
    "train": {
        "epochs": Key(4, "epochs per trial (ASHA may stop a trial earlier)", rule=_int_at_least(1),
                      expect="an integer >= 1"),
        "steps_per_epoch": Key(25, "optimizer steps per epoch", rule=_int_at_least(1), expect="an integer >= 1"),
        "batch_size": Key(4, "examples per step (per worker)", rule=_int_at_least(1), expect="an integer >= 1"),
        "seed": Key(0, "seeds the model's adapters and the batches"),
        "valid_max_seconds": Key(None, "validate on at most this much of each valid item (null: all of it)",
                                 type=float, rule=lambda v: v > 0, expect="null or seconds > 0"),
        "augment": Key(True, "the task's training augmentations (separation: Demucs' gain, swap, flip, remix)"),
        "bf16": Key(True, "bf16 autocast on CUDA (ignored on CPU)"),
    },
    "lora": {
        "rank": Key(8, "the adapters' rank (custom and uniform modes; gradient: the average kept)",
                    rule=lambda v: v >= 1, expect="an integer rank >= 1"),
        "alpha": Key(16.0, "LoRA alpha: the update is scaled by alpha/r (rslora: alpha/sqrt(r))",
                     rule=lambda v: v > 0, expect="alpha > 0"),
        "dropout": Key(0.0, "dropout on the adapters' input", rule=lambda v: 0 <= v < 1, expect="0 <= dropout < 1"),
        "scaling": Key("standard", "standard (alpha/r) or rslora (alpha/sqrt(r))", rule=_in("standard", "rslora"),
                       expect="standard (alpha/r) or rslora (alpha/sqrt(r))"),
        "rank_mode": Key("custom", "how ranks are allocated over layers", rule=_in("custom", "uniform", "heuristic",
                                                                                     "gradient"),
                         expect="custom (rank + layer_ranks), uniform (one rank), heuristic (the family's allocation) "
                                "or gradient (reallocated after a warm-up)"),
        "targets": Key(None, "glob patterns over module paths to adapt (null: the family's default targets)",
                       type=list),
        "layer_ranks": Key({}, "pattern -> rank for the modules it matches (custom mode; 0: no adapter)", free=True,
                           rule=lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                           expect="an integer rank >= 0 (0: no adapter)"),
        "placement": Key({}, "the family's layer group -> adapters in it on or off", free=True,
                         rule=lambda v: isinstance(v, bool), expect="true or false (adapters in this layer group)"),
        "gradient_init_scale": Key(2.0, "gradient mode: the warm-up's ranks, as a multiple of rank",
                                   rule=lambda v: v >= 1, expect=">= 1 (starting ranks, x rank)"),
        "gradient_at": Key(0.5, "gradient mode: when ranks are first reallocated, as a fraction of the first epoch",
                           rule=lambda v: 0 < v <= 1, expect="0 < gradient_at <= 1 (a fraction of the first epoch)"),
        "gradient_steps": Key(1, "gradient mode: reallocations, spread from gradient_at to the end of the first "
                                 "epoch, the budget falling on a cubic to the parameters of rank on every target",
                              rule=lambda v: v >= 1, expect=">= 1 (reallocations in the first epoch)"),
    },
    "optim": {
        "lr": Key(1.0e-3, "AdamW's learning rate", rule=lambda v: v > 0, expect="a learning rate > 0"),
        "schedule": Key("cosine", "the learning rate after warm-up: constant, linear or cosine decay to 0",
                        rule=_in("constant", "linear", "cosine"), expect="one of constant, linear, cosine"),
        "warmup": Key(0.0, "linear warm-up, as a fraction of all steps", rule=lambda v: 0 <= v < 1,
                      expect="a fraction of the steps, 0 <= warmup < 1"),
        "weight_decay": Key(0.0, "AdamW's weight decay", rule=lambda v: v >= 0, expect="weight_decay >= 0"),
        "grad_clip": Key(0.5, "clip the gradient norm to this (0: no clipping)", rule=lambda v: v >= 0,
                         expect="a gradient norm >= 0 (0: no clipping)"),
    },
    "objective": {
        "metric": Key(None, "what the search optimises: a metric the family's task reports (null: the task's "
                            "default)", type=str),
        "mode": Key(None, "max or min (null: the metric's own direction)", type=str, rule=_in("max", "min"),
                    expect="max or min"),
        "also": Key(None, "further objectives of a multi-objective search (written as a list: objective: "
                          "[{metric, mode}, ...])", type=list),
    },
    "budget": {
        "max_trainable_params": Key(None, "a sample with more trainable parameters (adapters + rebuilt heads) "
                                          "never runs", type=int, rule=lambda v: v >= 1,
                                    expect="null or an integer >= 1"),
    },
    "search": {
        "algorithm": Key("optuna", "the search algorithm", rule=_in("optuna"), expect="optuna"),
        "sampler": Key("tpe", "tpe (multivariate TPE; multi-objective TPE for several objectives) or random",
                       rule=_in("tpe", "random"), expect="tpe or random"),
        "startup_trials": Key(None, "random samples before TPE models (null: chosen from num_samples)", type=int,
                              rule=lambda v: v >= 1, expect="null or an integer >= 1"),
        "num_samples": Key(8, "trials to run", rule=_int_at_least(1), expect="an integer >= 1"),
        "max_concurrent": Key(2, "trials at once (at most what the cluster fits)", rule=_int_at_least(1),
                              expect="an integer >= 1"),
        "seed": Key(0, "the sampler's seed"),
        "scheduler": {
            "type": Key("asha", "asha (Ray's asynchronous successive halving), hyperband (Ray's synchronous "
                                "HyperBand), optuna (Optuna's SuccessiveHalvingPruner) or fifo (every trial to "
                                "the end); see platform/schedulers.py",
                        rule=_in("asha", "hyperband", "optuna", "fifo"),
                        expect="one of ('asha', 'hyperband', 'optuna', 'fifo')"),
            "grace_period": Key(1, "asha, optuna: epochs before a trial can be stopped (hyperband derives its "
                                   "rungs from train.epochs and reduction_factor)"),
            "reduction_factor": Key(2, "keep 1 in this many at each rung", rule=_int_at_least(2),
                                    expect="an integer >= 2"),
            "bootstrap_count": Key(0, "optuna: results a rung needs before any trial passes it (trials that "
                                      "reach it earlier are stopped)", rule=_int_at_least(0),
                                   expect="an integer >= 0"),
        },
        "space": Key({}, "key path -> distribution ({type: choice|uniform|loguniform|int|logint, ...})", free=True),
    },
    "resources": {
        "workers_per_trial": Key(1, "data-parallel workers per trial", rule=_int_at_least(1),
                                 expect="an integer >= 1"),
        "cpus_per_worker": Key(1.0, "CPUs each worker holds (and torch threads it uses)", rule=lambda v: v > 0,
                               expect="CPUs > 0"),
        "gpus_per_worker": Key(0.0, "GPUs each worker holds (fractions share a GPU)", rule=lambda v: v >= 0,
                               expect="GPUs >= 0"),
        "max_failures": Key(0, "retries of a failed trial, from its last checkpoint", rule=lambda v: v >= 0,
                            expect="an integer >= 0"),
        "executor": Key("auto", "direct (the trial process trains), train (Ray Train workers) or auto",
                        rule=_in("auto", "direct", "train"), expect="auto, direct or train"),
    },
    "tracking": {
        "backend": Key("sqlite", "the database of the MLflow store and the Optuna record: sqlite (files in the "
                                 "output folder) or postgresql://USER@HOST:PORT/DB (a server a team shares; the "
                                 "password from ~/.pgpass)",
                       rule=lambda v: v == "sqlite" or re.match(r"postgresql(\+\w+)?://", v) is not None,
                       expect="sqlite or a postgresql:// URL"),
        "uri": Key(None, "the MLflow tracking URI (default: the backend itself; http://HOST:PORT for a server)",
                   type=str),
        "experiment": Key(None, "the MLflow experiment (default: the study's name)", type=str),
        "output": Key(None, "the study's output folder (default: runs/<study>)", type=str),
    },
    "run": {"storage_path": Key(None, "Ray's storage for trial checkpoints (default: in the output folder)",
                                type=str)},
    "registry": {
        "model_name": Key(None, "the registered model promote writes to", type=str),
        "merged": Key(False, "also write the new champion merged into its base"),
        "min_gain": Key(0.0, "what a candidate must gain over the champion on the holdout, in the task's score "
                             "unit (separation: dB of SDR)", rule=lambda v: v >= 0, expect=">= 0"),
        "holdout": {
            "root": Key(None, "data no trial trained or was selected on: a dataset folder, or embedded "
                              "(registry.holdout.embedded); null: the study's own valid split (biased)", type=str),
            "split": Key("valid", "the split of root to score"),
            "max_seconds": Key(10.0, "score at most this much of each item (null: all)", nullable=True,
                               rule=lambda v: v > 0, expect="seconds > 0 or null"),
        },
    },
}


def merged(*schemas: Schema) -> Schema:
    """``schemas`` laid over one another (a task's options over the generic sections)."""
    out: Schema = {}
    for layer in schemas:
        for name, node in layer.items():
            if isinstance(node, dict) and isinstance(out.get(name), dict):
                out[name] = merged(out[name], node)
            else:
                out[name] = node
    return out


def overlay(base: dict, top: dict) -> dict:
    """``base`` with ``top`` laid over it section by section: a trial's sampled values (nested as
    in the file) over the study's fixed config. A mapping's new keys come after its own, in
    ``top``'s order (``layer_ranks``: the first matching pattern wins)."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = overlay(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def for_family(family) -> Schema:
    """The schema of a study of ``family``: the generic keys, its task's and its own."""
    return merged(SCHEMA, family.task.options, family.options)


def lookup(schema: Schema, path: tuple[str, ...]) -> Key | Schema | None:
    """The Key (or section) at ``path``; for a free mapping's user key, its Key; None: no such key."""
    node: Any = schema
    for i, part in enumerate(path):
        if isinstance(node, Key):
            return node if node.free and i == len(path) - 1 else None
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _type_name(t: type) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(t, t.__name__)


def check_value(key: Key, value: Any, path: str, prefix: str = "", item: bool = False) -> Any:
    """One value for ``key`` at ``path`` (``item``: a value inside a free mapping), converted (an
    int given for a float) or refused with ``<prefix><path>: expected ...``."""
    where = f"{prefix}{path}"
    if key.free and not item:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RankhouseError(f"{where}: expected a mapping, got {value!r}")
        return {k: check_value(key, v, f"{path}.{k}", prefix, item=True) for k, v in value.items()}
    if value is None:
        if key.default is REQUIRED:
            raise RankhouseError(f"{where}: required; set it in the file or as {path}=...")
        if key.nullable or item:
            return None
        raise RankhouseError(f"{where}: expected {_type_name(key.type)}, got null")
    if not item and key.type is not ANY:
        if key.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, key.type) or (isinstance(value, bool) and key.type is not bool):
            null = " or null" if key.nullable else ""
            raise RankhouseError(f"{where}: expected {_type_name(key.type)}{null}, got {value!r}")
    if key.rule is not None:
        try:
            good = key.rule(value)
        except TypeError:
            good = False
        if not good:
            raise RankhouseError(f"{where}: {value!r}; expected {key.expect}")
    return value


def validate(schema: Schema, value: Any, prefix: str, path: str = "") -> dict:
    """A config checked against ``schema`` with every default filled in; errors read
    ``<prefix><key path>: ...`` (prefix: e.g. the file)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise RankhouseError(f"{prefix}{path}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        key = f"{path}.{unknown[0]}" if path else unknown[0]
        raise RankhouseError(f"{prefix}{key}: unknown key; expected one of {', '.join(schema)}")
    out = {}
    for name, node in schema.items():
        where = f"{path}.{name}" if path else name
        if isinstance(node, dict):
            out[name] = validate(node, value.get(name), prefix, where)
        else:
            given = value.get(name)
            if given is None and node.default is not REQUIRED and node.default is not None:
                given = copy.deepcopy(node.default)
            out[name] = check_value(node, given, where, prefix)
    return out


def complete(schema: Schema, cfg: dict) -> dict:
    """``cfg`` with every key it leaves out set to its default, unchecked: for configs written
    in code (the base trainer, tests), so the loop never guesses a default of its own."""
    out = copy.deepcopy(cfg)
    for name, node in schema.items():
        if isinstance(node, dict):
            if out.get(name, {}) is not None:  # e.g. lora: None (full training) stays None
                out[name] = complete(node, out.get(name) or {})
        elif name not in out and node.default is not REQUIRED:
            out[name] = copy.deepcopy(node.default)
    return out


def markdown(schema: Schema, path: str = "") -> list[str]:
    """Reference lines for ``docs/config.md``: one table per section."""
    rows, sections = [], []
    for name, node in schema.items():
        where = f"{path}.{name}" if path else name
        if isinstance(node, dict):
            sections.append((where, node))
            continue
        default = "required" if node.default is REQUIRED else f"`{node.default!r}`".replace("None", "null")
        kind = "mapping of your keys" if node.free else _type_name(node.type) if node.type is not ANY else "any"
        rule = f"; {node.expect}" if node.expect else ""
        rows.append(f"| `{where}` | {default} | {kind}{' or null' if node.nullable else ''}{rule} | {node.doc} |")
    out = []
    if rows:
        out += [f"### `{path or 'top level'}`", "", "| key | default | accepts | meaning |", "|---|---|---|---|",
                *rows, ""]
    for where, node in sections:
        out += markdown(node, where)
    return out


def reference() -> str:
    """``docs/config.md``: the generic sections, then each shipped family's task's own keys."""
    from trainables.family import FAMILIES, get_family

    tasks: dict[str, tuple] = {}
    for name in FAMILIES:
        task = get_family(name).task
        tasks.setdefault(task.name, (task, []))[1].append(name)
    out = ["# Config reference", "",
           "Generated from `trainables/schema.py` (and each task's `options`) by "
           "`python -m trainables.schema > docs/config.md`; a test fails when this file is stale.", "",
           "A search-space file sets any of these keys; the ones it leaves out take the default. "
           "`search.space` samples any scalar key by its dotted path (see the README).", "",
           "## Every study", "", *markdown(SCHEMA)]
    for task, families in tasks.values():
        out += [f"## The {task.name} task ({', '.join(families)})", "",
                f"Objectives: any metric the task reports; default `{task.default_objective}`. "
                f"Promotion scores `{task.score}` ({task.score_metric.doc}), in {task.score_metric.unit or 'units'}.",
                "", *markdown(task.options)]
        for name in families:
            if get_family(name).options:
                out += [f"### The {name} family's own keys", "", *markdown(get_family(name).options)]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # run as a script this module is __main__: use the one the tasks import
    from trainables import schema

    print(schema.reference(), end="")
