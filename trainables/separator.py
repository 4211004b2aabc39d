"""The family side of separation: a separator's base knows its sources, and a study may ask for
other sources than the base's (4 -> 5 stems), whose output heads the family rebuilds."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from torch import nn

from trainables.errors import RankhouseError
from trainables.family import Base, Family
from trainables.separation import Separation


@dataclass(kw_only=True)
class SeparatorBase(Base):
    sources: list[str]
    samplerate: int
    segment: float  # seconds per inference chunk (the training segment length)


class Separator(Family):
    """A family of source separators: ``task`` is separation, and ``adapt`` rebuilds the output
    heads for ``model.sources`` (a new source's head starts from ``model.parents``)."""

    task = Separation()
    scratch_sources: list[str] = ["drums", "bass", "other", "vocals"]  # the embedded base's
    scratch_kwargs: dict = {}  # the embedded base's architecture: what ``scratch`` builds

    def build_base(self, cfg: dict) -> SeparatorBase:
        name = str(cfg.get("base", "embedded"))
        ref = self.resolve_base(name)
        if ref == "scratch":  # a freshly initialised model: what the embedded base is trained from
            sources = list(cfg.get("base_sources") or self.scratch_sources)
            return self.new_base(sources, {**self.scratch_kwargs, **dict(cfg.get("kwargs") or {})})
        return self.load_base(ref, name, cfg)

    def new_base(self, sources: list[str], kwargs: dict) -> SeparatorBase:
        """A freshly initialised model of the architecture ``kwargs`` for ``sources``."""
        raise NotImplementedError

    def load_base(self, ref: str | Path, name: str, cfg: dict) -> SeparatorBase:
        """The base ``resolve_base`` found for ``model.base: name``: a checkpoint ``Path`` or a
        pretrained name; ``cfg`` is the ``model`` section (an MSST checkpoint's ``config``)."""
        raise NotImplementedError

    def adapt(self, base: SeparatorBase, model_cfg: dict) -> tuple[nn.Module, list[str]]:
        return self.adapt_sources(base, list(model_cfg["sources"]), dict(model_cfg.get("parents") or {}))

    def adapt_sources(self, base: SeparatorBase, sources: list[str],
                      parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        """A model of its own that separates ``sources``, and its rebuilt heads (none: a copy of the base)."""
        if list(sources) == list(base.sources):
            return copy.deepcopy(base.model).eval(), []
        return self.rebuild_heads(base, list(sources), parents)

    def rebuild_heads(self, base: SeparatorBase, sources: list[str],
                      parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        """``adapt`` for sources other than the base's: a new model whose output heads are rebuilt
        for ``sources`` (a new source's from its parent's), and the heads' module paths."""
        raise RankhouseError(f"model.sources: {self.name} cannot change its sources")


def parent_indices(base: SeparatorBase, sources: list[str], parents: dict[str, str]) -> list[int]:
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


def copy_blocks(old: nn.Module, new: nn.Module, heads: list[str], origin: list[int], old_sources: int) -> None:
    """Load ``old``'s weights into ``new``, whose ``heads`` emit one block of output channels per
    source: in a head, dim 1 of a transposed convolution's weight (dim 0 of its bias) holds
    ``old_sources`` blocks, and new block ``i`` is old block ``origin[i]``."""
    state = new.state_dict()
    for key, value in old.state_dict().items():
        if not any(key.startswith(h + ".") for h in heads):
            state[key] = value.clone()
            continue
        dim = 1 if key.endswith("weight") else 0
        block = value.shape[dim] // old_sources
        state[key] = torch.cat([value.narrow(dim, i * block, block) for i in origin], dim=dim).clone()
    new.load_state_dict(state)
