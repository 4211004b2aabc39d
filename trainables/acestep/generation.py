"""Audio from a prompt: tags -> the model's prompt input (``model.prompt``) -> Euler sampling of
the latent (``flow.sample``) -> audio (Griffin-Lim from the mel latent, or an ACE-Step folder's
VAE). The same model, prompt, length, steps and seed give the same
samples: the noise comes from a generator seeded by ``seed`` and is drawn on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from trainables.acestep import flow


@torch.no_grad()
def generate(model: nn.Module, tags: list[str], seconds: float, latent, shift: float, steps: int,
             guidance: float, seed: int, device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, np.ndarray]:
    """(audio, latent): float32 audio at ``latent.samplerate`` (mono, or (samples, 2) from a VAE)
    and its (frames, channels) latent."""
    model.eval()
    prompt = torch.from_numpy(model.prompt(tags, seconds))[None].to(device)
    z = flow.sample(model, prompt, latent.frames(seconds), steps, shift, guidance, torch.Generator().manual_seed(int(seed)))
    z = z[0].float().cpu().numpy()
    audio = latent.decode(z, seed=int(seed))[: int(round(seconds * latent.samplerate))]
    return audio, z


def mel_png(path: Path, z: np.ndarray, latent, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=100)
    limit = latent.image_limit or max(1e-6, float(np.percentile(np.abs(z), 99)))
    ax.imshow(z.T, origin="lower", aspect="auto", cmap="magma", vmin=-limit, vmax=limit,
              extent=(0, len(z) / latent.fps, 0, latent.channels))
    ax.set_xlabel("seconds")
    ax.set_ylabel(latent.axis)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_clip(model: nn.Module, tags: list[str], seconds: float, latent, shift: float, steps: int,
               guidance: float, seed: int, path: Path, device: torch.device = torch.device("cpu")) -> Path:
    """``path`` (16-bit WAV) and its mel image beside it (``.png``)."""
    audio, z = generate(model, tags, seconds, latent, shift, steps, guidance, seed, device)
    path = Path(path)
    sf.write(path, audio, latent.samplerate, subtype="PCM_16")
    mel_png(path.with_suffix(".png"), z, latent, ", ".join(tags))
    return path
