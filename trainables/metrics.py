"""Separation metrics.

``nsdr`` is the per-track energy-ratio SDR that Demucs (``new_sdr``) and MSST report during
training: 10·log10(‖ref‖² / ‖ref − est‖²) over a whole track, channels included. It is cheap
enough to run every epoch; museval's BSSEval v4 is for the final report (promotion).
"""

from __future__ import annotations

import numpy as np
import torch

EPS = 1e-8


def nsdr(references: torch.Tensor | np.ndarray, estimates: torch.Tensor | np.ndarray) -> np.ndarray:
    """(S, C, T) references and estimates of one track -> SDR in dB per source, shape (S,)."""
    ref = torch.as_tensor(references, dtype=torch.float64)
    est = torch.as_tensor(estimates, dtype=torch.float64)
    num = (ref ** 2).sum(dim=(-2, -1)) + EPS
    den = ((ref - est) ** 2).sum(dim=(-2, -1)) + EPS
    return (10 * torch.log10(num / den)).numpy()
