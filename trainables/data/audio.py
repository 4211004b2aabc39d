"""Read any user audio file as float32 (channels, samples) at the model's rate.

soundfile reads WAV/FLAC/OGG (and MP3 with libsndfile >= 1.1); librosa/audioread is the
fallback for what it cannot read. Resampling uses soxr (VHQ); mono becomes stereo by
duplication, so a model trained in stereo accepts mono stems.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from trainables.errors import RankhouseError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")


def info(path: Path) -> tuple[int, int, int]:
    """(samplerate, channels, frames) without decoding the samples."""
    try:
        i = sf.info(str(path))
        return int(i.samplerate), int(i.channels), int(i.frames)
    except Exception:
        audio, sr = _read_fallback(path)
        return sr, audio.shape[0], audio.shape[1]


def _read_fallback(path: Path) -> tuple[np.ndarray, int]:
    try:
        import librosa

        audio, sr = librosa.load(str(path), sr=None, mono=False)
    except Exception as exc:
        raise RankhouseError(f"{path}: unreadable audio ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                             "re-export it as WAV or FLAC") from None
    return np.atleast_2d(audio).astype(np.float32), int(sr)


def read_native(path: Path) -> tuple[np.ndarray, int]:
    """Decode ``path`` as it is: float32 (channels, samples) and its sample rate."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        return data.T, int(sr)
    except Exception:
        return _read_fallback(path)


def read(path: Path, samplerate: int | None = None, channels: int | None = 2) -> np.ndarray:
    """Decode ``path`` to float32 (channels, samples), resampled to ``samplerate`` if given."""
    audio, sr = read_native(path)
    if channels is not None and audio.shape[0] != channels:
        if audio.shape[0] == 1:
            audio = np.repeat(audio, channels, axis=0)
        else:
            raise RankhouseError(f"{path}: has {audio.shape[0]} channels, the model needs {channels}; "
                                 "downmix or split it first")
    if samplerate is not None and sr != samplerate:
        audio = resample(audio, sr, samplerate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    import soxr

    return soxr.resample(audio.T, source_rate, target_rate, quality="VHQ").T.astype(np.float32)


def write(path: Path, audio: np.ndarray, samplerate: int) -> None:
    """Write float (channels, samples) as 24-bit WAV (headroom for estimates above full scale is clipped)."""
    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, samplerate, subtype="PCM_24")
