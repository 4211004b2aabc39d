"""Flow matching as ACE-Step's trainer does it, a validation loss that is the same every time,
and the Euler sampler that generates.

Training (``trainer.py``'s ``run_step``): a timestep from the logit-normal density (u ~ N(0, 1),
s = sigmoid(u)), on the trainer's 1000-step grid, shifted by ``shift`` (3.0) as its
``FlowMatchEulerDiscreteScheduler`` does: sigma = shift s / (1 + (shift - 1) s). The noisy latent
is sigma * noise + (1 - sigma) * clean; the model predicts the velocity v, the prediction is
preconditioned to a clean latent, noisy - sigma * v, and the loss is its mean squared error
against the clean latent (the same as sigma^2 times the error of v against noise - clean).
The trainer adds alignment losses against MERT and mHuBERT features; those need hub weights,
so they are left out.

Validation (which the trainer lacks): the same loss at ``QUANTILES`` fixed quantiles of that
density, with noise drawn from a generator seeded by the item, so one model scores the same on
every evaluation.
"""

from __future__ import annotations

import zlib
from statistics import NormalDist

import numpy as np
import torch

STEPS_TRAIN = 1000  # the trainer's timestep grid
SHIFT = 3.0  # the trainer's --shift default: what train.shift defaults to, and a bare base generates with
QUANTILES = 8


def shifted(s, shift: float):
    """The scheduler's shift of a noise level in [0, 1] (tensor or array)."""
    return shift * s / (1 + (shift - 1) * s)


def train_sigmas(normal: np.ndarray, shift: float) -> np.ndarray:
    """Standard-normal draws -> noise levels as the trainer draws them: the logistic of each, on
    the 1000-step grid (the trainer's index into its scheduler's timesteps), shifted."""
    u = 1 / (1 + np.exp(-normal))
    index = np.clip((u * STEPS_TRAIN).astype(np.int64), 0, STEPS_TRAIN - 1)
    return shifted(1.0 - index / STEPS_TRAIN, shift).astype(np.float32)


def valid_sigmas(shift: float, quantiles: int = QUANTILES) -> torch.Tensor:
    """The noise levels validation scores at: quantiles (k + 0.5) / K of the training density."""
    normal = NormalDist()
    u = torch.tensor([normal.inv_cdf((k + 0.5) / quantiles) for k in range(quantiles)])
    return shifted(torch.sigmoid(u), shift)


def loss(model, clean: torch.Tensor, tokens: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
         condition: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) per-item loss: the preconditioned clean-latent MSE at noise levels ``sigma``."""
    s = sigma.view(-1, 1, 1).to(clean.dtype)
    noisy = s * noise + (1 - s) * clean
    velocity = model(noisy, sigma, tokens, condition)
    return ((noisy - s * velocity.float() - clean) ** 2).flatten(1).mean(1)


def item_noise(key: str, index: int, shape: tuple) -> torch.Tensor:
    """The fixed noise of one validation clip (by its song's key and its index in the song)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{key}:{index}".encode()))
    return torch.randn(shape, generator=g)


@torch.no_grad()
def fixed_loss(model, clips: list[tuple[str, int, np.ndarray, np.ndarray]], shift: float, device: torch.device,
               empty_tags: bool = False, batch: int = 16) -> float:
    """The mean loss over validation clips ``(key, index, latent, tokens)`` at every fixed noise
    level; ``empty_tags``: with every prompt emptied (the unconditional model)."""
    sigmas = valid_sigmas(shift)
    total, count = 0.0, 0
    for start in range(0, len(clips), batch):
        part = clips[start:start + batch]
        clean = torch.from_numpy(np.stack([c[2] for c in part])).to(device)
        tokens = torch.from_numpy(np.stack([c[3] for c in part])).to(device)
        if empty_tags:
            tokens = torch.zeros_like(tokens)
        noise = torch.stack([item_noise(k, i, c.shape) for k, i, c, _ in part]).to(device)
        cond = model.condition(tokens)
        for sigma in sigmas:
            total += float(loss(model, clean, tokens, sigma.expand(len(part)).to(device), noise, cond).sum())
            count += len(part)
    return total / count


@torch.no_grad()
def sample(model, tokens: torch.Tensor, frames: int, steps: int, shift: float, guidance: float,
           generator: torch.Generator) -> torch.Tensor:
    """Euler steps from pure noise (sigma 1) to a clean latent (sigma 0) on the shifted grid,
    with classifier-free guidance against the empty prompt (``guidance`` 1: none)."""
    device = tokens.device
    x = torch.randn((len(tokens), frames, model.channels), generator=generator).to(device)
    grid = shifted(torch.linspace(1.0, 0.0, steps + 1), shift).tolist()
    cond = model.condition(tokens)
    empty = model.condition(torch.zeros_like(tokens)) if guidance != 1.0 else None
    for hi, lo in zip(grid[:-1], grid[1:]):
        sigma = torch.full((len(x),), hi, device=device)
        v = model(x, sigma, tokens, cond)
        if empty is not None:
            unconditional = model(x, sigma, tokens, empty)
            v = unconditional + guidance * (v - unconditional)
        x = x + (lo - hi) * v
    return x
