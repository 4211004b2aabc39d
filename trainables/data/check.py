"""Check a stem dataset before any compute is spent on it.

Every problem is one line naming split/track/file, what is wrong and how to fix it. Errors
stop a search; warnings (an all-silent stem, a stray file) do not.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from trainables.data import audio as audio_io
from trainables.data.layout import MIXTURE, SPLITS, Sources, find_file, stems_of, tracks
from trainables.errors import RankhouseError

# files that belong in a track folder besides audio
KNOWN_EXTRAS = {"annotations.yaml", "annotations.yml", "annotations.json"}
ROOT_EXTRAS = {"corpus.json"}
EXPECTED_FORMAT = {".wav": "WAV", ".flac": "FLAC", ".mp3": "MP3", ".ogg": "OGG", ".aiff": "AIFF", ".aif": "AIFF"}
CLIP_LEVEL = 0.999  # |x| at or above this, in a run of CLIP_RUN samples, counts as clipping
CLIP_RUN = 3
SILENCE_DB = -80.0


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    where: str  # split/track/file
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.what}; {self.fix}"


def _clipped(x: np.ndarray) -> int:
    """Number of runs of >= CLIP_RUN consecutive samples at full scale, over all channels."""
    hot = np.abs(x) >= CLIP_LEVEL
    runs = 0
    for ch in hot:
        if not ch.any():
            continue
        padded = np.concatenate(([False], ch, [False])).astype(np.int8)
        starts = np.flatnonzero(np.diff(padded) == 1)
        ends = np.flatnonzero(np.diff(padded) == -1)
        runs += int(((ends - starts) >= CLIP_RUN).sum())
    return runs


def _db(num: float, den: float) -> float:
    return 10 * np.log10(max(num, 1e-20) / max(den, 1e-20))


def check_track(track: Path, split: str, stems: list[str], segment_seconds: float | None,
                tolerance_db: float) -> tuple[list[Problem], str | None]:
    """Problems of one track, and a content hash of its mixture (for train/valid leaks)."""
    problems: list[Problem] = []
    where = f"{split}/{track.name}"
    files: dict[str, Path] = {}
    for name in [MIXTURE, *stems]:
        path = find_file(track, name)
        if path is None:
            problems.append(Problem("error", f"{where}/{name}.wav", "missing",
                                    f"add the {name} stem (WAV/FLAC/MP3) or remove the track"))
        else:
            files[name] = path
    for extra in sorted(track.iterdir()):
        stem = extra.stem
        if extra.name in KNOWN_EXTRAS or (extra.suffix.lower() in EXPECTED_FORMAT and stem in files):
            continue
        if extra.suffix.lower() in EXPECTED_FORMAT:
            problems.append(Problem("warning", f"{where}/{extra.name}", "audio file not used by the configured sources",
                                    "add it to a source's stems or move it out of the dataset"))
        else:
            problems.append(Problem("warning", f"{where}/{extra.name}", "not an audio file",
                                    "move it out of the dataset"))
    decoded: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, int, int]] = {}
    for name, path in files.items():
        loc = f"{where}/{path.name}"
        try:
            i = sf.info(str(path))
            fmt = i.format
        except Exception:
            fmt = None
        expected = EXPECTED_FORMAT[path.suffix.lower()]
        if fmt is not None and fmt != expected:
            problems.append(Problem("error", loc, f"extension says {expected} but the content is {fmt}",
                                    f"rename it to {path.stem}.{fmt.lower()} or re-export it as {expected}"))
            continue
        try:
            sr, ch, frames = audio_io.info(path)
            x = audio_io.read(path, samplerate=None, channels=None)
        except RankhouseError:
            problems.append(Problem("error", loc, "unreadable or corrupt audio", "re-export it as WAV or FLAC"))
            continue
        shapes[name] = (sr, x.shape[0], x.shape[1])
        if not np.isfinite(x).all():
            problems.append(Problem("error", loc, f"{int((~np.isfinite(x)).sum())} NaN/inf samples",
                                    "re-export the stem; NaN/inf make the loss NaN"))
            continue
        runs = _clipped(x)
        if runs:
            problems.append(Problem("error", loc, f"clipped ({runs} runs of >= {CLIP_RUN} full-scale samples)",
                                    "re-export with headroom (peak below 0 dBFS)"))
        if name != MIXTURE and x.size and 10 * np.log10(float(np.mean(x.astype(np.float64) ** 2)) + 1e-20) < SILENCE_DB:
            problems.append(Problem("warning", loc, "all-silent stem",
                                    "fine if the instrument is absent; otherwise export the right file"))
        decoded[name] = x
    if shapes:
        ref_name = MIXTURE if MIXTURE in shapes else next(iter(shapes))
        ref = shapes[ref_name]
        for name, (sr, ch, frames) in shapes.items():
            loc = f"{where}/{files[name].name}"
            if sr != ref[0]:
                problems.append(Problem("error", loc, f"sample rate {sr} Hz but {ref_name} is {ref[0]} Hz",
                                        "export every file of a track at one sample rate"))
            elif ch != ref[1] and ch == 1:
                problems.append(Problem("warning", loc, f"mono but {ref_name} has {ref[1]} channels",
                                        "it is used as the same signal on every channel"))
            elif ch != ref[1]:
                problems.append(Problem("error", loc, f"{ch} channel(s) but {ref_name} has {ref[1]}",
                                        "export every file of a track with the same channel count"))
            elif frames != ref[2]:
                problems.append(Problem("error", loc, f"{frames} samples but {ref_name} has {ref[2]} "
                                        f"({(frames - ref[2]) / sr:+.3f} s)", "trim or pad the stems to the mixture's length"))
        if segment_seconds and ref[2] / ref[0] < segment_seconds:
            problems.append(Problem("error", f"{where}/{files[ref_name].name}",
                                    f"{ref[2] / ref[0]:.2f} s long, shorter than one {segment_seconds:g} s training segment",
                                    "use longer tracks or a shorter segment"))
    errors = any(p.severity == "error" for p in problems)
    if not errors and MIXTURE in decoded and all(s in decoded for s in stems):
        mix = decoded[MIXTURE].astype(np.float64)
        residual = mix - sum(decoded[s].astype(np.float64) for s in stems)
        ratio = _db(float(np.sum(residual ** 2)), float(np.sum(mix ** 2)))
        if ratio > -tolerance_db:
            problems.append(Problem("error", f"{where}/{files[MIXTURE].name}",
                                    f"mixture != sum of stems ({', '.join(stems)}): residual {ratio:.1f} dB "
                                    f"relative to the mixture (tolerance -{tolerance_db:g} dB)",
                                    "export stems and mixture from the same session, or list every stem in the sources"))
    # hash of the decoded samples, so a re-encoded copy (WAV -> FLAC, 16 -> 24 bit) is caught too
    digest = hashlib.sha256(decoded[MIXTURE].tobytes()).hexdigest() if MIXTURE in decoded else None
    return problems, digest


def check_dataset(root: Path, sources: Sources, segment_seconds: float | None = None,
                  tolerance_db: float = 30.0, progress=None) -> list[Problem]:
    """All problems of the dataset at ``root`` for a model with these ``sources``."""
    root = Path(root)
    if not root.is_dir():
        return [Problem("error", str(root), "no such directory", "pass the dataset root holding train/ and valid/")]
    problems: list[Problem] = []
    stems = stems_of(sources)
    seen: dict[str, dict[str, str]] = {}  # split -> track name -> mixture hash
    all_tracks = [(split, t) for split in SPLITS for t in tracks(root, split)]
    for split in SPLITS:
        if not (root / split).is_dir():
            problems.append(Problem("error", f"{split}/", "missing split",
                                    f"create {root / split} with one folder per track"))
        elif not tracks(root, split):
            problems.append(Problem("error", f"{split}/", "no tracks", "add track folders holding mixture + stems"))
    for extra in sorted(root.iterdir()):
        if extra.name not in SPLITS and extra.name not in ROOT_EXTRAS and not extra.name.startswith("."):
            problems.append(Problem("warning", extra.name, "not part of the train/valid layout",
                                    "move it out of the dataset root"))
    for i, (split, track) in enumerate(all_tracks):
        found, digest = check_track(track, split, stems, segment_seconds, tolerance_db)
        problems += found
        if digest:
            seen.setdefault(split, {})[track.name] = digest
        if progress:
            progress(i + 1, len(all_tracks))
    train, valid = seen.get("train", {}), seen.get("valid", {})
    by_hash = {h: n for n, h in train.items()}
    for name, digest in valid.items():
        if name in train:
            problems.append(Problem("error", f"valid/{name}", "the same track name is in train/",
                                    "keep each track in one split only"))
        elif digest in by_hash:
            problems.append(Problem("error", f"valid/{name}", f"identical mixture to train/{by_hash[digest]}",
                                    "keep each track in one split only"))
    return problems


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]
