"""The latent the tiny bases generate: a fixed, normalised log-mel spectrogram.

ACE-Step generates in its VAE's latent space; a VAE needs hub weights or days of training, so
the embedded bases use a latent that needs neither: mono audio at 22.05 kHz, a 1024-point STFT
with a hop of 512 (43 frames a second), 64 mel bands from 20 Hz to 11.025 kHz, the natural log
of the power (floored at 1e-5), mapped by ``(log - OFFSET) / SCALE`` to roughly unit variance
on rendered music. It is the same for every model (nothing is learned), so mel clips are
computed once per dataset and cached. Back to audio: the inverse mel filter bank and 32
Griffin-Lim iterations (``librosa.feature.inverse.mel_to_audio``): a preview, not a vocoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class MelLatent:
    samplerate: int = 22050
    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 64
    fmin: float = 20.0
    offset: float = -5.0  # log power around which rendered music sits
    scale: float = 3.0
    floor: float = 1e-5

    image_limit = 2.2  # drawn from -2.2 to 2.2: rendered music's range
    axis = "mel band"

    @property
    def channels(self) -> int:
        return self.n_mels

    @property
    def fps(self) -> float:
        return self.samplerate / self.hop

    @property
    def spec(self) -> dict:
        return asdict(self)

    @property
    def silence(self) -> float:
        """The latent value of silence (the floor): what pads a clip shorter than a crop."""
        return float((np.log(self.floor) - self.offset) / self.scale)

    def frames(self, seconds: float) -> int:
        """Latent frames in ``seconds`` (at least 2: one patch of the transformer)."""
        return max(2, int(round(seconds * self.fps)))

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Float audio at ``samplerate``, (samples,) or (channels, samples) mixed to mono ->
        (frames, n_mels) float32 latent."""
        import librosa

        audio = np.asarray(audio, dtype=np.float32)
        mel = librosa.feature.melspectrogram(y=audio.mean(axis=0) if audio.ndim == 2 else audio, sr=self.samplerate,
                                             n_fft=self.n_fft, hop_length=self.hop, n_mels=self.n_mels,
                                             fmin=self.fmin, fmax=self.samplerate / 2, power=2.0)
        return ((np.log(np.maximum(mel, self.floor)) - self.offset) / self.scale).T.astype(np.float32)

    def decode(self, latent: np.ndarray, iterations: int = 32, seed: int = 0) -> np.ndarray:
        """(frames, n_mels) latent -> mono float32 audio: magnitudes through the mel filter bank's
        pseudo-inverse (non-negative), then Griffin-Lim from a seeded random phase."""
        import librosa

        mel = np.exp(np.asarray(latent, dtype=np.float64).T * self.scale + self.offset)
        magnitude = np.sqrt(np.maximum(self._inverse() @ mel, 0.0))
        audio = librosa.griffinlim(magnitude, n_iter=iterations, hop_length=self.hop, n_fft=self.n_fft,
                                   init="random", random_state=int(seed))
        peak = float(np.abs(audio).max()) if audio.size else 0.0
        return (audio / max(peak, 1.0)).astype(np.float32)

    def _inverse(self) -> np.ndarray:
        import librosa

        bank = librosa.filters.mel(sr=self.samplerate, n_fft=self.n_fft, n_mels=self.n_mels, fmin=self.fmin,
                                   fmax=self.samplerate / 2)
        return np.linalg.pinv(bank)
