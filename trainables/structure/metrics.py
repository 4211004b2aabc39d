"""From frame activations to events, and the scores ``mir_eval`` gives them.

Peak picking is fixed here, never tuned on a valid split: an event is a frame whose activation
(the head's sigmoid) is at least ``THRESHOLD`` and the largest within ``RADIUS`` seconds on
either side (the earliest of equal neighbours). The radii follow the events' spacing: sections
last at least 4 bars (over 7 s at 130 bpm), bars about 2 s, beats about 0.5 s.

Scores, per track, then averaged over tracks:
- ``boundary_f05`` / ``boundary_f3``: ``mir_eval.segment.detection`` at +-0.5 s and +-3 s with
  ``trim=True``: the track's start and end are not boundaries;
- ``beat_f`` / ``downbeat_f``: ``mir_eval.beat.f_measure`` (+-70 ms) after
  ``mir_eval.beat.trim_beats`` (events in the first 5 s are ignored, as mir_eval advises);
- ``label_acc``: the share of frames whose most likely label is the annotated one;
- ``energy_corr``: Pearson's r of predicted and target band energy over frames, mean of bands.
"""

from __future__ import annotations

import warnings

import numpy as np

THRESHOLD = 0.3
RADIUS = {"boundary": 2.0, "beat": 0.15, "downbeat": 0.6}


def peaks(activation: np.ndarray, fps: float, radius: float, threshold: float = THRESHOLD) -> np.ndarray:
    """Times (s) of the picked events of a frame activation in [0, 1]."""
    r = max(1, int(round(radius * fps)))
    kept: list[int] = []
    for i in np.flatnonzero(activation >= threshold):
        lo, hi = max(0, i - r), min(len(activation), i + r + 1)
        if activation[i] < activation[lo:hi].max() or (kept and i - kept[-1] <= r):
            continue
        kept.append(int(i))
    return np.asarray(kept, dtype=float) / fps


def intervals(boundaries: np.ndarray, duration: float) -> np.ndarray:
    inner = np.sort(boundaries[(boundaries > 0) & (boundaries < duration)])
    edges = np.concatenate([[0.0], inner, [duration]])
    return np.stack([edges[:-1], edges[1:]], axis=1)


def boundary_f(reference: np.ndarray, estimate: np.ndarray, duration: float, window: float) -> float:
    """F-measure of estimated boundary times against the reference ones (both inside the track)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mir_eval warns on an empty estimate: its F is 0, as it should be
        import mir_eval

        return float(mir_eval.segment.detection(intervals(reference, duration), intervals(estimate, duration),
                                                window=window, trim=True)[2])


def beat_f(reference: np.ndarray, estimate: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mir_eval

        return float(mir_eval.beat.f_measure(mir_eval.beat.trim_beats(np.asarray(reference, float)),
                                             mir_eval.beat.trim_beats(np.asarray(estimate, float))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over columns of Pearson's r; a constant column counts as 0."""
    rs = []
    for x, y in zip(np.atleast_2d(a.T), np.atleast_2d(b.T)):
        if x.std() < 1e-8 or y.std() < 1e-8:
            rs.append(0.0)
        else:
            rs.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(rs))


def score_track(outputs: dict[str, np.ndarray], ann, fps: float, labels: np.ndarray, energy: np.ndarray | None,
                heads: set[str]) -> dict[str, float]:
    """One track's scores from its per-frame ``outputs`` (probabilities; ``label``: (T, classes)),
    for the heads that are on."""
    out = {}
    if "boundary" in heads:
        est = peaks(outputs["boundary"], fps, RADIUS["boundary"])
        out["boundary_f05"] = boundary_f(ann.boundaries, est, ann.duration, 0.5)
        out["boundary_f3"] = boundary_f(ann.boundaries, est, ann.duration, 3.0)
    if "beat" in heads:
        out["beat_f"] = beat_f(ann.beats, peaks(outputs["beat"], fps, RADIUS["beat"]))
    if "downbeat" in heads:
        out["downbeat_f"] = beat_f(ann.downbeats, peaks(outputs["downbeat"], fps, RADIUS["downbeat"]))
    if "label" in heads:
        out["label_acc"] = float((outputs["label"].argmax(axis=1) == labels).mean())
    if "energy" in heads and energy is not None:
        out["energy_corr"] = correlation(outputs["energy"], energy)
    return out
