"""The EDM structure trainer's annotation YAML, read and checked.

A file (the trainer's documented format)::

    metadata: {tier: 1, confidence: 0.95}
    audio: {file: /music/track.flac, duration: 240.0, bpm: 128.0, downbeat: 0.0, time_signature: [4, 4]}
    structure:
      - {bar: 1, label: intro, time: 0.0, confidence: 1.0}
      - {bar: 17, label: buildup, time: 30.0, confidence: 0.9}

Optional ``beats`` and ``downbeats`` (lists of seconds) are read when present. Without them
the beat grid is derived as the trainer does, from ``bpm`` and ``downbeat``, and ``Annotation.
beats_from`` says which. A dataset is a folder of such files: ``train/`` and ``valid/``
subfolders, or one flat folder in which every fifth file by name is valid (the trainer's 80/20
split, made deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from trainables.data import audio as audio_io
from trainables.data.check import Problem
from trainables.data.compose import LABELS
from trainables.errors import RankhouseError

SPLITS = ("train", "valid")
BPM_TOLERANCE = 0.02  # a bpm more than 2% off the annotated beats' median interval is an error


@dataclass
class Annotation:
    file: Path  # the YAML
    audio: Path
    duration: float  # seconds, from the annotation (the audio's own length is checked against it)
    bpm: float
    downbeat: float
    meter: int  # beats per bar (time_signature's numerator)
    times: np.ndarray  # section start times
    labels: list[str]
    bars: list[int | None]
    beats: np.ndarray
    downbeats: np.ndarray
    beats_from: str  # "annotation" or "bpm"

    @property
    def boundaries(self) -> np.ndarray:
        """Section changes inside the track: the starts after the first (the track's own start
        and end are never boundaries)."""
        return self.times[(self.times > 0) & (self.times < self.duration)]

    def intervals(self) -> np.ndarray:
        """(n, 2) section intervals covering [0, duration], as ``mir_eval.segment`` wants."""
        edges = np.concatenate([[0.0], self.boundaries, [self.duration]])
        return np.stack([edges[:-1], edges[1:]], axis=1)


def grid(bpm: float, downbeat: float, meter: int, duration: float) -> tuple[np.ndarray, np.ndarray]:
    """The trainer's beat grid: beats every 60/bpm s from the downbeat, both ways; a downbeat every ``meter``."""
    period = 60.0 / bpm
    first = downbeat - np.floor(downbeat / period) * period
    beats = np.arange(first, duration, period)
    index = np.rint((beats - downbeat) / period).astype(int)
    return beats, beats[index % meter == 0]


def _field(data: dict, path: str, kind, where: Path):
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RankhouseError(f"{where}: {path}: missing; the trainer's format needs it (see its annotation "
                                 "example)")
        node = node[part]
    if kind is float and isinstance(node, (int, float)) and not isinstance(node, bool):
        return float(node)
    if kind is not float and isinstance(node, kind):
        return node
    raise RankhouseError(f"{where}: {path}: {node!r} is not a {kind.__name__ if kind is not float else 'number'}")


def load(path: Path, audio_dir: Path | None = None) -> Annotation:
    """One annotation file; a missing or malformed field is one error naming the file and field.
    ``audio_dir`` overrides where the audio is (the trainer's ``--audio-dir``): its file name is looked up there."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RankhouseError(f"{path}: not readable YAML ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict):
        raise RankhouseError(f"{path}: not an annotation (expected a mapping with audio and structure)")
    name = _field(data, "audio.file", str, path)
    audio = Path(audio_dir) / Path(name).name if audio_dir else Path(name).expanduser()
    if not audio.is_absolute():
        audio = path.parent / audio
    bpm = _field(data, "audio.bpm", float, path)
    if not bpm > 0:
        raise RankhouseError(f"{path}: audio.bpm: {bpm:g}; a tempo in beats per minute > 0")
    audio_part = data["audio"]
    downbeat = float(audio_part.get("downbeat") or 0.0)
    signature = audio_part.get("time_signature") or [4, 4]
    if not (isinstance(signature, list) and len(signature) == 2 and isinstance(signature[0], int) and signature[0] > 0):
        raise RankhouseError(f"{path}: audio.time_signature: {signature!r}; expected [beats, unit], e.g. [4, 4]")
    sections = _field(data, "structure", list, path)
    if not sections:
        raise RankhouseError(f"{path}: structure: empty; list the sections with their time and label")
    times, labels, bars = [], [], []
    for i, s in enumerate(sections):
        if not isinstance(s, dict):
            raise RankhouseError(f"{path}: structure[{i}]: {s!r} is not a mapping of bar, label, time, confidence")
        times.append(_field(s, "time", float, Path(f"{path}: structure[{i}]")))
        labels.append(_field(s, "label", str, Path(f"{path}: structure[{i}]")))
        bars.append(s.get("bar"))
    duration = audio_part.get("duration")
    duration = float(duration) if isinstance(duration, (int, float)) else None
    ann = Annotation(path, audio, duration or 0.0, bpm, downbeat, int(signature[0]), np.asarray(times, float),
                     labels, bars, np.empty(0), np.empty(0), "bpm")
    if data.get("beats") is not None:
        try:
            ann.beats = np.asarray(data["beats"], dtype=float).reshape(-1)
            ann.downbeats = np.asarray(data.get("downbeats") or ann.beats[::ann.meter], dtype=float).reshape(-1)
        except (TypeError, ValueError):
            raise RankhouseError(f"{path}: beats/downbeats: not lists of seconds") from None
        ann.beats_from = "annotation"
    return ann


def with_audio(ann: Annotation) -> Annotation:
    """Fill in the duration from the audio file when the annotation has none, and the beat
    grid from bpm when it has no beats; the audio must be readable."""
    if not ann.audio.is_file():
        raise RankhouseError(f"{ann.file}: audio.file: {ann.audio}: no such file; fix the path or pass the "
                             "folder that holds it (data.audio_dir)")
    sr, _, frames = audio_io.info(ann.audio)
    length = frames / sr
    if not ann.duration:
        ann.duration = length
    if ann.beats_from == "bpm":
        ann.beats, ann.downbeats = grid(ann.bpm, ann.downbeat, ann.meter, ann.duration)
    return ann


def problems(ann: Annotation) -> list[Problem]:
    """Everything wrong with one (loaded) annotation, each naming the field and the fix."""
    where, out = str(ann.file), []
    err = lambda what, fix: out.append(Problem("error", where, what, fix))
    if not ann.audio.is_file():
        err(f"audio.file: {ann.audio}: no such file", "fix the path, or give the folder that holds the audio "
            "(data.audio_dir, the trainer's --audio-dir)")
        return out
    try:
        sr, _, frames = audio_io.info(ann.audio)
        if sr <= 0 or frames <= 0:
            raise RankhouseError(f"{ann.audio}: unreadable audio (no samples)")
    except RankhouseError as exc:
        err(f"audio.file: {exc}", "re-export it as WAV, FLAC or MP3")
        return out
    length = frames / sr
    if ann.duration and abs(ann.duration - length) > 1.0:
        err(f"audio.duration: {ann.duration:g} s but the audio lasts {length:.1f} s",
            "fix audio.duration, or check that audio.file is the annotated track")
    for i, label in enumerate(ann.labels):
        if label not in LABELS:
            err(f"structure[{i}].label: {label!r} is not a known label", f"use one of {', '.join(LABELS)}")
    steps = np.diff(ann.times)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0]) + 1
        err(f"structure[{i}].time: {ann.times[i]:g} s does not come after {ann.times[i - 1]:g} s",
            "list the sections in time order, each starting after the one before")
    if (ann.times < 0).any():
        err(f"structure: a negative time ({ann.times.min():g} s)", "times are seconds from the track's start")
    past = ann.times >= length
    if past.any():
        i = int(np.flatnonzero(past)[0])
        err(f"structure[{i}].time: {ann.times[i]:g} s is past the audio's end ({length:.1f} s)",
            "fix the time, or check that audio.file is the annotated track")
    if ann.beats_from == "annotation":
        if len(ann.beats) < 2 or (np.diff(ann.beats) <= 0).any():
            err("beats: not at least two increasing times", "list beat times in seconds, in order, or drop the key "
                "to derive beats from audio.bpm")
        else:
            implied = 60.0 / float(np.median(np.diff(ann.beats)))
            if abs(implied - ann.bpm) > BPM_TOLERANCE * ann.bpm:
                err(f"audio.bpm: {ann.bpm:g} disagrees with the annotated beats ({implied:.1f} bpm from their "
                    "median interval)", "fix audio.bpm or the beats")
    return out


def files(root: Path) -> dict[str, list[Path]]:
    """split -> annotation files: ``train/`` and ``valid/`` subfolders, or a flat folder whose
    every fifth file (by name) is valid."""
    root = Path(root)
    if not root.is_dir():
        raise RankhouseError(f"{root}: no such folder; data.root is a folder of annotation YAML files")
    found = lambda d: sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    if all((root / s).is_dir() for s in SPLITS):
        out = {s: found(root / s) for s in SPLITS}
    else:
        flat = found(root)
        out = {"train": [p for i, p in enumerate(flat) if i % 5 != 4], "valid": flat[4::5]}
    for split, listed in out.items():
        if not listed:
            raise RankhouseError(f"{root}: no annotation files for the {split} split; add .yaml files "
                                 "(train/ and valid/ subfolders, or at least 5 files in one folder)")
    return out
