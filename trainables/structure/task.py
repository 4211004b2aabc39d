"""Structure analysis, the task of the structure family: audio in; boundaries, beats, downbeats,
band energies and section labels out, frame by frame (``trainables/structure/``).

Losses (each head's weight is ``train.weights.<head>``, searchable; 0 switches the head off,
its loss and its metrics):
- boundary, beat, downbeat: focal binary cross-entropy (gamma 2, positives weighted 0.75),
  summed over frames and divided by the number of event frames, as RetinaNet normalises it;
- energy: the squared error of the sigmoid output, each frame weighted by 1 + its target, the
  "high-energy weighting" the trainer documents and does not do;
- label: cross-entropy per frame.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.cache import default_cache_dir
from trainables.data.compose import LABELS
from trainables.errors import RankhouseError
from trainables.schema import Key
from trainables.structure import annotations, dataset
from trainables.structure.metrics import score_track
from trainables.structure.model import HEADS, head_slices
from trainables.task import Metric, ProgressFactory, Task, no_progress

FOCAL_GAMMA, FOCAL_ALPHA = 2.0, 0.75
WEIGHTS = {"boundary": 1.0, "energy": 0.5, "beat": 0.5, "downbeat": 0.5, "label": 0.3}  # the trainer's defaults
METRICS = {  # name -> (head, doc)
    "valid/boundary_f05": ("boundary", "boundary F-measure at +-0.5 s (mir_eval, track start and end left out)"),
    "valid/boundary_f3": ("boundary", "boundary F-measure at +-3 s"),
    "valid/beat_f": ("beat", "beat F-measure at +-70 ms (mir_eval, first 5 s left out)"),
    "valid/downbeat_f": ("downbeat", "downbeat F-measure at +-70 ms"),
    "valid/label_acc": ("label", "share of frames with the right section label"),
    "valid/energy_corr": ("energy", "Pearson's r of predicted and target band energies"),
}
EMBEDDED = {
    "preset": Key("techhouse", "the arrangement preset: techhouse or generic"),
    "songs": Key(40, "songs rendered (train + valid)"),
    "seconds": Key([30.0, 120.0], "the shortest and longest song, in seconds", type=list,
                   rule=lambda v: len(v) == 2 and 10 <= v[0] <= v[1], expect="[shortest, longest], 10 <= both"),
    "seed": Key(0, "the render's seed"),
    "valid": Key(None, "songs in the valid split (null: a fifth)", type=int),
}


def heads_on(cfg: dict) -> set[str]:
    return {h for h, w in cfg["train"]["weights"].items() if w > 0}


def split_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., T, OUTPUTS) logits -> per head: probabilities (label: logits)."""
    out = {}
    for name, s in head_slices().items():
        part = logits[..., s]
        out[name] = part if name == "label" else torch.sigmoid(part.squeeze(-1) if part.shape[-1] == 1 else part)
    return out


def focal(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = (FOCAL_ALPHA * target + (1 - FOCAL_ALPHA) * (1 - target)) * (target - p).abs() ** FOCAL_GAMMA
    return (weight * bce * mask).sum() / (target * mask).sum().clamp_min(1.0)


def losses(logits: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor,
           weights: dict[str, float]) -> torch.Tensor:
    """The weighted sum of the heads' losses (see the module docstring) over (B, T) frames."""
    s, total = head_slices(), logits.new_zeros(())
    logits = logits.float()
    for name in ("boundary", "beat", "downbeat"):
        if weights[name] > 0:
            total = total + weights[name] * focal(logits[..., s[name]].squeeze(-1), targets[name], mask)
    if weights["energy"] > 0:
        target = targets["energy"]
        err = (torch.sigmoid(logits[..., s["energy"]]) - target) ** 2 * (1 + target)
        total = total + weights["energy"] * (err.mean(-1) * mask).sum() / mask.sum().clamp_min(1.0)
    if weights["label"] > 0:
        ce = F.cross_entropy(logits[..., s["label"]].transpose(1, 2), targets["label"], reduction="none")
        total = total + weights["label"] * (ce * mask).sum() / mask.sum().clamp_min(1.0)
    return total


@torch.no_grad()
def evaluate_tracks(model: nn.Module, tracks: list[dataset.Track], weights: dict[str, float], samplerate: int,
                    hop: int, device: torch.device, max_seconds: float | None = None) -> dict[str, float]:
    """Whole tracks through the model: ``valid/loss`` and every metric of the heads that are on."""
    model.eval()
    heads, fps = {h for h, w in weights.items() if w > 0}, samplerate / hop
    loss, scores = [], []
    for track in tracks:
        frames = track.frames if not max_seconds else min(track.frames, int(max_seconds * fps))
        audio = torch.from_numpy(np.asarray(track.audio[:frames * hop], dtype=np.float32) / 32768.0)
        logits = model(audio[None].to(device)).float().cpu()[0, :frames]
        targets = {k: torch.from_numpy(np.asarray(v[:frames]))[None] for k, v in track.targets.items()}
        loss.append(float(losses(logits[None], targets, torch.ones(1, frames), weights)))
        probs = {k: v.numpy() for k, v in split_outputs(logits).items()}
        ann = track.ann if frames == track.frames else clipped(track.ann, frames / fps)
        scores.append(score_track(probs, ann, fps, track.targets["label"][:frames], track.targets["energy"][:frames],
                                  heads))
    out = {"valid/loss": float(np.mean(loss))}
    out.update({f"valid/{k}": float(np.mean([s[k] for s in scores])) for k in scores[0]})
    return out


def clipped(ann: annotations.Annotation, seconds: float) -> annotations.Annotation:
    """The annotation of a track's first ``seconds``."""
    keep = ann.times < seconds
    return dataclasses.replace(ann, duration=seconds, times=ann.times[keep],
                               labels=[lab for lab, k in zip(ann.labels, keep) if k],
                               beats=ann.beats[ann.beats < seconds], downbeats=ann.downbeats[ann.downbeats < seconds])


class Structure(Task):
    """A dataset is a folder of the EDM trainer's annotation YAML files (``annotations.py``)."""

    name = "structure"
    score = "boundary_f05"
    score_label = "boundary F@0.5s"
    score_metric = Metric("max", "", "boundary F-measure at +-0.5 s (mir_eval), mean over holdout tracks; "
                                     "min_gain is in F-measure (0 to 1)")
    default_objective = "valid/boundary_f05"
    options = {
        "data": {
            "embedded": EMBEDDED,
            "audio_dir": Key(None, "the folder holding the annotated audio files, by file name (the trainer's "
                                   "--audio-dir); null: each annotation's audio.file", type=str),
            "duration": Key(30.0, "seconds per training crop (the trainer's --duration)", rule=lambda v: v >= 4,
                            expect="seconds >= 4"),
        },
        "train": {"weights": {h: Key(w, f"the {h} head's loss weight (0: the head is off)", type=float,
                                     rule=lambda v: v >= 0, expect=">= 0") for h, w in WEIGHTS.items()}},
        "registry": {"holdout": {"embedded": {**EMBEDDED, "songs": Key(6, "songs rendered"),
                                              "seed": Key(1000, "the render's seed (no search uses it)"),
                                              "valid": Key(6, "songs in the split scored", type=int)},
                                 "max_seconds": Key(None, "score at most this much of each track (null: all)", type=float,
                                                    nullable=True, rule=lambda v: v > 0,
                                                    expect="seconds > 0 or null")}},
    }

    def metrics(self, cfg: dict) -> dict[str, Metric]:
        on = heads_on(cfg)
        out = {"train/loss": Metric("min", "", "the weighted sum of the heads' losses, training crops"),
               "valid/loss": Metric("min", "", "the same loss on whole valid tracks")}
        out.update({m: Metric("max", "", doc) for m, (head, doc) in METRICS.items() if head in on})
        return out

    def check_config(self, cfg: dict) -> None:
        if not heads_on(cfg):
            raise RankhouseError("train.weights: every head's weight is 0; switch at least one head on")

    def embedded(self, section: dict, progress: ProgressFactory = no_progress) -> Path:
        from trainables.structure.corpus import embedded_corpus

        return embedded_corpus(section, progress(f"render structure {section['preset']}"))

    def base_study(self, preset: str) -> dict:
        """Whole valid tracks: a boundary F-measure on a track's first seconds says little."""
        corpus = {"generic": {"songs": 120, "seed": 1}, "techhouse": {"songs": 40, "seed": 0}}[preset]
        return {"data": {"embedded": {"preset": preset, "seconds": [30.0, 120.0], **corpus}},
                "train": {"valid_max_seconds": None}}

    @staticmethod
    def _audio_dir(cfg: dict) -> Path | None:
        d = cfg["data"].get("audio_dir")
        return Path(d).expanduser() if d else None

    def check(self, cfg: dict, progress: ProgressFactory = no_progress) -> None:
        root = Path(cfg["data"]["root"])
        found = annotations.files(root)
        problems, beats = [], {"annotation": 0, "bpm": 0}
        show = progress("check")
        listed = [f for split in found.values() for f in split]
        for i, f in enumerate(listed):
            try:
                ann = annotations.load(f, self._audio_dir(cfg))
                beats[ann.beats_from] += 1
                problems += [str(p) for p in annotations.problems(ann)]
            except RankhouseError as exc:
                problems.append(f"error: {exc}")
            show(i + 1, len(listed))
        for p in problems:  # after the progress bar, one line each
            print(p, file=sys.stderr)
        print(f"{root}: {len(found['train'])} train and {len(found['valid'])} valid annotations; beats read from "
              f"the annotation in {beats['annotation']}, derived from bpm and downbeat in {beats['bpm']}",
              file=sys.stderr)
        if problems:
            raise RankhouseError(f"{root}: {len(problems)} annotation error(s) (listed above); fix them and run "
                                 "python -m platform.data check SPACE.yaml")

    def prepare(self, cfg: dict, base, progress: ProgressFactory = no_progress) -> None:
        for split in ("train", "valid"):  # decode once here, not in every trial
            self.open(cfg, base, split, progress)

    def open(self, cfg: dict, base, split: str, progress: ProgressFactory = no_progress) -> list[dataset.Track]:
        d = cfg["data"]
        files = annotations.files(Path(d["root"]))[split]
        cache_dir = Path(d["cache_dir"]) if d.get("cache_dir") else default_cache_dir(Path(d["root"]))
        return dataset.open_split(files, base.samplerate, base.hop, self._audio_dir(cfg), cache_dir,
                                  progress(f"decode {split}"))

    def batches(self, data: list[dataset.Track], cfg: dict, base, seed: int) -> dataset.Crops:
        return dataset.Crops(data, float(cfg["data"]["duration"]), base.samplerate, base.hop, seed)

    def loss(self, model: nn.Module, batch: tuple, cfg: dict) -> torch.Tensor:
        audio, boundary, beat, downbeat, energy, label, mask = batch
        targets = {"boundary": boundary, "beat": beat, "downbeat": downbeat, "energy": energy, "label": label}
        return losses(model(audio), targets, mask, cfg["train"]["weights"])

    def evaluate(self, model: nn.Module, data: list[dataset.Track], cfg: dict, base, device: torch.device) -> dict:
        return evaluate_tracks(model, data, cfg["train"]["weights"], base.samplerate, base.hop, device,
                               cfg["train"]["valid_max_seconds"])

    def baselines(self, cfg: dict, base, valid: list[dataset.Track],
                  progress: ProgressFactory = no_progress) -> dict[str, dict]:
        """The template arrangement and the majority label (``baselines.py``)."""
        from trainables.structure import baselines

        train = self.open(cfg, base, "train", progress)
        return baselines.scores(train, valid, base.samplerate / base.hop, heads_on(cfg))

    def preview(self, model: nn.Module, data: list[dataset.Track], cfg: dict, base, metrics: dict, folder: Path,
                device: torch.device) -> bool:
        """The analysis picture of the first valid track, with its annotation as the reference."""
        from trainables.structure import analysis, plot

        track = data[0]
        audio = np.asarray(track.audio, dtype=np.float32) / 32768.0
        a = analysis.analyse(model, audio, base.samplerate, base.hop, device)
        plot.analysis_png(folder / "structure.png", audio, base.samplerate, a.fps, a.probs["boundary"], a.boundaries,
                          a.sections, (track.ann.times, track.ann.labels), title=track.ann.file.name)
        return True

    def manifest(self, cfg: dict, base) -> dict:
        return {"samplerate": int(base.samplerate), "hop": int(base.hop), "labels": list(LABELS),
                "weights": dict(cfg["train"]["weights"])}

    def outputs(self, info: dict) -> list[str]:
        return [h for h, w in info["weights"].items() if w > 0]

    def example_input(self, info: dict, seconds: float = 8.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return 0.1 * torch.randn(1, int(seconds * info["samplerate"]), generator=g)

    def open_holdout(self, info: dict, root: Path, split: str,
                     progress: ProgressFactory = no_progress) -> list[dataset.Track]:
        files = annotations.files(root)[split]
        return dataset.open_split(files, int(info["samplerate"]), int(info["hop"]), None, default_cache_dir(root),
                                  progress("decode holdout"))

    def score_holdout(self, models: dict[str, nn.Module], data: list[dataset.Track], info: dict,
                      max_seconds: float | None, workers: int | None,
                      progress: ProgressFactory = no_progress) -> dict[str, dict[str, float]]:
        """Each model's boundary F@0.5 s on the holdout tracks, with the other metrics beside it."""
        weights = {h: float(info["weights"].get(h, 0.0)) for h in HEADS}
        out = {}
        for label, model in models.items():
            m = evaluate_tracks(model, data, weights, int(info["samplerate"]), int(info["hop"]),
                                torch.device("cpu"), max_seconds)
            out[label] = {k.removeprefix("valid/"): v for k, v in m.items() if k != "valid/loss"}
        return out
