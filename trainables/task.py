"""What a model does, as the platform sees it: its task.

A family (``trainables/family.py``) says how a model is built and where adapters go; its task
says what the model is for: what a batch is and where it comes from, the loss, the metrics an
epoch reports (with each one's direction and unit) and the default objective, what a trial
previews, and how promotion scores a holdout. The loop, the search, tracking, the budget, the
rank modes and promotion only ever call a ``Task``, so a model that does not separate sources
(a structure analyser, a generator) is one family and one task, and nothing in ``platform/``.

Separation (``trainables/separation.py``) is the task the shipped families do. A task of a
user's own is a class in their own package, reached through its family (``model.family:
package.module:Class``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from trainables.errors import RankhouseError

# ``progress(desc)`` -> a ``callback(done, total)``: the driver draws bars, workers pass None
ProgressFactory = Callable[[str], Callable[[int, int], None]]
MODES = ("max", "min")


@dataclass(frozen=True)
class Metric:
    """A metric an epoch (or a holdout score) reports."""

    mode: str  # "max" or "min": which way is better
    unit: str  # printed after values, e.g. "dB", "%", "" for a plain number
    doc: str

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Metric.mode: {self.mode!r}; expected max or min")


class Batches(Protocol):
    """A training split's endless stream of random batches. Its random state is part of every
    checkpoint, so a resumed trial draws the batches it would have drawn."""

    def sample(self, batch_size: int) -> tuple:
        """One batch: a tuple of arrays or tensors (the loop moves them to the device)."""

    def state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


def no_progress(desc: str) -> Callable[[int, int], None]:
    return lambda done, total: None


class Task(ABC):
    name: str
    options: dict = {}  # config keys of this task's own (``trainables.schema`` Keys), laid over the generic ones
    score: str  # the holdout score promotion gates on: a key of ``score_holdout``'s results
    score_label: str  # its name in print, e.g. "BSSEval v4 SDR"
    score_metric: Metric  # its direction, and its unit: the unit of ``registry.min_gain``
    split_folders: bool = True  # a dataset's splits are its subfolders (``train/``, ``valid/``), else the task's rule

    # ---- config ---------------------------------------------------------------------------
    @abstractmethod
    def metrics(self, cfg: dict) -> dict[str, Metric]:
        """Every metric an epoch reports for this study config (``valid/...``, ``train/loss``),
        in display order. Any of them can be the objective. A metric ``M/part`` is a breakdown
        of ``M`` (tables show it beside ``M``)."""

    @property
    @abstractmethod
    def default_objective(self) -> str:
        """The objective when a study names none: one of ``metrics``."""

    def check_config(self, cfg: dict) -> None:
        """Refuse a config this task cannot run (``RankhouseError`` naming the key), at load
        time, before anything is built."""

    def resolve(self, cfg: dict) -> None:
        """The driver's preflight: fill in derived data settings in place (trials get them)."""

    # ---- data -----------------------------------------------------------------------------
    def embedded(self, section: dict, progress: ProgressFactory = no_progress) -> Path:
        """The folder of the embedded dataset described by ``data.embedded`` (made on first use)."""
        raise RankhouseError(f"data.root: embedded: the {self.name} task has no embedded data; "
                             "set data.root to a dataset folder")

    def base_study(self, preset: str) -> dict:
        """Config sections of an embedded base's run (``platform.base``) on the embedded corpus of
        ``preset``: ``generic`` is what the base trains on, ``techhouse`` what its card also
        reports. At least ``data.embedded``; any ``model``/``data``/``train`` keys the task needs."""
        raise RankhouseError(f"the {self.name} task has no embedded corpus to train a base on")

    @abstractmethod
    def check(self, cfg: dict, progress: ProgressFactory = no_progress) -> None:
        """Check the dataset at ``cfg['data']['root']`` before any compute: raise one
        ``RankhouseError`` that names the file and what to fix."""

    def prepare(self, cfg: dict, base, progress: ProgressFactory = no_progress) -> None:
        """Driver-side work every trial would otherwise repeat (e.g. decoding audio into a
        cache); may record its results in ``cfg['data']`` in place."""

    @abstractmethod
    def open(self, cfg: dict, base, split: str, progress: ProgressFactory = no_progress) -> Any:
        """One split of ``cfg['data']['root']`` (e.g. ``train``, ``valid``), ready to read."""

    @abstractmethod
    def batches(self, data: Any, cfg: dict, base, seed: int) -> Batches:
        """Random training batches from an opened split."""

    # ---- training and evaluation ----------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, batch: tuple, cfg: dict) -> torch.Tensor:
        """The training loss of a batch (on the model's device); ``cfg`` may choose it."""

    @abstractmethod
    def evaluate(self, model: nn.Module, data: Any, cfg: dict, base, device: torch.device) -> dict[str, float]:
        """An opened validation split -> every metric of ``metrics`` except ``train/loss``.
        Must include ``valid/loss``: a non-finite one fails the trial."""

    def baselines(self, cfg: dict, base, valid: Any, progress: ProgressFactory = no_progress) -> dict[str, dict]:
        """Scores of references that cannot listen (e.g. a template, the majority class) on the
        opened valid split, named as ``evaluate`` names metrics: ``{name: metrics}``. The driver
        computes them once per search; summaries show them beside the base."""
        return {}

    def preview(self, model: nn.Module, data: Any, cfg: dict, base, metrics: dict, folder: Path,
                device: torch.device) -> bool:
        """Write listening or looking material for the best epoch into ``folder`` (logged under
        the run's ``preview/``); False: this task previews nothing."""
        return False

    def manifest(self, cfg: dict, base) -> dict:
        """What an adapter bundle must record to be scored or used later (JSON)."""
        return {}

    # ---- promotion ------------------------------------------------------------------------
    @abstractmethod
    def score_holdout(self, models: dict[str, nn.Module], data: Any, info: dict, max_seconds: float | None,
                      workers: int | None, progress: ProgressFactory = no_progress) -> dict[str, dict[str, float]]:
        """Score each model on an opened holdout split: label -> {``score``: value, breakdown...}.
        ``info`` is the candidate's bundle manifest."""

    @abstractmethod
    def open_holdout(self, info: dict, root: Path, split: str, progress: ProgressFactory = no_progress) -> Any:
        """A split of the dataset at ``root``, for the adapter bundle whose manifest is ``info``
        (what ``manifest`` recorded says how to read it)."""

    def outputs(self, info: dict) -> Any:
        """What a bundle's model outputs (e.g. a separator's sources): a champion is only ever
        replaced by a candidate with the same outputs."""
        return None

    def example_input(self, info: dict) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """A fixed input batch for the bundle ``info`` describes (a tuple for a model of several
        inputs): export compares the merged model's output on it with the adapter model's."""
        raise RankhouseError(f"the {self.name} task gives no example input; export cannot check a merge")

    def describe(self, scores: dict[str, float]) -> str:
        """One line for a holdout score."""
        unit = f" {self.score_metric.unit}" if self.score_metric.unit else ""
        parts = [f"{k.removeprefix(self.score + '/')} {v:.2f}" for k, v in scores.items() if k != self.score]
        return f"{self.score_label} {scores[self.score]:.3f}{unit}" + (f" ({', '.join(parts)})" if parts else "")

    def gain(self, candidate: dict, reference: dict) -> float:
        """How much better the candidate scores, in ``score_metric.unit`` (positive: better)."""
        diff = candidate[self.score] - reference[self.score]
        return diff if self.score_metric.mode == "max" else -diff
