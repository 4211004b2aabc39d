"""The protocol every model family implements, so the loop, the search, tracking and promotion
never special-case a model. A family is one module in ``trainables/`` registered by name, or a
user's own class named ``package.module:Class`` in ``model.family``."""

from __future__ import annotations

import copy
import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from trainables.errors import RankhouseError
from trainables.task import Task

# name -> "module:Class"; adding a family adds one line here and nothing in platform/ or loop.py
FAMILIES = {
    "htdemucs": "trainables.htdemucs:HTDemucsFamily",
    "bs_roformer": "trainables.bs_roformer:BSRoformerFamily",
    "scnet": "trainables.scnet:SCNetFamily",
    "structure": "trainables.structure.family:StructureFamily",
    "acestep": "trainables.acestep.family:AceStepFamily",
}


@dataclass
class Base:
    """A base model and what an adapter must know about it (a task's families add more:
    ``trainables.separator.SeparatorBase`` has the sources)."""

    model: nn.Module
    identity: dict  # {"name": ..., "sha256": ...}: an adapter is never applied to another base
    config: dict = field(default_factory=dict)


class Family(ABC):
    name: str
    task: Task  # what its models do: data, loss, metrics, previews, promotion scores
    options: dict = {}  # config keys of the family's own (``trainables.schema`` Keys), beside its task's
    default_targets: list[str] = ["*"]  # LoRA targets when the config names none
    embedded: Path | None = None  # the embedded base's asset, built by ``python -m platform.base --family NAME``
    checkpoint_suffixes: tuple[str, ...] = (".safetensors",)  # names that are checkpoint files

    @abstractmethod
    def build_base(self, cfg: dict) -> Base:
        """Build the base from ``cfg['base']`` (``cfg`` is the study's ``model`` section):
        ``embedded``, a pretrained name, a checkpoint path, or ``scratch``."""

    def resolve_base(self, name: str) -> str | Path:
        """What ``model.base`` names, decided here only: ``scratch``; the embedded asset or a
        checkpoint file (a ``Path``, checked to exist: a name with one of
        ``checkpoint_suffixes`` or a folder in it); else a pretrained name the family knows."""
        name = str(name)
        if name == "scratch":
            return name
        if name == "embedded":
            if self.embedded is None or not self.embedded.is_file():
                raise RankhouseError(f"{self.embedded}: the embedded base is missing; rebuild it with "
                                     f"python -m platform.base --family {self.name}")
            return self.embedded
        if name.endswith(self.checkpoint_suffixes) or "/" in name or os.sep in name:
            path = Path(name).expanduser()
            if not path.is_file():
                raise RankhouseError(f"model.base: {path}: no such file")
            return path
        return name

    def adapt(self, base: Base, model_cfg: dict) -> tuple[nn.Module, list[str]]:
        """A model for the study's ``model`` section, and the modules to train fully (e.g. output
        heads rebuilt for other sources). The default: a copy of the base as it is.

        Always a model of its own, never ``base.model``: adapters are injected into it in place,
        and the base must stay the unadapted reference (promotion compares against it)."""
        return copy.deepcopy(base.model).eval(), []

    def rank_scales(self, names: list[str]) -> dict[str, float]:
        """``lora.rank_mode: heuristic``: a rank multiplier per targeted module path, by depth and
        layer type, documented by the family."""
        raise RankhouseError(f"lora.rank_mode: heuristic: the {self.name} family documents no rank allocation")

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """``lora.placement``: the family's layer groups, each a list of glob patterns over module
        paths, that placement switches on or off. None documented: placement is refused."""
        return {}

    def apply_lora(self, model: nn.Module, spec, modules_to_save: list[str] = ()):
        """``lora.apply`` with this family's default targets, rank allocation and layer groups:
        the one way the loop, the preflight and the budget counter adapt a model."""
        from trainables import lora

        return lora.apply(model, spec, modules_to_save, self.default_targets, self.rank_scales,
                          self.layer_groups(model))

    def save_model(self, model: nn.Module, path, base: Base) -> str:
        """Write a whole model (e.g. an adapter merged into its base) as a safetensors checkpoint
        that ``build_base`` accepts as a base; returns its sha256."""
        raise RankhouseError(f"{self.name}: exporting a merged model is not supported for this family")

    def save_msst(self, model: nn.Module, path: Path, config: Path, base: Base) -> str:
        """Write a whole model as an MSST checkpoint (a plain state dict, MSST's key names) at
        ``path`` and the MSST config YAML that builds it at ``config``; returns the sha256."""
        raise RankhouseError(f"--format msst: the {self.name} family is not one of MSST's models")


def get_family(name: str) -> Family:
    """A registered family by name, or a user's own as ``package.module:Class`` (importable on
    the driver and on every Ray worker)."""
    if name in FAMILIES:
        name = FAMILIES[name]
    elif ":" not in name:
        raise RankhouseError(f"model.family: unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))} "
                             "or name your own as package.module:Class")
    module, _, cls = name.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise RankhouseError(f"model.family: {name}: cannot import {module} ({exc}); install the package or "
                             "put it on PYTHONPATH (on every node of a cluster)") from None
    except AttributeError:
        raise RankhouseError(f"model.family: {name}: {module} has no {cls}") from None
    if not (isinstance(found, type) and issubclass(found, Family) and isinstance(getattr(found, "task", None), Task)):
        raise RankhouseError(f"model.family: {name}: not a trainables.family.Family subclass with a task")
    return found()
