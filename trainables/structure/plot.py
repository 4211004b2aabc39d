"""One picture of a track's analysis: its spectrogram, the boundary curve with the picked
boundaries, the predicted sections and, given a reference, the annotated ones. Trials log it
for the first valid track; ``platform.analyze`` writes it for every file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.data.compose import LABELS

COLORS = {"intro": "#7f9fbf", "buildup": "#e0a030", "drop": "#d04040", "breakdown": "#50a070", "outro": "#8070b0"}


def spans(ax, times, labels, duration: float, y: float, title: str) -> None:
    ends = list(times[1:]) + [duration]
    for start, end, label in zip(times, ends, labels):
        ax.barh(y, end - start, left=start, height=0.8, color=COLORS[label], edgecolor="white")
        if end - start > duration / 40:
            ax.text((start + end) / 2, y, label, ha="center", va="center", fontsize=7, color="white")
    ax.text(-duration * 0.01, y, title, ha="right", va="center", fontsize=8)


def analysis_png(path: Path, audio: np.ndarray, samplerate: int, fps: float, boundary: np.ndarray,
                 picked: np.ndarray, sections: tuple[np.ndarray, list[str]],
                 reference: tuple[np.ndarray, list[str]] | None = None, title: str = "") -> Path:
    """``audio`` mono float; ``boundary`` the per-frame boundary probability; ``picked`` the
    boundary times; ``sections``/``reference``: (start times, labels)."""
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    duration = len(audio) / samplerate
    mel = librosa.power_to_db(librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=samplerate,
                                                             n_mels=64, hop_length=512), ref=np.max)
    fig, axes = plt.subplots(3, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.5, 1]})
    axes[0].imshow(mel, origin="lower", aspect="auto", extent=[0, duration, 0, mel.shape[0]], cmap="magma")
    axes[0].set_ylabel("mel band")
    axes[0].set_title(title, fontsize=9)
    t = np.arange(len(boundary)) / fps
    axes[1].plot(t, boundary, color="black", linewidth=0.8, label="boundary probability")
    for b in picked:
        axes[1].axvline(b, color="red", linewidth=1.0)
    if reference is not None:
        for b in reference[0][1:]:
            axes[1].axvline(b, color="green", linestyle="--", linewidth=1.0)
    axes[1].set_ylim(0, 1.02)
    axes[1].set_ylabel("boundary")
    spans(axes[2], sections[0], sections[1], duration, 1.0, "predicted")
    if reference is not None:
        spans(axes[2], reference[0], reference[1], duration, 0.0, "annotated")
    axes[2].set_yticks([])
    axes[2].set_xlim(0, duration)
    axes[2].set_xlabel("seconds" + ("  (red: picked boundaries; green dashed: annotated)" if reference is not None
                                    else "  (red: picked boundaries)"))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def label_runs(frame_labels: np.ndarray, fps: float, boundaries: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Sections from picked boundaries: each segment between them gets its most frequent frame
    label (so sections always change at a picked boundary)."""
    edges = np.concatenate([[0.0], np.sort(boundaries), [len(frame_labels) / fps]])
    times, labels = [], []
    for start, end in zip(edges[:-1], edges[1:]):
        seg = frame_labels[int(round(start * fps)):max(int(round(start * fps)) + 1, int(round(end * fps)))]
        times.append(float(start))
        labels.append(LABELS[int(np.bincount(seg, minlength=len(LABELS)).argmax())])
    return np.asarray(times), labels
