"""Separation, the task of the shipped families: mixture in, one waveform per source out.

``separate`` runs a separator over a track of any length (chunks cross-faded with overlap-add);
``Separation`` is the task (``trainables/task.py``): stem datasets, L1 loss, nSDR per source
each epoch, an audio preview, museval BSSEval v4 on the promotion holdout.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from trainables.data import cache
from trainables.data.layout import Sources, normalize_sources, stems_of
from trainables.errors import RankhouseError
from trainables.schema import ANY, REQUIRED, Key
from trainables.task import Metric, ProgressFactory, Task, no_progress


@torch.no_grad()
def separate(model: nn.Module, mix: torch.Tensor, segment: int, overlap: float = 0.25,
             batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``mix`` (C, T) -> estimates (S, C, T). Chunks of ``segment`` samples overlap by ``overlap``
    and are cross-faded with a triangular window, as Demucs' ``apply_model`` does."""
    channels, length = mix.shape
    stride = max(1, int(segment * (1 - overlap)))
    starts = list(range(0, max(length - segment, 0) + 1, stride))
    if starts[-1] + segment < length:
        starts.append(length - segment if length > segment else 0)
    ramp = torch.arange(1, segment // 2 + 1, device=mix.device, dtype=mix.dtype)
    window = torch.cat([ramp, ramp.flip(0)])[:segment] if segment > 1 else torch.ones(1)
    window = torch.nn.functional.pad(window, (0, segment - window.numel()), value=float(window[-1]))
    out = weight = None
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        chunks = torch.stack([torch.nn.functional.pad(mix[:, s:s + segment], (0, max(0, s + segment - length)))
                              for s in group])
        est = model(chunks)  # (B, S, C, segment)
        if out is None:
            out = mix.new_zeros(est.shape[1], channels, length)
            weight = mix.new_zeros(length)
        for s, e in zip(group, est):
            n = min(segment, length - s)
            out[..., s:s + n] += e[..., :n] * window[:n]
            weight[s:s + n] += window[:n]
        if progress:
            progress(min(i + batch_size, len(starts)), len(starts))
    return out / weight.clamp_min(1e-8)


def masked_mse(estimates: torch.Tensor, targets: torch.Tensor, q: float) -> torch.Tensor:
    """MSST's default training loss (its ``masked_loss`` with ``coarse_loss_clip``): the MSE of each
    (source, item) of a (B, S, C, T) batch; per source, the items whose error is at or above the
    batch's ``q``-quantile count as 0, so a few badly mixed segments do not steer the step."""
    errors = ((estimates - targets) ** 2).mean(dim=(-2, -1)).transpose(0, 1)  # (S, B)
    cut = torch.quantile(errors.detach(), q, dim=1, keepdim=True)
    return (errors * (errors < cut)).mean()


def evaluate_tracks(model: nn.Module, cache, sources: dict, samplerate: int, segment_seconds: float,
                    device: torch.device, max_seconds: float | None = None) -> dict:
    """Whole-track validation: ``valid/loss`` (L1) and nSDR per source and mean, averaged over tracks."""
    from trainables.data.segments import validation_tracks
    from trainables.metrics import nsdr

    model.eval()
    sdrs, losses = [], []
    for _, mix, refs in validation_tracks(cache, sources, max_seconds, samplerate):
        est = separate(model, torch.from_numpy(mix).to(device), int(segment_seconds * samplerate)).cpu()
        ref = torch.from_numpy(refs)
        losses.append(float((est - ref).abs().mean()))
        sdrs.append(nsdr(ref, est))
    per_source = np.mean(np.stack(sdrs), axis=0)
    metrics = {"valid/loss": float(np.mean(losses)), "valid/sdr": float(per_source.mean())}
    metrics.update({f"valid/sdr/{n}": float(v) for n, v in zip(sources, per_source)})
    return metrics


def sources_of(cfg: dict) -> Sources:
    """source -> the stems that sum to it: ``data.sources`` once resolved, else from
    ``model.sources`` and ``data.stems`` (a source is its own stem unless stems say otherwise)."""
    d = cfg["data"]
    if d.get("sources"):
        return normalize_sources(d["sources"])
    stems = d.get("stems") or {}
    return normalize_sources({s: stems.get(s, [s]) for s in cfg["model"]["sources"]})


# data.root: embedded: the rendered corpus (trainables/data/render.py)
EMBEDDED = {
    "preset": Key("techhouse", "the arrangement preset: techhouse or generic"),
    "songs": Key(24, "songs rendered (train + valid)"),
    "seconds": Key(20.0, "seconds per song"),
    "seed": Key(0, "the render's seed"),
    "valid": Key(None, "songs in the valid split (null: a fifth)", type=int),
}


class Separation(Task):
    """Mixture in, one waveform per source out; a dataset is ``train/`` and ``valid/`` folders of
    tracks holding a mixture and stems (``trainables/data/layout.py``), decoded once into a
    memory-mapped cache. Trials report nSDR per source; promotion scores museval's BSSEval v4."""

    name = "separation"
    score = "sdr"
    score_label = "BSSEval v4 SDR"
    score_metric = Metric("max", "dB", "BSSEval v4 SDR: median over 1-s frames, then over tracks; mean over sources")
    default_objective = "valid/sdr"
    options = {
        "model": {
            "sources": Key(REQUIRED, "the sources the adapted model separates, in output order", type=ANY,
                           rule=lambda v: isinstance(v, list) and v and all(isinstance(s, str) for s in v),
                           expect="a non-empty list of source names"),
            "parents": Key({}, "a source the base lacks -> the base source its new head starts from", free=True,
                           rule=lambda v: isinstance(v, str), expect="a source name of the base"),
        },
        "data": {
            "embedded": EMBEDDED,
            "stems": Key({}, "a source -> the stem file(s) that make it (default: its own name)", free=True,
                         rule=lambda v: isinstance(v, str) or (isinstance(v, list) and v and
                                                               all(isinstance(x, str) and x for x in v)),
                         expect="a stem name or a list of stem names"),
            "segment": Key(3.0, "seconds per training segment and per inference chunk", rule=lambda v: v > 0,
                           expect="seconds > 0"),
            "tolerance_db": Key(30.0, "the mixture minus the sum of its stems must be this many dB below the mixture",
                                rule=lambda v: v > 0, expect="dB > 0"),
        },
        "train": {
            "loss": Key("l1", "l1 (Demucs' loss) or msst_masked (MSST's default for SCNet: MSE per source and item, "
                              "the items at or above train.loss_quantile dropped)",
                        rule=lambda v: v in ("l1", "msst_masked"), expect="l1 or msst_masked"),
            "loss_quantile": Key(0.95, "msst_masked: the quantile of a batch's per-item errors that is dropped "
                                       "(MSST's training.q)", rule=lambda v: 0 < v <= 1, expect="0 < q <= 1"),
        },
        "registry": {"holdout": {"embedded": {**EMBEDDED, "songs": Key(4, "songs rendered"),
                                              "seconds": Key(12.0, "seconds per song"),
                                              "seed": Key(1000, "the render's seed (no search uses it)")}}},
    }

    def metrics(self, cfg: dict) -> dict[str, Metric]:
        out = {"train/loss": Metric("min", "", "train.loss between estimated and reference waveforms, training "
                                               "batches"),
               "valid/loss": Metric("min", "", "L1 between estimated and reference waveforms, whole valid tracks"),
               "valid/sdr": Metric("max", "dB", "nSDR (energy ratio over a whole track), mean over sources")}
        for s in cfg["model"].get("sources") or []:
            out[f"valid/sdr/{s}"] = Metric("max", "dB", f"nSDR of {s}")
        return out

    def check_config(self, cfg: dict) -> None:
        if cfg["train"]["loss"] == "msst_masked" and cfg["train"]["batch_size"] < 2:
            raise RankhouseError("train.loss: msst_masked drops each batch's worst items, which with "
                                 "train.batch_size 1 is every item; use batch_size >= 2 or loss l1")
        sources = cfg["model"]["sources"]
        unknown = sorted(set(cfg["data"].get("stems") or {}) - set(sources))
        if unknown:
            raise RankhouseError(f"data.stems.{unknown[0]}: not one of model.sources ({', '.join(sources)})")

    def resolve(self, cfg: dict) -> None:
        cfg["data"]["sources"] = sources_of(cfg)

    def embedded(self, section: dict, progress: ProgressFactory = no_progress) -> Path:
        from trainables.data.render import embedded_corpus

        return embedded_corpus(section["preset"], section["songs"], section["seconds"], section["seed"],
                               section.get("valid"), progress=progress(f"render {section['preset']}"))

    def base_study(self, preset: str) -> dict:
        """4 sources, drums = kick + hihat; validation on each track's first 12 s while training."""
        corpus = {"generic": {"songs": 60, "seconds": 24.0, "seed": 1},
                  "techhouse": {"songs": 24, "seconds": 20.0, "seed": 0}}[preset]  # techhouse: search_spaces/techhouse.yaml's
        return {"model": {"sources": ["drums", "bass", "other", "vocals"]},
                "data": {"embedded": {"preset": preset, **corpus}, "stems": {"drums": ["kick", "hihat"]},
                         "segment": 3.0},
                "train": {"valid_max_seconds": 12.0}}

    def check(self, cfg: dict, progress: ProgressFactory = no_progress) -> None:
        from trainables.data import check

        d = cfg["data"]
        root, sources = Path(d["root"]), sources_of(cfg)
        problems = check.check_dataset(root, sources, d["segment"], d["tolerance_db"], progress=progress("check"))
        for p in problems:
            print(f"{root}: {p}", file=sys.stderr)
        bad = check.errors(problems)
        if bad:
            raise RankhouseError(f"{root}: {len(bad)} dataset error(s) (listed above); fix them and run "
                                 f"python -m platform.data check {root} --sources {','.join(stems_of(sources))} "
                                 f"--segment {d['segment']:g} --tolerance-db {d['tolerance_db']:g}")

    def prepare(self, cfg: dict, base, progress: ProgressFactory = no_progress) -> None:
        d = cfg["data"]
        d["cache"] = {split: str(self._cache(cfg, base.samplerate, split, progress)) for split in ("train", "valid")}

    @staticmethod
    def _cache(cfg: dict, samplerate: int, split: str, progress: ProgressFactory) -> Path:
        d = cfg["data"]
        path = (d.get("cache") or {}).get(split)
        if path and Path(path).is_file():
            return Path(path)
        # e.g. a node the driver's preflight did not run on: decode here
        return cache.build(d["root"], split, stems_of(sources_of(cfg)), samplerate,
                           d.get("cache_dir"), progress=progress(f"cache {split}"))

    def open(self, cfg: dict, base, split: str, progress: ProgressFactory = no_progress) -> cache.StemCache:
        return cache.StemCache(self._cache(cfg, base.samplerate, split, progress))

    def batches(self, data: cache.StemCache, cfg: dict, base, seed: int):
        from trainables.data.segments import Augment, SegmentSampler

        augment = Augment() if cfg["train"]["augment"] else Augment.off()
        return SegmentSampler(data, sources_of(cfg),
                              int(cfg["data"]["segment"] * base.samplerate), seed, augment)

    def loss(self, model: nn.Module, batch: tuple, cfg: dict) -> torch.Tensor:
        """``train.loss`` on waveforms: L1 (Demucs'), or MSST's default (``msst_masked``)."""
        mix, targets = batch
        estimates = model(mix)
        if cfg["train"]["loss"] == "l1":
            return (estimates - targets).abs().mean()
        return masked_mse(estimates, targets, cfg["train"]["loss_quantile"])

    def evaluate(self, model: nn.Module, data: cache.StemCache, cfg: dict, base, device: torch.device) -> dict:
        return evaluate_tracks(model, data, sources_of(cfg), base.samplerate,
                               float(cfg["data"]["segment"]), device, cfg["train"]["valid_max_seconds"])

    def preview(self, model: nn.Module, data: cache.StemCache, cfg: dict, base, metrics: dict, folder: Path,
                device: torch.device) -> bool:
        from trainables import previews

        previews.write_excerpt(model, data, sources_of(cfg), base.samplerate,
                               float(cfg["data"]["segment"]), device, folder)
        previews.sdr_bar_chart(metrics, folder / previews.CHART)
        return True

    def manifest(self, cfg: dict, base) -> dict:
        return {"sources": {n: list(stems) for n, stems in sources_of(cfg).items()},
                "samplerate": int(base.samplerate), "segment": float(cfg["data"]["segment"])}

    def example_input(self, info: dict, seconds: float = 2.0) -> torch.Tensor:
        """A fixed stereo batch: seeded noise under a decaying tone, so every band is excited."""
        g = torch.Generator().manual_seed(0)
        n = int(seconds * info["samplerate"])
        t = torch.arange(n) / info["samplerate"]
        tone = 0.3 * torch.sin(2 * torch.pi * 110 * t) * torch.exp(-t)
        return (0.1 * torch.randn(1, 2, n, generator=g) + tone).float()

    def outputs(self, info: dict) -> list[str]:
        return list(info["sources"])

    def open_holdout(self, info: dict, root: Path, split: str,
                     progress: ProgressFactory = no_progress) -> cache.StemCache:
        path = cache.build(root, split, stems_of(normalize_sources(info["sources"])), int(info["samplerate"]),
                           progress=progress("cache holdout"))
        return cache.StemCache(path)

    def score_holdout(self, models: dict[str, nn.Module], data: cache.StemCache, info: dict,
                      max_seconds: float | None, workers: int | None,
                      progress: ProgressFactory = no_progress) -> dict[str, dict[str, float]]:
        """museval's BSSEval v4 SDR of each model's separations of every holdout track, all
        scored in one pool of processes."""
        from trainables import bsseval
        from trainables.data.segments import validation_tracks

        sources = normalize_sources(info["sources"])
        samplerate, segment = int(info["samplerate"]), float(info["segment"])
        tracks = list(validation_tracks(data, sources, max_seconds, samplerate))
        jobs = []
        for label, model in models.items():
            show = progress(f"separate {label}")
            for i, (_, mix, refs) in enumerate(tracks):
                est = separate(model, torch.from_numpy(mix), int(segment * samplerate)).numpy()
                jobs.append((refs.astype(np.float64), est.astype(np.float64)))
                show(i + 1, len(tracks))
        started = time.perf_counter()
        per_track, cpu_seconds = bsseval.score(jobs, samplerate, workers, progress("museval"))
        audio_seconds = sum(j[0].shape[-1] for j in jobs) / samplerate
        print(f"museval: {len(jobs)} tracks, {audio_seconds:.0f} s of audio, {cpu_seconds:.0f} s of CPU "
              f"({cpu_seconds / audio_seconds:.1f} s per second of audio), {time.perf_counter() - started:.0f} s wall")
        n = len(tracks)
        return {label: bsseval.aggregate(per_track[i * n:(i + 1) * n], list(sources))
                for i, label in enumerate(models)}
