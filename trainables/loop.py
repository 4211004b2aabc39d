"""The training loop, shared by every model family, every task and every way of running it.

Nothing model- or task-specific lives here: the family builds the base and adapts it to the
study (e.g. rebuilt output heads); the task (``trainables/task.py``) opens the data, draws
batches, computes the loss and evaluates; LoRA comes from ``trainables.lora``. ``Recipe`` is
one training run in the manner of a torchtune recipe: ``setup``, ``train_epoch``, ``save``.
The same ``train`` runs bare in one process (benchmarks, the base trainer) and inside a Ray
worker (``trainables.trial``), where ``report`` forwards metrics and checkpoints.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from trainables import checkpoint, lora, realloc, schema
from trainables.errors import RankhouseError, TrialFailed
from trainables.family import Base, Family, get_family
from trainables.task import Batches, Task

SCHEDULES = ("constant", "linear", "cosine")


class Report(Protocol):
    """Called once per epoch with the metrics and a checkpoint folder (deleted afterwards);
    returning True stops training (the base trainer stops at a plateau)."""

    def __call__(self, metrics: dict, checkpoint_dir: Path) -> bool | None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(schedule: str, total: int, warmup: float) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warmup over ``warmup`` (fraction of steps), then
    constant, linear decay to 0, or cosine decay to 0."""
    if schedule not in SCHEDULES:
        raise RankhouseError(f"optim.schedule: {schedule!r}; expected one of {SCHEDULES}")
    warm = int(round(warmup * total))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return max(0.0, 1 - progress) if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@dataclass
class Setup:
    """A model built from a trial config; ``Recipe`` trains it, reload checks and the budget read it."""

    model: torch.nn.Module  # the PeftModel (the plain model for full training)
    ranks: dict[str, int]
    modules_to_save: list[str]
    base: Base
    family: Family
    cfg: dict
    spec: lora.LoraSpec | None = None  # the adapters' (set by ``build_model``; None: full training)
    valid: Any = None  # the opened validation split, once training has opened it (previews read it)

    @property
    def task(self) -> Task:
        return self.family.task


def complete(cfg: dict) -> dict:
    """``cfg`` with the schema's defaults for whatever it leaves out: a config written in code
    (the base trainer, tests) runs with the documented defaults, never the loop's own guesses."""
    return schema.complete(schema.for_family(get_family(cfg["model"]["family"])), cfg)


def base_model(cfg: dict) -> Setup:
    """The base adapted to the study (e.g. its heads rebuilt for other sources), frozen, no adapter yet.

    Frozen matters beyond training: PyTorch's MultiheadAttention takes its fast path only when
    no parameter requires grad, and PEFT freezes the base, so only a frozen reference gives the
    exact step-0 equality the tests prove."""
    cfg = complete(cfg)
    family = get_family(cfg["model"]["family"])
    base = family.build_base(cfg["model"])
    model, heads = family.adapt(base, cfg["model"])
    return Setup(model.requires_grad_(False), {}, heads, base, family, cfg)


def build_model(cfg: dict) -> Setup:
    setup = base_model(cfg)
    if cfg.get("lora") is None:  # full training: the base trainer and the full fine-tuning reference
        setup.model.requires_grad_(True)
        return setup
    setup.spec = lora.LoraSpec.from_config(cfg["lora"])
    setup.model, setup.ranks = setup.family.apply_lora(setup.model, setup.spec, setup.modules_to_save)
    return setup


def reallocate(setup: Setup, budget: int, log=print) -> dict[str, int]:
    """``rank_mode: gradient``: the warm-up's adapters pruned to ``budget`` parameters by importance
    (trainables/realloc.py), in place; returns the new rank map."""
    ranks = realloc.allocate(realloc.importances(setup.model), budget)
    before = sum(setup.ranks.values())
    realloc.reshape(setup.model, ranks)
    log(f"gradient: ranks reallocated over {len(ranks)} modules (rank sum {before} -> {sum(ranks.values())}, "
        f"{lora.trainable_parameters(setup.model)} trainable parameters, budget {budget} for the adapters)")
    return ranks


class Recipe:
    """One training run of ``cfg``: ``setup`` (model, data, optimizer, a checkpoint to resume
    from), then ``train_epoch`` and ``save`` per epoch; ``run`` drives them with a ``Report``."""

    def __init__(self, cfg: dict, device: torch.device | None = None, log=print,
                 prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                 on_setup: Callable[[Setup], None] | None = None, rank: int = 0):
        cfg = complete(cfg)
        self.cfg, self.log, self.prepare_model, self.on_setup, self.rank = cfg, log, prepare_model, on_setup, rank
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        t = cfg["train"]
        self.epochs, self.steps, self.batch_size = int(t["epochs"]), int(t["steps_per_epoch"]), int(t["batch_size"])
        self.use_bf16 = self.device.type == "cuda" and bool(t["bf16"])
        self.clip = float(cfg["optim"]["grad_clip"])
        self.start_epoch, self.step = 0, 0
        self.realloc_plan: dict[int, int] = {}  # rank_mode gradient: step -> the budget it reallocates to

    # ---- setup ----------------------------------------------------------------------------
    def setup(self, resume_from: Path | None = None) -> None:
        cfg = self.cfg
        seed = int(cfg["train"]["seed"])
        seed_everything(seed)
        self.built = s = build_model(cfg)
        resumed = checkpoint.load(Path(resume_from)) if resume_from is not None else None
        if s.spec is not None and s.spec.rank_mode == "gradient":
            if resumed is not None:  # every checkpoint is past the reallocations (they happen in epoch 1)
                s.ranks = {k: int(v) for k, v in resumed[1]["ranks"].items()}
                realloc.reshape(s.model, s.ranks, keep_learned=False)
            else:
                self.realloc_plan = realloc.schedule(s.spec.gradient_at, self.steps, s.spec.gradient_steps,
                                                     realloc.adapter_size(s.model),
                                                     realloc.uniform_budget(s.model, s.spec.rank))
        if self.on_setup and not self.realloc_plan:  # a gradient trial describes itself once its ranks are final
            self.on_setup(s)
        self.model = s.model.to(self.device)
        s.valid = s.task.open(cfg, s.base, "valid")
        # each data-parallel rank draws its own batches
        self.batches: Batches = s.task.batches(s.task.open(cfg, s.base, "train"), cfg, s.base, seed + self.rank)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        o = cfg["optim"]
        self.optimizer = torch.optim.AdamW(self.params, lr=float(o["lr"]), weight_decay=float(o["weight_decay"]))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o["schedule"], self.epochs * self.steps, float(o["warmup"])))
        if resumed is not None:
            opt_state, state = resumed
            checkpoint.load_weights(s.model, Path(resume_from))
            self.optimizer.load_state_dict(opt_state)
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
            self.batches.set_state(state["rng"]["sampler"])
            self.start_epoch, self.step = int(state["epoch"]), int(state["step"])
            self.log(f"resumed from {resume_from} at epoch {self.start_epoch}, step {self.step}")
        self.train_model = self.prepare_model(self.model) if self.prepare_model else self.model

    # ---- one epoch ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        """``steps_per_epoch`` optimizer steps, then validation: the epoch's metrics."""
        s, task = self.built, self.built.task
        self.train_model.train()
        started, total = time.perf_counter(), 0.0
        for _ in range(self.steps):
            batch = tuple(torch.as_tensor(x).to(self.device) for x in self.batches.sample(self.batch_size))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
                loss = task.loss(self.train_model, batch, self.cfg)
            if not torch.isfinite(loss):
                raise TrialFailed(f"non-finite training loss ({loss.item()}) at step {self.step}; lower optim.lr "
                                  "or set optim.grad_clip")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.clip)
            self.optimizer.step()
            self.scheduler.step()
            total += loss.item()
            self.step += 1
            if self.step in self.realloc_plan:
                self._reallocate(self.realloc_plan[self.step], final=self.step == max(self.realloc_plan))
        metrics = {"train/loss": total / self.steps, "epoch": epoch + 1, "step": self.step,
                   "lr": self.scheduler.get_last_lr()[0],
                   "time/train_step_s": (time.perf_counter() - started) / self.steps}
        metrics.update(task.evaluate(self.model, s.valid, self.cfg, s.base, self.device))
        if not math.isfinite(metrics["valid/loss"]):
            raise TrialFailed(f"non-finite validation loss at epoch {epoch + 1}")
        return metrics

    def _reallocate(self, budget: int, final: bool) -> None:
        s = self.built
        if budget < realloc.adapter_size(self.model):  # a step with nothing to prune keeps the factors and moments
            s.ranks = reallocate(s, budget, self.log)
            self.params = [p for p in self.model.parameters() if p.requires_grad]
            # AdamW's moments of the old factors go (the rebuilt factors are new tensors); the
            # heads' stay, and the schedule (and its step) carries on
            kept = set(self.params)
            self.optimizer.param_groups[0]["params"] = self.params
            for p in [p for p in self.optimizer.state if p not in kept]:
                del self.optimizer.state[p]
            self.train_model = self.prepare_model(self.model) if self.prepare_model else self.model
            self.train_model.train()
        if self.on_setup and final:
            self.on_setup(s)

    # ---- save -----------------------------------------------------------------------------
    def save(self, folder: Path, epoch: int, metrics: dict) -> None:
        """The adapter (or whole model) and everything a resume needs, into ``folder``."""
        checkpoint.save_weights(self.built.model, folder)
        checkpoint.save(folder, self.optimizer, self.scheduler, epoch + 1, self.step, self.batches.state(), metrics,
                        self.built.ranks or None)

    def run(self, report: Report) -> dict:
        metrics: dict = {}
        for epoch in range(self.start_epoch, self.epochs):
            metrics = self.train_epoch(epoch)
            with tempfile.TemporaryDirectory() as tmp:
                self.save(Path(tmp), epoch, metrics)
                if report(metrics, Path(tmp)):
                    break
        return metrics


def train(cfg: dict, report: Report, resume_from: Path | None = None, device: torch.device | None = None,
          prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None, log=print,
          on_setup: Callable[[Setup], None] | None = None, rank: int = 0) -> dict:
    """Train adapters for ``cfg``; ``report`` gets metrics and a checkpoint folder every epoch."""
    recipe = Recipe(cfg, device, log, prepare_model, on_setup, rank)
    recipe.setup(resume_from)
    return recipe.run(report)
