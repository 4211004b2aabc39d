"""The protocol every model family implements, so the loop, the search, tracking and promotion
never special-case a model. A family is one module in ``trainables/`` registered by name."""

from __future__ import annotations

import copy
import importlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from trainables.errors import RankhouseError

# name -> "module:Class"; adding a family adds one line here and nothing in platform/ or loop.py
FAMILIES = {
    "htdemucs": "trainables.htdemucs:HTDemucsFamily",
    "bs_roformer": "trainables.bs_roformer:BSRoformerFamily",
}


@dataclass
class Base:
    """A base model and what an adapter must know about it."""

    model: nn.Module
    sources: list[str]
    samplerate: int
    segment: float  # seconds per inference chunk (the training segment length)
    identity: dict  # {"name": ..., "sha256": ...}: an adapter is never applied to another base
    config: dict = field(default_factory=dict)


class Family(ABC):
    name: str
    default_targets: list[str] = ["*"]  # LoRA targets when the config names none
    embedded: Path | None = None  # the embedded base's asset, built by ``python -m platform.base --family NAME``
    checkpoint_suffixes: tuple[str, ...] = (".safetensors",)  # names that are checkpoint files

    @abstractmethod
    def build_base(self, cfg: dict) -> Base:
        """Build the base from ``cfg['base']``: ``embedded``, a pretrained name, a checkpoint path,
        or ``scratch`` (a new model of the embedded architecture with ``cfg['base_sources']``)."""

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

    def adapt_sources(self, base: Base, sources: list[str], parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        """A model for ``sources`` and the modules to train fully (new output heads), if any.

        Always a model of its own, never ``base.model``: adapters are injected into it in place,
        and the base must stay the unadapted reference (promotion compares against it)."""
        if list(sources) == list(base.sources):
            return copy.deepcopy(base.model).eval(), []
        return self.rebuild_heads(base, list(sources), parents)

    def rebuild_heads(self, base: Base, sources: list[str], parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        """``adapt_sources`` for sources other than the base's: a new model whose output heads
        are rebuilt for ``sources`` (a new source's from its parent's), and the heads' paths."""
        raise RankhouseError(f"model.sources: {self.name} cannot change its sources")

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

    def loss(self, model: nn.Module, mix: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """L1 on waveforms, as Demucs and MSST train."""
        return (model(mix) - targets).abs().mean()


def parent_indices(base: Base, sources: list[str], parents: dict[str, str]) -> list[int]:
    """For each target source, the index of the base source its head starts from: itself if
    the base has it, else ``parents[source]``."""
    origin = []
    for s in sources:
        parent = s if s in base.sources else parents.get(s)
        if parent is None:
            raise RankhouseError(f"model.sources: {s!r} is not a source of the base ({', '.join(base.sources)}) "
                                 f"and has no parent; add model.parents.{s}: <one of {', '.join(base.sources)}>")
        if parent not in base.sources:
            raise RankhouseError(f"model.parents.{s}: {parent!r} is not a source of the base "
                                 f"({', '.join(base.sources)})")
        origin.append(base.sources.index(parent))
    return origin


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise RankhouseError(f"model.family: unknown family {name!r}; choose one of {', '.join(sorted(FAMILIES))}")
    module, cls = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), cls)()
