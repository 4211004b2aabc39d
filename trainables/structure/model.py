"""The structure model: a backbone from audio to frame features, and one linear layer of heads.

``StructureNet(audio (batch, samples)) -> (batch, samples // hop, OUTPUTS)``: per frame, the
logits of ``HEADS`` side by side (boundary, beat, downbeat: one logit each; energy: three
values; label: one logit per section label). One output tensor keeps the model what PEFT,
merging and export expect.

The ``cnn`` backbone, sized for a CPU:
- ``frontend``: a log-mel spectrogram computed in the model (an STFT and a fixed mel matrix,
  so it runs on any device), centred per item (a gain change shifts log-mel by a constant), then
  three 2-D convolutions that pool the mel axis away (64 -> 16 -> 4 bins) and a projection to
  ``width`` channels per frame;
- ``tcn``: residual dilated 1-D convolutions (dilations 1..32): about 5 s of context at 25
  frames/s, enough to hear a beat and a bar;
- ``context``: self-attention over the whole track at a fifth of the frame rate, added back
  at full rate: a drop is a drop because of what came before it.

The seed trainer's CPU backbone was documented as taking a mel spectrogram and fed raw
waveforms; here the front end is part of the model, so it cannot be fed the wrong thing.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data.compose import LABELS
from trainables.errors import RankhouseError

HEADS = {"boundary": 1, "beat": 1, "downbeat": 1, "energy": 3, "label": len(LABELS)}
OUTPUTS = sum(HEADS.values())
CNN_DEFAULTS = {"samplerate": 22050, "hop": 882, "n_fft": 2048, "mels": 64, "width": 64, "dilations": 6,
                "context_layers": 2, "heads": 4, "context_pool": 5}


def head_slices() -> dict[str, slice]:
    out, at = {}, 0
    for name, n in HEADS.items():
        out[name] = slice(at, at + n)
        at += n
    return out


class LogMel(nn.Module):
    def __init__(self, samplerate: int, n_fft: int, hop: int, mels: int):
        super().__init__()
        import librosa

        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fb = librosa.filters.mel(sr=samplerate, n_fft=n_fft, n_mels=mels, fmin=20.0, fmax=samplerate / 2)
        self.register_buffer("filters", torch.from_numpy(fb.astype(np.float32)), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, n) -> (B, mels, n // hop), log-mel centred per item."""
        frames = audio.shape[-1] // self.hop
        spec = torch.stft(audio.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        power = spec[..., :frames].abs() ** 2
        mel = torch.log(torch.einsum("mf,bft->bmt", self.filters, power) + 1e-6)
        return mel - mel.mean(dim=(1, 2), keepdim=True)


class Frontend(nn.Module):
    def __init__(self, mels: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.proj = nn.Conv1d(32 * (mels // 16), width, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.gelu(self.conv1(mel.unsqueeze(1))), (4, 1))
        x = F.max_pool2d(F.gelu(self.conv2(x)), (4, 1))
        x = F.gelu(self.conv3(x))
        return self.proj(x.flatten(1, 2))  # (B, width, T)


class Residual(nn.Module):
    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)
        self.norm = nn.GroupNorm(1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.conv(self.norm(x))))


class Attention(nn.Module):
    """A pre-norm transformer block with separate q/k/v/out projections (LoRA targets by name)
    and sinusoidal positions."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(width, width) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, width)
        b, t, w = x.shape
        h = self.norm1(x)
        split = lambda y: y.view(b, t, self.heads, w // self.heads).transpose(1, 2)
        att = F.scaled_dot_product_attention(split(self.to_q(h)), split(self.to_k(h)), split(self.to_v(h)))
        x = x + self.to_out(att.transpose(1, 2).reshape(b, t, w))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


def positions(t: int, width: int, device) -> torch.Tensor:
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width))
    out = torch.zeros(t, width, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


class CNNBackbone(nn.Module):
    def __init__(self, samplerate: int, hop: int, n_fft: int, mels: int, width: int, dilations: int,
                 context_layers: int, heads: int, context_pool: int):
        super().__init__()
        self.pool = context_pool
        self.mel = LogMel(samplerate, n_fft, hop, mels)
        self.frontend = Frontend(mels, width)
        self.tcn = nn.Sequential(*(Residual(width, 2 ** i) for i in range(dilations)))
        self.context = nn.ModuleList(Attention(width, heads) for _ in range(context_layers))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.tcn(self.frontend(self.mel(audio)))  # (B, width, T)
        t = x.shape[-1]
        c = F.avg_pool1d(x, self.pool, ceil_mode=True).transpose(1, 2)  # (B, T / pool, width)
        c = c + positions(c.shape[1], c.shape[2], c.device)
        for block in self.context:
            c = block(c)
        x = x + c.transpose(1, 2).repeat_interleave(self.pool, dim=-1)[..., :t]
        return x.transpose(1, 2)  # (B, T, width)


class StructureNet(nn.Module):
    """A backbone (``cnn``, or ``mert``: ``trainables/structure/mert.py``) and ``head``, the one
    linear layer that emits every head's values per frame."""

    def __init__(self, backbone: str = "cnn", **kwargs):
        super().__init__()
        if backbone == "cnn":
            unknown = sorted(set(kwargs) - set(CNN_DEFAULTS))
            if unknown:
                raise RankhouseError(f"model.kwargs: {', '.join(unknown)}: not an option of the cnn backbone "
                                     f"({', '.join(CNN_DEFAULTS)})")
            args = {**CNN_DEFAULTS, **kwargs}
            if args["mels"] % 16 or args["width"] % args["heads"]:
                raise RankhouseError("model.kwargs: mels must be a multiple of 16 and width a multiple of heads")
            self.backbone = CNNBackbone(**args)
            self.samplerate, self.hop, width = int(args["samplerate"]), int(args["hop"]), int(args["width"])
        elif backbone == "mert":
            from trainables.structure.mert import MERT_DEFAULTS, MertBackbone, config_kwargs

            folder = kwargs.pop("folder", None)
            args = dict(kwargs) if folder else {**MERT_DEFAULTS, **kwargs}
            self.backbone = MertBackbone(folder=folder, **args)
            args = config_kwargs(self.backbone)  # what rebuilds it without the folder
            self.samplerate, self.hop, width = self.backbone.samplerate, self.backbone.hop, self.backbone.width
        else:
            raise RankhouseError(f"model.backbone: {backbone!r}; expected cnn or mert")
        self.kind, self.kwargs = backbone, args
        self.head = nn.Linear(width, OUTPUTS)

    @property
    def fps(self) -> float:
        return self.samplerate / self.hop

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(audio))
