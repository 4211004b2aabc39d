"""A track analysed by a structure model, and the files ``platform.analyze`` writes for it:

- ``<name>.yaml``: the annotation in the EDM trainer's format (``metadata``, ``audio``:
  file, duration, bpm, downbeat, time_signature; ``structure``: bar, label, time, confidence),
  plus the beat and downbeat times;
- ``<name>.beats.txt``: one beat per line, ``time<TAB>position in the bar`` (1 on a downbeat);
- ``<name>.png``: ``plot.analysis_png``.

bpm is 60 over the median interval of the picked beats; the downbeat is the first picked
downbeat; a section's bar is counted from it; its confidence is the boundary probability at
its start (1.0 for the first section).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from trainables.structure import plot
from trainables.structure.metrics import RADIUS, peaks
from trainables.structure.task import split_outputs


@dataclass
class Analysis:
    duration: float
    fps: float
    probs: dict[str, np.ndarray]  # per frame: boundary, beat, downbeat (T,), energy (T, 3), label (T, classes)
    boundaries: np.ndarray
    beats: np.ndarray
    downbeats: np.ndarray
    sections: tuple[np.ndarray, list[str]]

    @property
    def bpm(self) -> float | None:
        return float(60.0 / np.median(np.diff(self.beats))) if len(self.beats) > 2 else None


@torch.no_grad()
def analyse(model: nn.Module, audio: np.ndarray, samplerate: int, hop: int,
            device: torch.device = torch.device("cpu")) -> Analysis:
    """``audio``: mono float32 at the model's ``samplerate``."""
    model.eval()
    logits = model(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None].to(device)).float().cpu()[0]
    probs = {k: v.numpy() for k, v in split_outputs(logits).items()}
    probs["label"] = torch.softmax(torch.from_numpy(probs["label"]), dim=-1).numpy()
    fps = samplerate / hop
    boundaries = peaks(probs["boundary"], fps, RADIUS["boundary"])
    sections = plot.label_runs(probs["label"].argmax(axis=1), fps, boundaries)
    return Analysis(len(audio) / samplerate, fps, probs, boundaries, peaks(probs["beat"], fps, RADIUS["beat"]),
                    peaks(probs["downbeat"], fps, RADIUS["downbeat"]), sections)


def annotation(a: Analysis, audio_file: str) -> dict:
    """The analysis in the EDM trainer's annotation format."""
    bpm = a.bpm
    downbeat = float(a.downbeats[0]) if len(a.downbeats) else (float(a.beats[0]) if len(a.beats) else 0.0)
    bar = 4 * 60.0 / bpm if bpm else None
    structure = []
    for t, label in zip(*a.sections):
        frame = min(int(round(t * a.fps)), len(a.probs["boundary"]) - 1)
        structure.append({"bar": int(np.floor((t - downbeat) / bar + 1e-6)) + 1 if bar else None, "label": label,
                          "time": round(float(t), 3),
                          "confidence": 1.0 if t == 0 else round(float(a.probs["boundary"][frame]), 3)})
    return {"metadata": {"generator": "rankhouse platform.analyze"},
            "audio": {"file": audio_file, "duration": round(a.duration, 3), "bpm": round(bpm, 2) if bpm else None,
                      "downbeat": round(downbeat, 3), "time_signature": [4, 4]},
            "structure": structure,
            "beats": [round(float(b), 3) for b in a.beats], "downbeats": [round(float(b), 3) for b in a.downbeats]}


def beats_text(a: Analysis) -> str:
    lines, position = [], 0
    for b in a.beats:
        on_downbeat = len(a.downbeats) > 0 and np.abs(a.downbeats - b).min() <= 1.5 / a.fps
        position = 1 if on_downbeat else position + 1
        lines.append(f"{b:.3f}\t{position}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_outputs(a: Analysis, audio: np.ndarray, samplerate: int, source: Path, folder: Path,
                  reference: tuple[np.ndarray, list[str]] | None = None) -> list[Path]:
    """The three files for ``source`` in ``folder``; each written whole (temporary name, then renamed)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = source.stem
    out = [folder / f"{stem}.yaml", folder / f"{stem}.beats.txt", folder / f"{stem}.png"]
    tmp = [folder / f".{stem}.tmp.yaml", folder / f".{stem}.tmp.txt", folder / f".{stem}.tmp.png"]
    tmp[0].write_text(yaml.safe_dump(annotation(a, source.name), sort_keys=False))
    tmp[1].write_text(beats_text(a))
    plot.analysis_png(tmp[2], audio, samplerate, a.fps, a.probs["boundary"], a.boundaries, a.sections, reference,
                      title=source.name)
    for t, p in zip(tmp, out):
        t.replace(p)
    return out
