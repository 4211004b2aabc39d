"""BS-RoFormer and Mel-Band RoFormer as Music-Source-Separation-Training (MSST) computes them.

Written from reading MSST's ``models/bs_roformer/`` (commit ccc011a) so that a user's MSST
checkpoint loads with its own key names, no translation, and computes MSST's output: the
tests compare against outputs made by MSST's code (``tests/fixtures/msst/``). The ``bs-roformer``
package cannot do this: its blocks sit inside hyper-connections, its BS-RoFormer mixes a value
residual into every attention after the first, and its Mel-Band RoFormer orders and normalises
its transformers differently (max |diff| 0.023 on an output of max 0.052, or no load at all).

What MSST's two architectures share, and where they differ:
- an STFT (Hann window, ``stft_*``), stereo folded into the frequency axis;
- BS-RoFormer splits the bins into contiguous bands (``freqs_per_bands``); Mel-Band RoFormer
  into ``num_bands`` overlapping mel bands, and averages the masks where bands overlap;
- ``depth`` blocks, each an optional linear-attention transformer over all (time, band) cells,
  then a time transformer and a band transformer with rotary positions (one rotary table per
  axis, shared by every block, as MSST shares it);
- BS-RoFormer ends with one RMSNorm; Mel-Band RoFormer normalises each transformer's output;
- one mask estimator per stem: per band an MLP (BS-RoFormer: ``depth`` linears; Mel-Band
  RoFormer: ``depth + 1``) into a GLU, giving a complex mask.

Shape convention: the forward returns (B, stems, channels, T) at the input's length T. MSST
squeezes a single stem, and its Mel-Band RoFormer returns a multiple of the hop unless
``match_input_audio_length``; the samples both compute are the same.

Options that change how MSST runs but not what it computes (``flash_attn``, ``sage_attention``)
and its multi-resolution STFT loss settings are accepted and have no effect here: the family's
loss is the protocol's. ``use_torch_checkpoint`` recomputes activations in the backward pass,
as in MSST.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from rotary_embedding_torch import RotaryEmbedding
from torch import nn
from torch.utils.checkpoint import checkpoint

# MSST's default BS-RoFormer bands: 62 bands over the 1025 bins of a 2048-point STFT
DEFAULT_FREQS_PER_BANDS = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.normalize(x, dim=-1) * self.scale * self.gamma


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: float = 4, dropout: float = 0.0):
        super().__init__()
        inner = int(dim * mult)
        # indices are MSST's key names: net.1 and net.4 are the linears
        self.net = nn.Sequential(RMSNorm(dim), nn.Linear(dim, inner), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Softmax attention with rotary positions and a sigmoid gate per head."""

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float, rotary_embed: RotaryEmbedding):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.rotary_embed = rotary_embed
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_gates = nn.Linear(dim, heads)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False), nn.Dropout(dropout))

    def forward(self, x):
        x = self.norm(x)
        b, n, _ = x.shape
        # the fused projection's outputs are laid out (qkv, head, dim_head)
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q = self.rotary_embed.rotate_queries_or_keys(q)
        k = self.rotary_embed.rotate_queries_or_keys(k)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        out = out * self.to_gates(x).transpose(1, 2).unsqueeze(-1).sigmoid()
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class LinearAttention(nn.Module):
    """Cross-covariance attention (El-Nouby et al., 2021): attention between feature channels,
    so its cost is linear in the sequence. Queries and keys are L2-normalised over the sequence,
    scaled by a learned temperature per head and a fixed 8."""

    scale = 8.0

    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Sequential(nn.Linear(dim, heads * dim_head * 3, bias=False),
                                    Rearrange("b n (qkv h d) -> qkv b h d n", qkv=3, h=heads))
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.to_out = nn.Sequential(Rearrange("b h d n -> b n (h d)"), nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x):
        q, k, v = self.to_qkv(self.norm(x))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        q = q * self.temperature.exp()
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                             scale=self.scale)
        return self.to_out(out)


class Transformer(nn.Module):
    def __init__(self, *, dim: int, depth: int, heads: int, dim_head: int, attn_dropout: float, ff_dropout: float,
                 norm_output: bool, rotary_embed: RotaryEmbedding | None = None, linear: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([LinearAttention(dim, heads, dim_head, attn_dropout) if linear
                           else Attention(dim, heads, dim_head, attn_dropout, rotary_embed),
                           FeedForward(dim, dropout=ff_dropout)])
            for _ in range(depth))
        self.norm = RMSNorm(dim) if norm_output else nn.Identity()

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class BandSplit(nn.Module):
    """Each band's (bins x channels x re/im) values -> one ``dim`` feature."""

    def __init__(self, dim: int, dim_inputs: tuple[int, ...]):
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_features = nn.ModuleList(nn.Sequential(RMSNorm(d), nn.Linear(d, dim)) for d in dim_inputs)

    def forward(self, x):
        return torch.stack([f(part) for part, f in zip(x.split(self.dim_inputs, dim=-1), self.to_features)], dim=-2)


def mlp(dim_in: int, dim_out: int, dim_hidden: int, linears: int) -> nn.Sequential:
    """``linears`` Linear layers with Tanh between them."""
    dims = [dim_in, *[dim_hidden] * (linears - 1), dim_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i < linears - 1 else [])
    return nn.Sequential(*layers)


class MaskEstimator(nn.Module):
    """Per band: features -> MLP -> GLU -> the band's complex mask values."""

    def __init__(self, dim: int, dim_inputs: tuple[int, ...], linears: int, mlp_expansion_factor: int):
        super().__init__()
        self.dim_inputs = dim_inputs
        self.to_freqs = nn.ModuleList(
            nn.Sequential(mlp(dim, d * 2, dim * mlp_expansion_factor, linears), nn.GLU(dim=-1)) for d in dim_inputs)

    def forward(self, x):
        return torch.cat([f(band) for band, f in zip(x.unbind(dim=-2), self.to_freqs)], dim=-1)


class _Roformer(nn.Module):
    """What both architectures share; subclasses choose the bands and how masks are applied."""

    final_norm_only: bool  # BS-RoFormer: one RMSNorm at the end; Mel-Band: one per transformer
    extra_mask_linear: int  # Mel-Band RoFormer's mask MLPs have one more linear than ``depth``

    def __init__(self, dim: int, *, depth: int, stereo: bool = False, num_stems: int = 1,
                 time_transformer_depth: int = 2, freq_transformer_depth: int = 2, linear_transformer_depth: int = 0,
                 dim_head: int = 64, heads: int = 8, attn_dropout: float = 0.0, ff_dropout: float = 0.0,
                 stft_n_fft: int = 2048, stft_hop_length: int = 512, stft_win_length: int = 2048,
                 stft_normalized: bool = False, mask_estimator_depth: int = 2, mlp_expansion_factor: int = 4,
                 use_torch_checkpoint: bool = False, skip_connection: bool = False, zero_dc: bool = True,
                 **_msst_runtime_or_loss):
        super().__init__()
        self.audio_channels = 2 if stereo else 1
        self.num_stems = num_stems
        self.use_torch_checkpoint, self.skip_connection, self.zero_dc = use_torch_checkpoint, skip_connection, zero_dc
        kw = dict(dim=dim, heads=heads, dim_head=dim_head, attn_dropout=attn_dropout, ff_dropout=ff_dropout,
                  norm_output=not self.final_norm_only)
        time_rotary, freq_rotary = RotaryEmbedding(dim=dim_head), RotaryEmbedding(dim=dim_head)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            block = [Transformer(depth=linear_transformer_depth, linear=True, **kw)] if linear_transformer_depth else []
            block += [Transformer(depth=time_transformer_depth, rotary_embed=time_rotary, **kw),
                      Transformer(depth=freq_transformer_depth, rotary_embed=freq_rotary, **kw)]
            self.layers.append(nn.ModuleList(block))
        if self.final_norm_only:
            self.final_norm = RMSNorm(dim)
        self.stft_kwargs = dict(n_fft=stft_n_fft, hop_length=stft_hop_length, win_length=stft_win_length,
                                normalized=stft_normalized)
        self.register_buffer("window", torch.hann_window(stft_win_length), persistent=False)
        dims = tuple(2 * f * self.audio_channels for f in self._bins_per_band(stft_n_fft // 2 + 1))
        self.band_split = BandSplit(dim, dims)
        self.mask_estimators = nn.ModuleList(
            MaskEstimator(dim, dims, mask_estimator_depth + self.extra_mask_linear, mlp_expansion_factor)
            for _ in range(num_stems))

    def _bins_per_band(self, bins: int) -> list[int]:
        raise NotImplementedError

    def _bands(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, F, T, 2) real view of the STFT -> (B, T, band values)."""
        raise NotImplementedError

    def _masked(self, spec: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Complex (B, 1, F, T) STFT and (B, S, band bins, T) masks -> (B, S, F, T)."""
        raise NotImplementedError

    def _run(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return checkpoint(module, x, use_reentrant=False) if self.use_torch_checkpoint else module(x)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.ndim == 2:
            mix = mix.unsqueeze(1)
        b, c, length = mix.shape
        if c != self.audio_channels:
            raise ValueError(f"expected {self.audio_channels} audio channels (stereo: {self.audio_channels == 2}), "
                             f"got {c}")
        spec = torch.stft(mix.reshape(b * c, length), **self.stft_kwargs, window=self.window, return_complex=True)
        spec = torch.view_as_real(spec)  # (B*C, bins, T, 2)
        bins, frames = spec.shape[1:3]
        # channels fold into the frequency axis, bin-major: (bin0 L, bin0 R, bin1 L, ...)
        spec = spec.view(b, c, bins, frames, 2).transpose(1, 2).reshape(b, bins * c, frames, 2)
        x = self._run(self.band_split, self._bands(spec))  # (B, T, bands, dim)
        store = []
        for block in self.layers:
            *linear, time, freq = block
            _, t, f, d = x.shape
            if linear:
                x = self._run(linear[0], x.reshape(b, t * f, d)).view(b, t, f, d)
            if self.skip_connection:  # every earlier block's output, added in order as MSST does
                for earlier in store:
                    x = x + earlier
            x = self._run(time, x.transpose(1, 2).reshape(b * f, t, d)).view(b, f, t, d).transpose(1, 2)
            x = self._run(freq, x.reshape(b * t, f, d)).view(b, t, f, d)
            store.append(x)
        if self.final_norm_only:
            x = self.final_norm(x)
        stems = len(self.mask_estimators)  # a family may give a model new heads
        masks = torch.stack([self._run(m, x) for m in self.mask_estimators], dim=1)  # (B, S, T, band values)
        masks = masks.view(b, stems, frames, -1, 2).transpose(2, 3)
        out = self._masked(torch.view_as_complex(spec.contiguous()).unsqueeze(1),
                           torch.view_as_complex(masks.contiguous()))
        out = out.reshape(b * stems, bins, c, frames).transpose(1, 2).reshape(-1, bins, frames)
        if self.zero_dc:  # MSST removes the DC offset from every stem
            out = out.index_fill(1, torch.tensor([0], device=out.device), 0)
        audio = torch.istft(out, **self.stft_kwargs, window=self.window, length=length)
        return audio.view(b, stems, c, length)


class BSRoformer(_Roformer):
    final_norm_only, extra_mask_linear = True, 0

    def __init__(self, dim: int, *, freqs_per_bands: tuple[int, ...] = DEFAULT_FREQS_PER_BANDS, **kwargs):
        self.freqs_per_bands = tuple(int(f) for f in freqs_per_bands)
        super().__init__(dim, **kwargs)

    def _bins_per_band(self, bins: int) -> list[int]:
        if len(self.freqs_per_bands) < 2 or sum(self.freqs_per_bands) != bins:
            raise ValueError(f"freqs_per_bands: {len(self.freqs_per_bands)} bands of {sum(self.freqs_per_bands)} "
                             f"bins in all; the STFT has {bins} bins, which at least 2 bands must add up to")
        return list(self.freqs_per_bands)

    def _bands(self, spec):
        return spec.transpose(1, 2).flatten(2)

    def _masked(self, spec, masks):
        return spec * masks


class MelBandRoformer(_Roformer):
    final_norm_only, extra_mask_linear = False, 1

    def __init__(self, dim: int, *, num_bands: int = 60, sample_rate: int = 44100, stereo: bool = False,
                 stft_n_fft: int = 2048, **kwargs):
        self.num_bands, self.sample_rate, self.stereo = num_bands, sample_rate, stereo
        self.n_fft = stft_n_fft
        super().__init__(dim, stereo=stereo, stft_n_fft=stft_n_fft, **kwargs)

    def _bins_per_band(self, bins: int) -> list[int]:
        from librosa import filters

        bank = torch.from_numpy(filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.num_bands))
        # the first and last bins belong to no mel filter (or to one by a rounding error on
        # some systems): MSST forces both into the outermost bands
        bank[0][0], bank[-1, -1] = 1.0, 1.0
        in_band = bank > 0  # (bands, bins): a binary band membership, as in the paper
        index = torch.arange(bins).expand(self.num_bands, bins)[in_band]  # band-major bin indices
        if self.stereo:
            index = (index[:, None] * 2 + torch.arange(2)).flatten()
        self.register_buffer("freq_indices", index, persistent=False)
        self.register_buffer("num_bands_per_freq", in_band.sum(0), persistent=False)
        return in_band.sum(1).tolist()

    def _bands(self, spec):
        return spec[:, self.freq_indices].transpose(1, 2).flatten(2)

    def _masked(self, spec, masks):
        # a bin in several bands gets the mean of their masks
        b, s, _, t = masks.shape
        index = self.freq_indices.view(1, 1, -1, 1).expand(b, s, -1, t)
        summed = torch.zeros(b, s, *spec.shape[2:], dtype=spec.dtype, device=spec.device)
        summed = summed.scatter_add_(2, index, masks.to(spec.dtype))
        counts = self.num_bands_per_freq.repeat_interleave(self.audio_channels).view(-1, 1)
        return spec * (summed / counts.clamp(min=1e-8))


ARCHITECTURES = {"bs_roformer": BSRoformer, "mel_band_roformer": MelBandRoformer}


def options(arch: str) -> set[str]:
    """The options an MSST ``model:`` section may set for ``arch``."""
    cls = ARCHITECTURES[arch]
    names = set(inspect.signature(_Roformer.__init__).parameters) | set(inspect.signature(cls.__init__).parameters)
    return (names | MSST_NO_EFFECT) - {"self", "kwargs", "_msst_runtime_or_loss"}


# accepted for MSST configs; they choose kernels or configure MSST's own loss (see module doc)
MSST_NO_EFFECT = {"flash_attn", "sage_attention", "dim_freqs_in", "match_input_audio_length",
                  "multi_stft_resolution_loss_weight", "multi_stft_resolutions_window_sizes", "multi_stft_hop_size",
                  "multi_stft_normalized"}
