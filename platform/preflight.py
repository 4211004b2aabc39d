"""Everything a search checks and prepares before Ray starts: the dataset (made if it is the
embedded default, checked and prepared by the task, e.g. decoded into a cache), the base model,
LoRA patterns against real module paths at the largest ranks the space can sample, and the
base's own score."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from platform.data import Progress
from platform.spaces import Study
from trainables import lora, loop
from trainables.errors import RankhouseError
from trainables.family import get_family


@dataclass
class Prepared:
    config: dict  # the study's fixed config with its paths absolute and the task's data settings resolved
    base_identity: dict
    base_metrics: dict
    baselines: dict  # the task's references that cannot listen: name -> metrics


def in_file(study: Study, section: str, exc: RankhouseError) -> RankhouseError:
    """A data-plane error as one line naming the search-space file and the key."""
    msg = str(exc)
    return RankhouseError(f"{study.file}: {msg}" if msg.startswith(section) else f"{study.file}: {section}: {msg}")


def resolve_data(study: Study) -> dict:
    """The study's config as trials get it: every path absolute (trials run in other processes
    and folders), the embedded dataset made, the task's derived data settings filled in."""
    cfg = copy.deepcopy(study.config)
    d = cfg["data"]
    if d["root"] == "embedded":
        try:
            d["root"] = str(study.task.embedded(d["embedded"] if "embedded" in d else {}, Progress))
        except RankhouseError as exc:
            raise in_file(study, "data.embedded", exc) from None
    else:
        d["root"] = str(Path(d["root"]).expanduser().resolve())
    if d["cache_dir"]:
        d["cache_dir"] = str(Path(d["cache_dir"]).expanduser().resolve())
    base = get_family(cfg["model"]["family"]).resolve_base(cfg["model"]["base"])
    if isinstance(base, Path) and cfg["model"]["base"] != "embedded":
        cfg["model"]["base"] = str(base.resolve())
    if cfg["model"]["config"]:
        cfg["model"]["config"] = str(Path(cfg["model"]["config"]).expanduser().resolve())
    study.task.resolve(cfg)
    return cfg


def widest_lora(study: Study) -> dict:
    """The fixed lora section with every searched rank at its largest value, every searched
    layer_ranks pattern present and every searched placement group on (its name still checked),
    so one resolve checks what any trial could ask for."""
    spec = copy.deepcopy(study.config["lora"])
    spec["layer_ranks"] = dict(spec.get("layer_ranks") or {})
    for p in study.params:
        if p.path[0] != "lora":
            continue
        values = p.spec["values"] if p.type == "choice" else [p.spec["low"], p.spec["high"]]
        if p.path == ("lora", "rank"):
            spec["rank"] = max(values)
        elif p.path[:2] == ("lora", "layer_ranks") and len(p.path) == 3:
            spec["layer_ranks"][p.path[2]] = max(values)
            spec["rank_mode"] = "custom"  # searched per-layer ranks only run under custom (spaces checks)
        elif p.path[:2] == ("lora", "placement") and len(p.path) == 3:
            spec["placement"] = {**(spec.get("placement") or {}), p.path[2]: any(values)}  # its group on
    return spec


def prepare(study: Study) -> Prepared:
    cfg = resolve_data(study)
    task = study.task
    print(f"preflight: checking {cfg['data']['root']}")
    task.check(cfg, Progress)  # its errors name the dataset's own files
    try:
        setup = loop.base_model(cfg)
    except RankhouseError as exc:
        raise in_file(study, "model", exc) from None
    try:  # the largest adapter any trial could ask for, built once for real
        _, ranks = setup.family.apply_lora(copy.deepcopy(setup.model), lora.LoraSpec.from_config(widest_lora(study)),
                                           setup.modules_to_save)
    except RankhouseError as exc:
        raise in_file(study, "lora", exc) from None
    print(f"preflight: the LoRA targets reach {len(ranks)} modules holding "
          f"{lora.coverage(setup.model, list(ranks)):.1%} of the base's parameters")
    budget = cfg["budget"]["max_trainable_params"]
    modules = dict(setup.model.named_modules())
    heads = sum(p.numel() for h in setup.modules_to_save for p in modules[h].parameters())
    if budget is not None and heads > budget:  # the heads train fully: no sample could fit
        raise study.error("budget.max_trainable_params", f"{budget} is below the {heads} parameters of the rebuilt "
                          "output heads alone (modules_to_save, trained fully); no configuration can fit")
    task.prepare(cfg, setup.base, Progress)
    print("preflight: scoring the base model (adapted to the study, no adapter) on the valid split")
    valid = task.open(cfg, setup.base, "valid", Progress)
    metrics = task.evaluate(setup.model, valid, cfg, setup.base, torch.device("cpu"))
    return Prepared(cfg, setup.base.identity, metrics, task.baselines(cfg, setup.base, valid, Progress))
