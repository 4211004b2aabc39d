"""The family side of separation: a separator's base knows its sources, and a study may ask for
other sources than the base's (4 -> 5 stems), whose output heads the family rebuilds."""

from __future__ import annotations

import copy
from dataclasses import dataclass

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
