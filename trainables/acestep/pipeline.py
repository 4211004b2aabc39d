"""A user's ACE-Step folder as a base: ``AceStepPipeline.save_pretrained``'s layout (diffusers),
read from local disk only. Its DiT is what LoRA adapts; its VAE is the latent; its text encoder
and condition encoder turn a prompt into the DiT's condition, frozen.

What the pipeline does for text-to-music, done here the same way (a test samples with both and
gets the same latent):
- the prompt goes through the pipeline's own template and ``encode_prompt`` (no lyrics), then
  the condition encoder with the learned silence latent as the timbre reference;
- the DiT's context is the silence latent beside a chunk mask of ones (generate everything);
- the unconditional prompt of classifier-free guidance is the learned ``null_condition_emb``
  (the pipeline's note: empty text through the encoder is out of distribution).

Conditions are computed once per song (the text side is frozen) and differ in length; a batch
pads them with zero rows, which the model reads as the null condition, and an all-zero
condition is the unconditional prompt (cond_dropout, valid/cond_gain and guidance use it).
Songs are encoded by the VAE's mean (``latent_dist.mode()``), so the cached latents do not
depend on a draw.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainables.checkpoint import sha256
from trainables.errors import RankhouseError

INDEX = "model_index.json"
PIPELINE = "AceStepPipeline"
TIMBRE_SECONDS = 30  # the pipeline's silent timbre reference: its first 30 s


def is_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


def digest(folder: Path, whole: bool) -> str:
    """SHA-256 over the files under ``folder``: their names and contents' sha256, or (``whole``
    false) the contents of the JSON files and only the sizes of the rest."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update((sha256(path) if whole or path.suffix == ".json" else str(path.stat().st_size)).encode())
    return h.hexdigest()


def identity(folder: Path) -> dict:
    """The folder's name and digest, the configs by content and the weights by size: it must match
    when an adapter is loaded, and hashing gigabytes of DiT and text encoder at every trial start
    would cost minutes. (The VAE, which the cached latents depend on, is hashed whole: ``VaeLatent``.)"""
    return {"name": str(folder), "sha256": digest(folder, whole=False)}


@functools.lru_cache(maxsize=2)
def load(folder: Path):
    """The folder's ``AceStepPipeline`` in float32 on the CPU, from local files only; loaded once
    per process (a base, its holdout reader and generation share it, and nothing changes it:
    adapters go into copies of its DiT)."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise RankhouseError(f"model.base: {folder / INDEX}: unreadable ({exc})") from None
    if index.get("_class_name") != PIPELINE:
        raise RankhouseError(f"model.base: {folder}: a {index.get('_class_name')} folder; the acestep family reads "
                             f"{PIPELINE} folders (diffusers layout)")
    from diffusers import AceStepPipeline

    try:
        pipe = AceStepPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # diffusers/transformers: missing parts, bad configs, bad weights
        raise RankhouseError(f"model.base: {folder}: not a readable ACE-Step folder: "
                             f"{' '.join(str(exc).split())[:300]}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


class VaeLatent:
    """The folder's VAE as the latent: stereo audio at its rate <-> (frames, channels)."""

    image_limit = None  # drawn on the clip's own range
    axis = "latent channel"

    def __init__(self, pipe, vae_sha256: str):
        self.vae = pipe.vae.eval()
        self.samplerate = int(pipe.sample_rate)
        self.fps = float(pipe.latents_per_second)
        self.channels = int(pipe.transformer.config.audio_acoustic_hidden_dim)
        self.patch = int(pipe.transformer.config.patch_size)
        self.spec = {"vae": vae_sha256}  # what the cached latents are keyed by
        self.silence = pipe.condition_encoder.silence_latent[0, 0].detach().float().numpy()

    def frames(self, seconds: float) -> int:
        return max(self.patch, int(round(seconds * self.fps)))

    @torch.no_grad()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """(channels, samples) or (samples,) float audio at ``samplerate`` -> (frames, channels)."""
        x = torch.from_numpy(np.atleast_2d(np.asarray(audio, dtype=np.float32)))
        x = x.expand(2, -1) if x.shape[0] == 1 else x[:2]
        return self.vae.encode(x[None]).latent_dist.mode()[0].T.numpy().astype(np.float32)

    @torch.no_grad()
    def decode(self, latent: np.ndarray, seed: int = 0) -> np.ndarray:
        """(frames, channels) -> (samples, 2) float32 audio, scaled down only if it would clip."""
        audio = self.vae.decode(torch.from_numpy(np.asarray(latent, dtype=np.float32)).T[None]).sample[0]
        audio = audio / max(1.0, float(audio.abs().max()))
        return audio.T.numpy().astype(np.float32)


class Shared:
    """Held, not copied: ``copy.deepcopy`` of a model (each trial adapts its own copy) shares
    this, so the frozen text side exists once."""

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


class PipelineTextToMusic(nn.Module):
    """``forward(noisy, sigma, condition)`` as ``model.TextToMusic``'s, on the folder's DiT; the
    prompt's condition comes from ``prompt`` (the frozen text side, not a submodule: LoRA, the
    optimiser and checkpoints see only the DiT)."""

    def __init__(self, pipe, folder: Path):
        super().__init__()
        self.transformer = pipe.transformer
        self.channels = int(pipe.transformer.config.audio_acoustic_hidden_dim)
        self.kwargs = {"folder": str(folder)}
        encoder = pipe.condition_encoder
        self.register_buffer("null", encoder.null_condition_emb.detach().clone(), persistent=False)
        self.register_buffer("silence", encoder.silence_latent.detach().clone(), persistent=False)
        self.shared = Shared(pipe)

    @torch.no_grad()
    def prompt(self, tags: list[str], seconds: float) -> np.ndarray:
        """The condition of a prompt, (length, dim) float32, as the pipeline builds it."""
        pipe = self.shared.value
        text, text_mask, lyric, lyric_mask = pipe.encode_prompt(", ".join(tags), "", torch.device("cpu"),
                                                                audio_duration=float(seconds))
        timbre = self._silence(math.ceil(TIMBRE_SECONDS * pipe.latents_per_second))
        cond, _ = pipe.condition_encoder(text_hidden_states=text, text_attention_mask=text_mask,
                                         lyric_hidden_states=lyric, lyric_attention_mask=lyric_mask,
                                         refer_audio_acoustic_hidden_states_packed=timbre,
                                         refer_audio_order_mask=torch.zeros(1, dtype=torch.long))
        return cond[0].float().numpy()

    def _silence(self, frames: int) -> torch.Tensor:
        reps = math.ceil(frames / self.silence.shape[1])
        return self.silence.repeat(1, reps, 1)[:, :frames]

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Zero rows (padding, or an emptied prompt) become the null condition."""
        cond = cond.to(self.null.dtype)
        return torch.where((cond == 0).all(-1, keepdim=True), self.null.expand_as(cond), cond)

    def forward(self, noisy: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor,
                condition: torch.Tensor | None = None) -> torch.Tensor:
        c = self.condition(cond) if condition is None else condition
        batch, frames, _ = noisy.shape
        source = self._silence(frames).to(noisy.dtype).expand(batch, -1, -1)
        context = torch.cat([source, torch.ones_like(source)], -1)  # text-to-music: generate every frame
        sigma = sigma.to(noisy.dtype)
        return self.transformer(hidden_states=noisy, timestep=sigma, timestep_r=sigma, encoder_hidden_states=c,
                                context_latents=context, return_dict=False)[0]
