"""Chunked separation with overlap-add, for tracks of any length."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


@torch.no_grad()
def separate(model: nn.Module, mix: torch.Tensor, segment: int, overlap: float = 0.25,
             batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """``mix`` (C, T) -> estimates (S, C, T). Chunks of ``segment`` samples overlap by ``overlap``
    and are cross-faded with a triangular window, as Demucs' ``apply_model`` does."""
    channels, length = mix.shape
    stride = max(1, int(segment * (1 - overlap)))
    starts = list(range(0, max(length - segment, 0) + 1, stride))
    if starts[-1] + segment < length:
        starts.append(length - segment if length > segment else 0)
    ramp = torch.arange(1, segment // 2 + 1, device=mix.device, dtype=mix.dtype)
    window = torch.cat([ramp, ramp.flip(0)])[:segment] if segment > 1 else torch.ones(1)
    window = torch.nn.functional.pad(window, (0, segment - window.numel()), value=float(window[-1]))
    out = weight = None
    for i in range(0, len(starts), batch_size):
        group = starts[i:i + batch_size]
        chunks = torch.stack([torch.nn.functional.pad(mix[:, s:s + segment], (0, max(0, s + segment - length)))
                              for s in group])
        est = model(chunks)  # (B, S, C, segment)
        if out is None:
            out = mix.new_zeros(est.shape[1], channels, length)
            weight = mix.new_zeros(length)
        for s, e in zip(group, est):
            n = min(segment, length - s)
            out[..., s:s + n] += e[..., :n] * window[:n]
            weight[s:s + n] += window[:n]
        if progress:
            progress(min(i + batch_size, len(starts)), len(starts))
    return out / weight.clamp_min(1e-8)
