"""The training loop, shared by every model family and every way of running it.

Nothing model-specific lives here: the family builds the base, rebuilds its source heads and
computes the loss; LoRA comes from ``trainables.lora``; batches from the decoded cache. The
same ``train`` runs bare in one process (benchmarks, the base trainer's tests) and inside a
Ray Train worker (``trainables.trial``), where ``report`` forwards metrics and checkpoints.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from trainables import checkpoint, lora, realloc
from trainables.data import cache as stem_cache
from trainables.data.layout import normalize_sources, stems_of
from trainables.data.segments import Augment, SegmentSampler, validation_tracks
from trainables.errors import RankhouseError, TrialFailed  # noqa: F401 (TrialFailed: loop's to raise)
from trainables.family import Base, Family, get_family
from trainables.metrics import nsdr
from trainables.separation import separate

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
    """Everything ``train`` needs, built from a trial config; also used by reload checks."""

    model: torch.nn.Module  # the PeftModel (the plain model for full training)
    ranks: dict[str, int]
    modules_to_save: list[str]
    base: Base
    sources: dict[str, list[str]]
    family: Family
    spec: lora.LoraSpec | None = None  # the adapters' (set by ``build_model``; None: full training)
    # filled in by ``train`` once the data is open, for reporters that need more than metrics
    # (a trial's audio preview separates an excerpt of the validation split with ``model``)
    valid: stem_cache.StemCache | None = None
    segment: float | None = None  # seconds per training segment and per inference chunk


def base_model(cfg: dict) -> Setup:
    """The base with its heads rebuilt for the configured sources, frozen, no adapter yet.

    Frozen matters beyond training: PyTorch's MultiheadAttention takes its fast path only when
    no parameter requires grad, and PEFT freezes the base, so only a frozen reference gives the
    exact step-0 equality the tests prove."""
    family = get_family(cfg["model"]["family"])
    base = family.build_base(cfg["model"])
    sources = normalize_sources(cfg["data"].get("sources") or cfg["model"]["sources"])
    model, heads = family.adapt_sources(base, list(sources), dict(cfg["model"].get("parents") or {}))
    return Setup(model.requires_grad_(False), {}, heads, base, sources, family)


def build_model(cfg: dict) -> Setup:
    setup = base_model(cfg)
    if cfg.get("lora") is None:  # full training: the base trainer and the full fine-tuning reference
        setup.model.requires_grad_(True)
        return setup
    setup.spec = lora.LoraSpec.from_config(cfg["lora"])
    setup.model, setup.ranks = setup.family.apply_lora(setup.model, setup.spec, setup.modules_to_save)
    return setup


def evaluate(model: torch.nn.Module, valid, sources: dict, samplerate: int, segment_seconds: float,
             device: torch.device, max_seconds: float | None = None) -> dict:
    """Whole-track validation: ``valid/loss`` (L1) and nSDR per source and mean, averaged over tracks."""
    model.eval()
    names = list(sources)
    sdrs, losses = [], []
    for _, mix, refs in validation_tracks(valid, sources, max_seconds, samplerate):
        est = separate(model, torch.from_numpy(mix).to(device), int(segment_seconds * samplerate)).cpu()
        ref = torch.from_numpy(refs)
        losses.append(float((est - ref).abs().mean()))
        sdrs.append(nsdr(ref, est))
    per_source = np.mean(np.stack(sdrs), axis=0)
    metrics = {"valid/loss": float(np.mean(losses)), "valid/sdr": float(per_source.mean())}
    metrics.update({f"valid/sdr/{n}": float(v) for n, v in zip(names, per_source)})
    return metrics


def open_caches(cfg: dict, sources: dict, samplerate: int) -> tuple[stem_cache.StemCache, stem_cache.StemCache]:
    data = cfg["data"]
    out = []
    for split in ("train", "valid"):
        path = (data.get("cache") or {}).get(split)
        if not path or not Path(path).is_file():  # e.g. a node the driver's preflight did not run on
            path = stem_cache.build(data["root"], split, stems_of(sources), samplerate, data.get("cache_dir"))
        out.append(stem_cache.StemCache(path))
    return out[0], out[1]


def reallocate(setup: Setup, budget: int, log=print) -> dict[str, int]:
    """``rank_mode: gradient``: the warm-up's adapters pruned to ``budget`` parameters by importance
    (trainables/realloc.py), in place; returns the new rank map."""
    ranks = realloc.allocate(realloc.importances(setup.model), budget)
    before = sum(setup.ranks.values())
    realloc.reshape(setup.model, ranks)
    log(f"gradient: ranks reallocated over {len(ranks)} modules (rank sum {before} -> {sum(ranks.values())}, "
        f"{lora.trainable_parameters(setup.model)} trainable parameters, budget {budget} for the adapters)")
    return ranks


def train(cfg: dict, report: Report, resume_from: Path | None = None, device: torch.device | None = None,
          prepare_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None, log=print,
          on_setup: Callable[[Setup], None] | None = None, rank: int = 0) -> dict:
    """Train adapters for ``cfg``; ``report`` gets metrics and a checkpoint folder every epoch."""
    t = cfg["train"]
    seed = int(t.get("seed", 0))
    seed_everything(seed)
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setup = build_model(cfg)
    epochs, steps = int(t["epochs"]), int(t["steps_per_epoch"])
    resumed = checkpoint.load(Path(resume_from)) if resume_from is not None else None
    spec = setup.spec
    realloc_step, budget = None, None
    if spec is not None and spec.rank_mode == "gradient":
        budget = realloc.uniform_budget(setup.model, spec.rank)
        if resumed is not None:  # every checkpoint is past the reallocation (it happens in epoch 1)
            setup.ranks = {k: int(v) for k, v in resumed[1]["ranks"].items()}
            realloc.reshape(setup.model, setup.ranks, keep_learned=False)
        else:
            realloc_step = realloc.warmup_steps(spec.gradient_at, steps)
    if on_setup and realloc_step is None:  # a gradient trial describes itself once its ranks are final
        on_setup(setup)
    model = setup.model.to(device)
    samplerate, segment = setup.base.samplerate, float(cfg["data"].get("segment", setup.base.segment))
    train_cache, valid_cache = open_caches(cfg, setup.sources, samplerate)
    setup.valid, setup.segment = valid_cache, segment
    # each data-parallel rank draws its own batches
    sampler = SegmentSampler(train_cache, setup.sources, int(segment * samplerate), seed + rank,
                             Augment() if t.get("augment", True) else Augment.off())
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg["optim"]
    optimizer = torch.optim.AdamW(params, lr=float(o["lr"]), weight_decay=float(o.get("weight_decay", 0.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(o.get("schedule", "constant"), epochs * steps, float(o.get("warmup", 0.0))))
    start_epoch, step = 0, 0
    if resumed is not None:
        opt_state, state = resumed
        checkpoint.load_weights(setup.model, Path(resume_from))
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        sampler.set_state(state["rng"]["sampler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        log(f"resumed from {resume_from} at epoch {start_epoch}, step {step}")
    train_model = prepare_model(model) if prepare_model else model
    use_bf16 = device.type == "cuda" and bool(t.get("bf16", True))
    clip = float(o.get("grad_clip", 0.0) or 0.0)
    batch = int(t["batch_size"])
    metrics: dict = {}
    for epoch in range(start_epoch, epochs):
        train_model.train()
        started, total = time.perf_counter(), 0.0
        for _ in range(steps):
            mix, targets = sampler.sample(batch)
            mix, targets = torch.from_numpy(mix).to(device), torch.from_numpy(targets).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss = setup.family.loss(train_model, mix, targets)
            if not torch.isfinite(loss):
                raise TrialFailed(f"non-finite training loss ({loss.item()}) at step {step}; lower optim.lr "
                                  "or set optim.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
            scheduler.step()
            total += loss.item()
            step += 1
            if step == realloc_step:
                setup.ranks = reallocate(setup, budget, log)
                params = [p for p in model.parameters() if p.requires_grad]
                # AdamW's moments belonged to the old factors; the schedule (and its step) carries on
                optimizer.param_groups[0]["params"] = params
                optimizer.state.clear()
                train_model = prepare_model(model) if prepare_model else model
                train_model.train()
                if on_setup:
                    on_setup(setup)
        train_seconds = time.perf_counter() - started
        metrics = {"train/loss": total / steps, "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                   "time/train_step_s": train_seconds / steps}
        metrics.update(evaluate(model, valid_cache, setup.sources, samplerate, segment, device,
                                t.get("valid_max_seconds")))
        if not math.isfinite(metrics["valid/loss"]):
            raise TrialFailed(f"non-finite validation loss at epoch {epoch + 1}")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            checkpoint.save_weights(setup.model, folder)
            checkpoint.save(folder, optimizer, scheduler, epoch + 1, step, sampler.state(), metrics,
                            setup.ranks or None)
            if report(metrics, folder):
                break
    return metrics
