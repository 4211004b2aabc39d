"""SCNet (Tong et al., 2024, "SCNet: Sparse Compression Network for Music Source Separation"),
built as MSST's ``models/scnet/`` builds it, with MSST's state-dict key names, so that an MSST
SCNet checkpoint loads with no key translation and computes MSST's output
(``tests/test_scnet.py``, against a checkpoint and output made by MSST's code).

The model, for a stereo mixture (B, 2, L):

1. An STFT with MSST's settings: ``nfft`` 4096, hop 1024, **no window** (so a rectangular one:
   MSST passes none), ``normalized``. The input is padded on the right so that the frame count
   is even (the separation network's FFT over frames needs it). Real and imaginary parts of each
   audio channel become 2C feature channels.
2. Encoder stages (``encoder.i``): the frequency axis is split into low / mid / high bands at
   ``band_SR`` proportions; each band is downsampled along frequency by its own stride (1, 4,
   16), goes through a stack of residual GLU / depthwise-convolution blocks along time, and the
   bands are joined again; a 3x3 convolution mixes them. The joined bands, before it, are the
   skip connection.
3. The separation network (``separation_net``): dual-path BiLSTMs, across frequency then across
   frames, with a residual around each; every second layer works on the real FFT of the frame
   axis (real and imaginary stacked as channels, so twice as wide).
4. Decoder stages (``decoder.j``, deepest first): the skip is added, the channels duplicated and
   gated (3x3 convolution + GLU), and each band upsampled back by a transposed convolution and
   cropped to its original size. The last stage emits, per source, the complex spectrum of every
   audio channel directly (no mask), and an inverse STFT gives the waveforms (B, S, C, L).

The family (``SCNetFamily``, registered as ``scnet``) takes as base the embedded one, a rankhouse
``.safetensors`` or an MSST checkpoint with its MSST config YAML (``model.config``). LoRA reaches
the BiLSTMs through ``trainables.lora_layers.LoraLSTM``; a new source's output block of the last
decoder stage starts as a copy of its parent's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables import msst_io
from trainables.checkpoint import plain_state, read_model, sha256, write_model
from trainables.errors import RankhouseError
from trainables.htdemucs import ASSETS
from trainables.separator import Separator, SeparatorBase, copy_blocks, parent_indices

DEFAULTS = dict(sources=("drums", "bass", "other", "vocals"), audio_channels=2, dims=(4, 32, 64, 128), nfft=4096,
                hop_size=1024, win_size=4096, normalized=True, band_SR=(0.175, 0.392, 0.433), band_stride=(1, 4, 16),
                band_kernel=(3, 4, 16), conv_depths=(3, 2, 1), compress=4, conv_kernel=3, num_dplayer=6, expand=1)


class ConvModule(nn.Module):
    """Residual blocks along time: GroupNorm, pointwise conv to 2h, GLU, depthwise conv, GroupNorm,
    Swish, pointwise conv back (h = channels / compress)."""

    def __init__(self, channels: int, depth: int, compress: int, kernel: int):
        super().__init__()
        hidden = int(channels / compress)
        self.layers = nn.ModuleList(nn.Sequential(
            nn.GroupNorm(1, channels), nn.Conv1d(channels, 2 * hidden, kernel, padding=kernel // 2), nn.GLU(dim=1),
            nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden), nn.GroupNorm(1, hidden), nn.SiLU(),
            nn.Conv1d(hidden, channels, 1)) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class BandSplit(nn.Module):
    """Low / mid / high bands of the frequency axis, each downsampled by its own strided conv."""

    def __init__(self, channels_in: int, channels_out: int, ratios: tuple[float, float], strides, kernels):
        super().__init__()
        self.ratios, self.strides, self.kernels = ratios, list(strides), list(kernels)
        self.convs = nn.ModuleList(nn.Conv2d(channels_in, channels_out, (k, 1), (s, 1))
                                   for s, k in zip(self.strides, self.kernels))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
        freqs = x.shape[2]
        # MSST's split points: the ratios' running sum, rounded up (float arithmetic as there)
        low, mid = math.ceil(freqs * self.ratios[0]), math.ceil(freqs * (self.ratios[0] + self.ratios[1]))
        edges = [(0, low), (low, mid), (mid, freqs)]
        bands = []
        for conv, (start, stop), stride, kernel in zip(self.convs, edges, self.strides, self.kernels):
            rows = stop - start
            # stride 1: "same" padding; strided (kernel == stride): pad up to a multiple of the stride
            pad = kernel - stride if stride == 1 else (stride - rows % stride) % stride
            bands.append(conv(F.pad(x[:, :, start:stop], (0, 0, pad // 2, pad - pad // 2))))
        return bands, [stop - start for start, stop in edges]


class EncoderStage(nn.Module):
    """MSST's ``SDblock``: band split, residual conv blocks per band, GELU, then a 3x3 conv."""

    def __init__(self, channels_in: int, channels_out: int, ratios, strides, kernels, depths, compress: int,
                 kernel: int):
        super().__init__()
        self.SDlayer = BandSplit(channels_in, channels_out, ratios, strides, kernels)
        self.conv_modules = nn.ModuleList(ConvModule(channels_out, d, compress, kernel) for d in depths)
        self.globalconv = nn.Conv2d(channels_out, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor):
        bands, original = self.SDlayer(x)
        out = []
        for band, module in zip(bands, self.conv_modules):
            b, c, f, t = band.shape
            y = module(band.permute(0, 2, 1, 3).reshape(b * f, c, t))  # every frequency row, along time
            out.append(F.gelu(y.view(b, f, c, t).permute(0, 2, 1, 3)))
        joined = torch.cat(out, dim=2)
        return self.globalconv(joined), joined, [o.shape[2] for o in out], original


class Fusion(nn.Module):
    """The skip added, the channels duplicated and gated by a 3x3 conv + GLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return F.glu(self.conv((x + skip).repeat(1, 2, 1, 1)), dim=1)


class BandMerge(nn.Module):
    """MSST's ``SUlayer``: each band upsampled along frequency by a transposed conv, cropped
    (centred) to the size it had before the encoder's split."""

    def __init__(self, channels_in: int, channels_out: int, strides, kernels):
        super().__init__()
        self.convtrs = nn.ModuleList(nn.ConvTranspose2d(channels_in, channels_out, (k, 1), (s, 1))
                                     for s, k in zip(strides, kernels))

    def forward(self, x: torch.Tensor, lengths: list[int], original: list[int]) -> torch.Tensor:
        out, start = [], 0
        for convtr, rows, target in zip(self.convtrs, lengths, original):
            y = convtr(x[:, :, start:start + rows])
            start += rows
            offset = abs(target - y.shape[2]) // 2
            out.append(y[:, :, offset:offset + target])
        return torch.cat(out, dim=2)


class DualPathRNN(nn.Module):
    """A BiLSTM across frequency (for every frame), then one across frames (for every frequency),
    each pre-normalised, projected back to ``channels`` and added to its input."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.lstm_layers = nn.ModuleList(nn.LSTM(channels, hidden, num_layers=1, bidirectional=True,
                                                 batch_first=True) for _ in range(2))
        self.linear_layers = nn.ModuleList(nn.Linear(2 * hidden, channels) for _ in range(2))
        self.norm_layers = nn.ModuleList(nn.GroupNorm(1, channels) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        y = self.norm_layers[0](x).permute(0, 3, 2, 1).reshape(b * t, f, c)
        y = self.linear_layers[0](self.lstm_layers[0](y)[0])
        x = x + y.view(b, t, f, c).permute(0, 3, 2, 1)
        y = self.norm_layers[1](x).permute(0, 2, 3, 1).reshape(b * f, t, c)
        y = self.linear_layers[1](self.lstm_layers[1](y)[0])
        return x + y.view(b, f, t, c).permute(0, 3, 1, 2)


def frames_to_spectrum(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> the orthonormal real FFT over frames, real and imaginary as 2C channels."""
    spectrum = torch.fft.rfft(x.float(), dim=3, norm="ortho")
    return torch.cat([spectrum.real, spectrum.imag], dim=1)


def spectrum_to_frames(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[1] // 2
    x = x.float()
    return torch.fft.irfft(torch.complex(x[:, :half], x[:, half:]), dim=3, norm="ortho")


class SeparationNet(nn.Module):
    def __init__(self, channels: int, expand: int, num_layers: int):
        super().__init__()
        # odd layers run on the frames' FFT: real and imaginary parts, twice the channels
        self.dp_modules = nn.ModuleList(DualPathRNN(channels * (2 if i % 2 else 1), expand)
                                        for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.dp_modules):
            x = layer(x)
            x = spectrum_to_frames(x) if i % 2 else frames_to_spectrum(x)
        return x


class SCNet(nn.Module):
    """Arguments are MSST's config ``model:`` keys, with MSST's defaults (its musdb18 config)."""

    def __init__(self, sources=DEFAULTS["sources"], audio_channels=2, dims=DEFAULTS["dims"], nfft=4096, hop_size=1024,
                 win_size=4096, normalized=True, band_SR=DEFAULTS["band_SR"], band_stride=DEFAULTS["band_stride"],
                 band_kernel=DEFAULTS["band_kernel"], conv_depths=DEFAULTS["conv_depths"], compress=4, conv_kernel=3,
                 num_dplayer=6, expand=1):
        super().__init__()
        if dims[0] != 2 * audio_channels:
            raise ValueError(f"dims[0] = {dims[0]}: must be 2 x audio_channels ({2 * audio_channels}), the real and "
                             "imaginary parts of every channel")
        if num_dplayer % 2:
            raise ValueError(f"num_dplayer = {num_dplayer}: must be even (every second layer returns from the "
                             "frames' FFT)")
        if conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel = {conv_kernel}: must be odd")
        for stride, kernel in zip(band_stride, band_kernel):
            if stride != 1 and stride != kernel:
                raise ValueError(f"band_kernel {kernel} with band_stride {stride}: a strided band needs kernel == stride")
        self.sources, self.audio_channels, self.dims = list(sources), audio_channels, list(dims)
        self.nfft, self.hop_size, self.win_size, self.normalized = nfft, hop_size, win_size, normalized
        ratios = (band_SR[0], band_SR[1])  # the high band is what remains: band_SR[2] is unused, as in MSST
        self.encoder, self.decoder = nn.ModuleList(), nn.ModuleList()
        for i in range(len(dims) - 1):
            self.encoder.append(EncoderStage(dims[i], dims[i + 1], ratios, band_stride, band_kernel, conv_depths,
                                             compress, conv_kernel))
            out = dims[i] if i else dims[0] * len(self.sources)
            # deepest first: decoder.0 undoes the last encoder stage (MSST's key order)
            self.decoder.insert(0, nn.Sequential(Fusion(dims[i + 1]), BandMerge(dims[i + 1], out, band_stride,
                                                                                 band_kernel)))
        self.separation_net = SeparationNet(dims[-1], expand, num_dplayer)

    def _stft_args(self, like: torch.Tensor) -> dict:
        # no window in MSST: torch's default, a rectangular one (passed explicitly: same values, no warning)
        return dict(n_fft=self.nfft, hop_length=self.hop_size, win_length=self.win_size, center=True,
                    normalized=self.normalized, window=torch.ones(self.win_size, device=like.device, dtype=like.dtype))

    def spectrogram(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, L) mixture -> (B, 2C, F, T): each channel's STFT as real and imaginary planes.
        The mixture is padded to an odd number of whole hops, so that with the frame ``center``
        adds the frame count is even, as the dual-path layers' FFT along frames wants."""
        b, c, length = mix.shape
        pad = self.hop_size - length % self.hop_size
        if ((length + pad) // self.hop_size) % 2 == 0:
            pad += self.hop_size
        x = F.pad(mix, (0, pad))
        spec = torch.stft(x.reshape(b * c, -1), return_complex=True, **self._stft_args(x))
        return torch.view_as_real(spec).permute(0, 3, 1, 2).reshape(b, 2 * c, *spec.shape[1:])

    def waveform(self, spec: torch.Tensor, channels: int, length: int) -> torch.Tensor:
        """(B, S x 2C, F, T) -> (B, S, C, length): ``spectrogram``'s inverse for each source's block."""
        b, planes, freqs, frames = spec.shape
        s = planes // (2 * channels)
        x = spec.reshape(b * s * channels, 2, freqs, frames).permute(0, 2, 3, 1).contiguous()
        wav = torch.istft(torch.view_as_complex(x), **self._stft_args(spec))
        return wav.reshape(b, s, channels, -1)[..., :length]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """(B, C, L) mixture -> (B, S, C, L) sources."""
        x = self.spectrogram(mix)
        skips = []
        for stage in self.encoder:
            x, skip, lengths, original = stage(x)
            skips.append((skip, lengths, original))
        x = self.separation_net(x)
        for (fusion, merge), (skip, lengths, original) in zip(self.decoder, reversed(skips)):
            x = merge(fusion(x, skip), lengths, original)
        return self.waveform(x, mix.shape[1], mix.shape[-1])


# ---- the family ---------------------------------------------------------------------------
# the embedded base: MSST's SCNet at 22.05 kHz with a 2048-point STFT (the 4096 / 1024 of 44.1 kHz,
# in seconds), narrower stages and 2 dual-path layers, so it trains on 2 CPU cores
EMBEDDED = ASSETS / "scnet_embedded.safetensors"
EMBEDDED_SOURCES = ["drums", "bass", "other", "vocals"]
EMBEDDED_SAMPLERATE, EMBEDDED_SEGMENT = 22050, 3.0
EMBEDDED_KWARGS = dict(dims=[4, 16, 32, 64], nfft=2048, hop_size=512, win_size=2048, num_dplayer=2)
# MSST types these as lists in its YAMLs (SCNet takes any sequence); the rest are scalars
OPTIONS = set(DEFAULTS)


def new_model(sources: list[str], kwargs: dict, where: str = "scnet") -> SCNet:
    """An SCNet of MSST's ``model:`` options for ``sources``; ``where`` names them in errors."""
    unknown = sorted(set(kwargs) - OPTIONS)
    if unknown:
        raise RankhouseError(f"{where}: {', '.join(unknown)}: not an option of MSST's SCNet; remove it or check "
                             "the spelling")
    try:
        return SCNet(**{**kwargs, "sources": list(sources)})
    except (TypeError, ValueError) as exc:
        raise RankhouseError(f"{where}: cannot build this SCNet ({' '.join(str(exc).split())[:200]})") from None


def save_checkpoint(model: SCNet, path: Path, kwargs: dict, samplerate: int, segment: float) -> str:
    """A base checkpoint as safetensors, the architecture in its metadata; returns its sha256."""
    meta = {"family": "scnet", "kwargs": json.dumps({k: v for k, v in kwargs.items() if k != "sources"}),
            "sources": json.dumps(model.sources), "samplerate": str(samplerate), "segment": str(segment)}
    return write_model(model, path, meta)


def load_safetensors(path: Path) -> tuple[SCNet, dict]:
    model, meta = read_model(path, "scnet", "SCNet",
                             lambda meta, state: new_model(json.loads(meta["sources"]), json.loads(meta["kwargs"]),
                                                           str(path)))
    return model, {"kwargs": json.loads(meta["kwargs"]), "sources": list(model.sources),
                   "samplerate": int(meta["samplerate"]), "segment": float(meta["segment"])}


def load_msst(path: Path, config: Path) -> tuple[SCNet, dict]:
    """An MSST SCNet checkpoint with the MSST config YAML it was trained with."""
    info = msst_io.read_config(config)
    kwargs = {k: v for k, v in info["kwargs"].items() if k != "sources"}
    model = new_model(info["sources"], kwargs, f"model.config: {config}")
    state = msst_io.load_state(path)
    msst_io.check_keys(model, state, str(path))
    model.load_state_dict(state)
    return model, {**info, "kwargs": kwargs}


class SCNetFamily(Separator):
    """SCNet, MSST's model. LoRA adapts its convolutions, its dual-path BiLSTMs (through
    ``trainables.lora_layers.LoraLSTM``; three quarters of the parameters) and their
    projections. The depthwise convolutions of the encoder's residual blocks are left out: PEFT
    cannot merge a grouped convolution's update, and each has only kernel x channels weights.
    New sources' outputs come from their parents' block of the last decoder stage."""

    name = "scnet"
    embedded = EMBEDDED
    checkpoint_suffixes = (".safetensors", ".ckpt", ".th", ".pt")
    default_targets = ["encoder.*.SDlayer.convs.*", "encoder.*.conv_modules.*.layers.*.1",
                       "encoder.*.conv_modules.*.layers.*.6", "encoder.*.globalconv",
                       "separation_net.dp_modules.*.lstm_layers.*", "separation_net.dp_modules.*.linear_layers.*",
                       "decoder.*.0.conv", "decoder.*.1.convtrs.*"]

    scratch_sources, scratch_kwargs = EMBEDDED_SOURCES, EMBEDDED_KWARGS

    def new_base(self, sources: list[str], kwargs: dict) -> SeparatorBase:
        info = {"kwargs": kwargs, "sources": sources, "samplerate": EMBEDDED_SAMPLERATE, "segment": EMBEDDED_SEGMENT}
        return self._base(new_model(sources, kwargs), info, {"name": "scratch", "sha256": None})

    def load_base(self, ref: str | Path, name: str, cfg: dict) -> SeparatorBase:
        if not isinstance(ref, Path):
            raise RankhouseError(f"model.base: {name!r}: the scnet family knows no pretrained names; give embedded, "
                                 "scratch or a checkpoint file")
        if ref.suffix == ".safetensors":
            model, info = load_safetensors(ref)
            return self._base(model.eval(), info, {"name": name, "sha256": sha256(ref)})
        if not cfg.get("config"):
            raise RankhouseError(f"model.config: {ref} is an MSST checkpoint; give its MSST config YAML as "
                                 "model.config")
        config = Path(str(cfg["config"])).expanduser()
        model, info = load_msst(ref, config)
        return self._base(model.eval(), info, msst_io.identity(name, ref, config))

    @staticmethod
    def _base(model: SCNet, info: dict, identity: dict) -> SeparatorBase:
        return SeparatorBase(model=model, sources=list(model.sources), samplerate=int(info["samplerate"]),
                             segment=float(info["segment"]), identity=identity, config=info)

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """The encoder stages, the dual-path BiLSTM network, and the decoder stages."""
        return {"encoder": ["encoder.*"], "lstm": ["separation_net.*"], "decoder": ["decoder.*"]}

    @staticmethod
    def heads(model: SCNet) -> list[str]:
        return [f"decoder.{len(model.decoder) - 1}.1"]

    def rebuild_heads(self, base: SeparatorBase, sources: list[str],
                      parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        model = new_model(sources, base.config["kwargs"])
        heads = self.heads(model)  # each source owns dims[0] channels of it: its channels' real, imaginary
        copy_blocks(base.model, model, heads, parent_indices(base, sources, parents), len(base.sources))
        return model.eval(), heads

    def save_model(self, model: nn.Module, path, base: SeparatorBase) -> str:
        c = base.config
        return save_checkpoint(model, Path(path), c["kwargs"], c["samplerate"], c["segment"])

    def save_msst(self, model: nn.Module, path, config, base: SeparatorBase) -> str:
        c = base.config
        torch.save(plain_state(model), str(path))
        options = {**DEFAULTS, **c["kwargs"], "sources": list(model.sources)}
        options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
        Path(config).write_text(msst_io.write_yaml(options, list(model.sources), c["samplerate"], c["segment"],
                                                   model.audio_channels, base.identity.get("config")))
        return sha256(Path(path))
