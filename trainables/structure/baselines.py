"""Baselines that cannot listen, scored on the same valid tracks as every trial.

- **template**: the training split's most common arrangement (its sequence of labels; each
  section's length in bars the median over the training songs with that sequence), laid on each
  valid track from its annotated bpm and downbeat. It knows the tempo, so its beats are the
  annotation's own grid: its beat and downbeat F-measures are a ceiling, not a baseline.
- **majority**: every frame gets the training split's most common label; no boundaries.

A model whose scores do not beat these has not learnt to hear the structure.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from trainables.data.compose import LABELS
from trainables.structure.annotations import Annotation, grid
from trainables.structure.dataset import Track
from trainables.structure.metrics import beat_f, boundary_f


def section_bars(ann: Annotation) -> list[int]:
    """Each section's length in bars, from its times and the annotated tempo."""
    bar = ann.meter * 60.0 / ann.bpm
    ends = np.append(ann.times[1:], ann.duration)
    return [max(1, int(round((e - s) / bar))) for s, e in zip(ann.times, ends)]


def common_arrangement(train: list[Annotation]) -> list[tuple[str, int]]:
    """The most common label sequence of ``train``, with the median bars of each of its sections."""
    sequences = Counter(tuple(a.labels) for a in train)
    labels, _ = max(sequences.items(), key=lambda kv: (kv[1], -len(kv[0])))
    bars = np.array([section_bars(a) for a in train if tuple(a.labels) == labels])
    return [(label, int(np.median(bars[:, i]))) for i, label in enumerate(labels)]


def place(arrangement: list[tuple[str, int]], ann: Annotation) -> tuple[np.ndarray, list[str]]:
    """Section start times and labels of ``arrangement`` on a track of ``ann``'s tempo."""
    bar = ann.meter * 60.0 / ann.bpm
    starts, at = [], ann.downbeat
    for _, n in arrangement:
        starts.append(max(0.0, at))
        at += n * bar
    starts[0] = 0.0
    keep = [i for i, s in enumerate(starts) if s < ann.duration]
    return np.array([starts[i] for i in keep]), [arrangement[i][0] for i in keep]


def frame_labels(times: np.ndarray, labels: list[str], frames: int, fps: float) -> np.ndarray:
    out = np.zeros(frames, dtype=np.int64)
    for t, name in zip(times, labels):
        out[max(0, int(round(t * fps))):] = LABELS.index(name)
    return out


def scores(train: list[Track], valid: list[Track], fps: float, heads: set[str]) -> dict[str, dict[str, float]]:
    """``{"template": metrics, "majority": metrics}`` over the valid tracks, named as trials' metrics."""
    arrangement = common_arrangement([t.ann for t in train])
    counts = np.bincount(np.concatenate([t.targets["label"] for t in train]), minlength=len(LABELS))
    majority = int(counts.argmax())
    rows: dict[str, list[dict]] = {"template": [], "majority": []}
    for track in valid:
        ann, labels = track.ann, track.targets["label"]
        times, names = place(arrangement, ann)
        t: dict[str, float] = {}
        if "boundary" in heads:
            t["valid/boundary_f05"] = boundary_f(ann.boundaries, times, ann.duration, 0.5)
            t["valid/boundary_f3"] = boundary_f(ann.boundaries, times, ann.duration, 3.0)
        beats, downbeats = grid(ann.bpm, ann.downbeat, ann.meter, ann.duration)
        if "beat" in heads:
            t["valid/beat_f"] = beat_f(ann.beats, beats)
        if "downbeat" in heads:
            t["valid/downbeat_f"] = beat_f(ann.downbeats, downbeats)
        if "label" in heads:
            t["valid/label_acc"] = float((frame_labels(times, names, len(labels), fps) == labels).mean())
        rows["template"].append(t)
        m: dict[str, float] = {}
        if "boundary" in heads:
            m["valid/boundary_f05"] = m["valid/boundary_f3"] = 0.0
        if "label" in heads:
            m["valid/label_acc"] = float((labels == majority).mean())
        rows["majority"].append(m)
    return {name: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} for name, rs in rows.items()}
