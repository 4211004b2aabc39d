"""Listening and looking material for a trial's best epoch: a short separated excerpt and a chart.

Metrics say how good a separation is; an ear says what is wrong with it (bleeding hats in the
bass, a phasey vocal). So at its best epoch a trial logs, under ``preview/`` of its MLflow run,
a few seconds of the first validation track: the mixture, the model's estimate of each source
and the reference stems, plus a bar chart of the epoch's nSDR per source. Every trial previews
the same excerpt (the loudest window of the first valid track), so trials can be compared by ear.

Data plane: runs in Ray workers (rank 0 only), so it lives in ``trainables`` and must stay cheap
(well under a second for the tiny model on a CPU) and never touch the training state.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from trainables.data.cache import StemCache
from trainables.data.layout import MIXTURE, Sources
from trainables.data.segments import source_audio
from trainables.separation import separate

CHART = "sdr_per_source.png"
REFERENCE = "reference"  # subfolder of the reference stems
INFO = "excerpt.json"
SDR_PREFIX = "valid/sdr/"
HOP_SECONDS = 0.25  # resolution of the search for the loudest window


def loudest_window(mix: np.ndarray, frames: int, hop: int) -> int:
    """Start frame of the ``frames``-long window of ``mix`` (C, T) with the most energy, on a
    ``hop`` grid: a loud part has every source playing, the quiet intro of a track may have one.

    Energy is summed per hop-sized block first, so a long track costs one pass and no copy."""
    total = mix.shape[1]
    if total <= frames:
        return 0
    blocks = total // hop
    per_block = np.einsum("cbh,cbh->b", mix[:, :blocks * hop].reshape(mix.shape[0], blocks, hop),
                          mix[:, :blocks * hop].reshape(mix.shape[0], blocks, hop), dtype=np.float64)
    width = max(1, frames // hop)
    sums = np.convolve(per_block, np.ones(width), mode="valid")  # energy of the window starting at block i
    last_start = (total - frames) // hop  # windows that fit entirely
    best = int(np.argmax(sums[:last_start + 1]))
    return best * hop


def _write_wav(path: Path, audio: np.ndarray, samplerate: int) -> None:
    # 16-bit keeps a preview small (~86 KB per stereo second at 22.05 kHz); clip first, libsndfile
    # would otherwise wrap estimates above full scale into loud clicks
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, samplerate, subtype="PCM_16")


def write_excerpt(model: torch.nn.Module, valid_cache: StemCache, sources: Sources, samplerate: int,
                  segment_seconds: float, device: torch.device, folder: Path, seconds: float = 6.0,
                  references: bool = True) -> list[Path]:
    """Separate ``seconds`` of the first valid track and write 16-bit WAVs at ``samplerate`` into
    ``folder``: ``mixture.wav``, ``<source>.wav`` (the estimates), ``reference/<source>.wav`` (if
    ``references``) and ``excerpt.json`` (which track and where). Returns the files written.

    ``model`` must be the unwrapped model: a DDP wrapper would wait for the other ranks."""
    folder = Path(folder)
    frames = int(round(seconds * samplerate))
    hop = max(1, int(HOP_SECONDS * samplerate))
    track = valid_cache.track(0, MIXTURE)  # a zero-copy view: only the window is copied below
    start = loudest_window(track, frames, hop)
    stop = min(track.shape[1], start + frames)
    mix = np.array(track[:, start:stop], dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        # eval-mode HT-Demucs draws no random numbers, but the loop's checkpoint has already saved
        # the RNG state: forking it makes sure a resumed trial can never differ from a straight one
        with torch.random.fork_rng(devices=[]):
            est = separate(model, torch.from_numpy(mix).to(device), int(segment_seconds * samplerate)).cpu().numpy()
    finally:
        model.train(was_training)
    written = [folder / f"{MIXTURE}.wav"]
    _write_wav(written[0], mix, samplerate)
    for i, (name, stems) in enumerate(sources.items()):
        written.append(folder / f"{name}.wav")
        _write_wav(written[-1], est[i], samplerate)
        if references:
            written.append(folder / REFERENCE / f"{name}.wav")
            _write_wav(written[-1], source_audio(valid_cache, 0, stems, start, stop), samplerate)
    info = {"track": valid_cache.names[0], "start_s": start / samplerate, "seconds": (stop - start) / samplerate,
            "samplerate": samplerate, "sources": list(sources)}
    written.append(folder / INFO)
    written[-1].write_text(json.dumps(info, indent=1))
    return written


def sdr_bar_chart(metrics: dict, path: Path) -> Path:
    """A PNG bar chart of ``valid/sdr/<source>`` in ``metrics`` (mean as a dashed line)."""
    per_source = {k.removeprefix(SDR_PREFIX): float(v) for k, v in metrics.items()
                  if k.startswith(SDR_PREFIX) and isinstance(v, (int, float))}
    if not per_source:
        raise ValueError(f"no {SDR_PREFIX}<source> metrics to chart")
    # a Figure without pyplot renders with Agg and touches no global backend state: safe in a
    # headless worker and in a driver that may have an interactive backend of its own
    from matplotlib.figure import Figure

    names, values = list(per_source), list(per_source.values())
    fig = Figure(figsize=(1.2 + 0.9 * len(names), 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    bars = ax.bar(names, finite, color=["#4c72b0" if v >= 0 else "#c44e52" for v in finite])
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.2f}" if math.isfinite(v) else "n/a", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=8)
    mean = metrics.get("valid/sdr")
    if isinstance(mean, (int, float)) and math.isfinite(mean):
        ax.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"mean {mean:.2f} dB")
        ax.legend(fontsize=8, loc="best")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.margins(y=0.15)  # room for the value labels
    ax.set_ylabel("nSDR (dB)")
    epoch = metrics.get("epoch")
    ax.set_title(f"valid nSDR per source{f', epoch {epoch}' if epoch is not None else ''}", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
