"""BS-RoFormer and Mel-Band RoFormer, the models of ZFTurbo's Music-Source-Separation-Training
(MSST), as one rankhouse model family. The modules are rankhouse's own (``trainables.roformer``),
written to compute what MSST's compute, with MSST's state-dict key names.

Bases
- ``embedded``: a small 4-stem BS-RoFormer trained by ``python -m platform.base --family
  bs_roformer`` and shipped under ``trainables/assets/``.
- a rankhouse checkpoint (``.safetensors`` with the architecture in its metadata: the
  embedded base, ``platform.export --merged`` output).
- an MSST checkpoint (``.ckpt``/``.pth``/``.pt``, a bare state dict read with
  ``torch.load(weights_only=True)``) plus ``model.config``: the MSST YAML it was trained with.
  Its ``model:`` section is the architecture (``num_bands`` means Mel-Band RoFormer, else
  BS-RoFormer) and is passed to the model as it is: an option MSST's classes do not have is an
  error naming it. ``audio.sample_rate`` is the rate, ``training.instruments`` /
  ``target_instrument`` the sources. The keys load as they are, with no translation.

Every model returns (B, S, C, T) at the input's length, the shape every family's model has
(MSST squeezes a single stem; see ``trainables.roformer`` for the length).

Loss: the protocol's L1 on waveforms. MSST adds L1 on five multi-resolution STFTs; measured
here it takes a 4 x 3 s training step of the embedded base from 1.3 s to 3.9 s on 2 cores, so
it is left out.

Source heads: each stem has its own mask estimator. ``adapt`` builds one per target
source, a new source's (kick, hihat) as a copy of its parent's (drums), and trains only the
new ones fully; shared sources keep their exact estimators.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from torch import nn

from trainables import msst_io, roformer
from trainables.checkpoint import plain_state, read_model, sha256, write_model
from trainables.errors import RankhouseError
from trainables.separator import SeparatorBase, Separator, parent_indices
from trainables.htdemucs import ASSETS

EMBEDDED = ASSETS / "bs_roformer_embedded.safetensors"
EMBEDDED_SOURCES = ["drums", "bass", "other", "vocals"]
EMBEDDED_SAMPLERATE = 22050
EMBEDDED_SEGMENT = 3.0


def _bands(total: int, sizes: list[tuple[int, int]]) -> list[int]:
    """Band widths (narrow at low frequencies, as in the paper), the last band taking the rest."""
    widths = [w for w, n in sizes for _ in range(n)]
    return [*widths, total - sum(widths)]


# the embedded base: 2048-point STFT with a 512 hop at 22.05 kHz (1025 bins in 27 bands), width
# 64, two time+frequency layer pairs, one-layer mask estimators. Measured here: 1.1-1.3 s per
# 4 x 3 s training step on 2 cores, against 2.7 s for a 1024/256 STFT of the same width.
EMBEDDED_KWARGS = dict(dim=64, depth=2, stereo=True, num_stems=4, time_transformer_depth=1,
                       freq_transformer_depth=1, freqs_per_bands=_bands(1025, [(8, 8), (16, 8), (32, 6), (96, 4)]),
                       dim_head=16, heads=4, stft_n_fft=2048, stft_hop_length=512, stft_win_length=2048,
                       mask_estimator_depth=1)
ARCHS = tuple(roformer.ARCHITECTURES)


def new_model(arch: str, kwargs: dict, where: str = "bs_roformer") -> nn.Module:
    """The model of ``arch`` from its MSST ``model:`` options; ``where`` names them in errors."""
    if arch not in roformer.ARCHITECTURES:
        raise RankhouseError(f"{where}: unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    unknown = sorted(set(kwargs) - roformer.options(arch))
    if unknown:
        raise RankhouseError(f"{where}: {', '.join(unknown)}: not an option of MSST's "
                             f"{roformer.ARCHITECTURES[arch].__name__}; remove it or check the spelling")
    try:
        return roformer.ARCHITECTURES[arch](**kwargs)
    except (TypeError, ValueError) as exc:  # a missing dim/depth, band widths that miss the STFT
        raise RankhouseError(f"{where}: cannot build this {arch} ({' '.join(str(exc).split())[:200]})") from None


def save_checkpoint(model: nn.Module, path: Path, arch: str, kwargs: dict, sources: list[str], samplerate: int,
                    segment: float) -> str:
    """A base checkpoint as safetensors, architecture in the metadata; returns its sha256."""
    meta = {"family": "bs_roformer", "arch": arch, "kwargs": json.dumps(kwargs), "sources": json.dumps(list(sources)),
            "samplerate": str(samplerate), "segment": str(segment)}
    return write_model(model, path, meta)


def load_safetensors(path: Path) -> tuple[nn.Module, dict]:
    def build(meta: dict, state: dict) -> nn.Module:
        if any(".branch." in k for k in state):
            raise RankhouseError(
                f"{path}: written by rankhouse for the bs-roformer package's modules, which do not compute "
                "what MSST computes; this model cannot be reproduced. Retrain it from the current embedded "
                "base, or pass it to python -m platform.base --init as a starting point")
        return new_model(meta["arch"], json.loads(meta["kwargs"]), str(path))

    model, meta = read_model(path, "bs_roformer", "BS-RoFormer", build)
    return model, {"arch": meta["arch"], "kwargs": json.loads(meta["kwargs"]), "sources": json.loads(meta["sources"]),
                   "samplerate": int(meta["samplerate"]), "segment": float(meta["segment"])}


def read_msst_config(path: Path) -> dict:
    """Architecture, rate, segment and sources from an MSST training config."""
    info = msst_io.read_config(path)
    return {**info, "arch": "mel_band_roformer" if "num_bands" in info["kwargs"] else "bs_roformer"}


def load_msst(path: Path, config: Path) -> tuple[nn.Module, dict]:
    info = read_msst_config(config)
    state = msst_io.load_state(path)
    model = new_model(info["arch"], {**info["kwargs"], "num_stems": len(info["sources"])}, f"model.config: {config}")
    msst_io.check_keys(model, state, str(path))
    model.load_state_dict(state)
    return model, info


# MSST's classes type these as tuples (beartype checks them); its YAMLs write !!python/tuple
TUPLE_OPTIONS = ("freqs_per_bands", "multi_stft_resolutions_window_sizes")


def msst_yaml(kwargs: dict, sources: list[str], samplerate: int, segment: float, original: str | None) -> str:
    """The MSST config of a model (``msst_io.write_yaml``), band widths as MSST's tuples."""
    model = {k: tuple(v) if k in TUPLE_OPTIONS else v for k, v in kwargs.items()}
    return msst_io.write_yaml(model, sources, samplerate, segment, 2 if kwargs.get("stereo") else 1, original)


class BSRoformerFamily(Separator):
    name = "bs_roformer"
    embedded = EMBEDDED
    checkpoint_suffixes = (".safetensors", ".ckpt", ".pth", ".pt")  # rankhouse's, and MSST's
    # attention (fused qkv and output; the linear-attention blocks name them to_qkv.0 and
    # to_out.1) and feed-forward layers of every time and frequency transformer.
    # to_gates (dim -> heads) is left out: its min(fan_in, fan_out) is the head count, below
    # any useful rank; target it explicitly with a rank <= heads.
    default_targets = ["layers.*.to_qkv*", "layers.*.to_out.*", "layers.*.net.1", "layers.*.net.4"]

    scratch_sources, scratch_kwargs = EMBEDDED_SOURCES, EMBEDDED_KWARGS

    def new_base(self, sources: list[str], kwargs: dict) -> SeparatorBase:
        kwargs = {**kwargs, "num_stems": len(sources)}
        info = {"arch": "bs_roformer", "kwargs": kwargs, "sources": sources, "samplerate": EMBEDDED_SAMPLERATE,
                "segment": EMBEDDED_SEGMENT}
        return self._base(new_model("bs_roformer", kwargs), info, {"name": "scratch", "sha256": None})

    def load_base(self, ref: str | Path, name: str, cfg: dict) -> SeparatorBase:
        if not isinstance(ref, Path):
            raise RankhouseError(f"model.base: {name!r}: bs_roformer has no pretrained names; pass 'embedded', "
                                 "a rankhouse .safetensors checkpoint, or an MSST checkpoint with model.config")
        path = ref
        if path.suffix == ".safetensors":
            model, info = load_safetensors(path)
        else:
            if not cfg.get("config"):
                raise RankhouseError(f"model.base: {path} is an MSST checkpoint; set model.config to the MSST "
                                     "config YAML it was trained with (its model: section is the architecture)")
            config = Path(str(cfg["config"])).expanduser()
            model, info = load_msst(path, config)
            return self._base(model, info, msst_io.identity(name, path, config))
        return self._base(model, info, {"name": name, "sha256": sha256(path)})

    @staticmethod
    def _base(model: nn.Module, info: dict, identity: dict) -> SeparatorBase:
        model.sources = list(info["sources"])  # as HTDemucs has them: save_model reads the model's own
        model.eval()
        return SeparatorBase(model=model, sources=list(info["sources"]), samplerate=int(info["samplerate"]),
                             segment=float(info["segment"]), identity=identity, config=info)

    def rank_scales(self, names: list[str]) -> dict[str, float]:
        """The heuristic allocation: x2 for the first time+frequency layer pair falling linearly to
        x1 for the last; attention and feed-forward alike. The mask estimators are never adapted
        (new sources' estimators train fully)."""
        depth = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"layers\.(\d+)\.", n))), default=0)
        scales = {}
        for n in names:
            m = re.match(r"layers\.(\d+)\.", n)
            scales[n] = 2.0 - int(m.group(1)) / max(depth - 1, 1) if m else 1.0
        return scales

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """Each RoFormer layer is a time transformer then a frequency transformer (``layers.i.0``
        / ``layers.i.1``); with ``linear_transformer_depth`` > 0 a linear-attention transformer
        comes first (``layers.i.0``), so time and frequency are ``layers.i.1`` / ``layers.i.2``."""
        names = ["linear", "time", "freq"] if len(model.layers[0]) == 3 else ["time", "freq"]
        # one pattern per layer: a glob's * would also cross the dots into the inner layers' indices
        return {g: [f"layers.{i}.{j}.*" for i in range(len(model.layers))] for j, g in enumerate(names)}

    def save_model(self, model: nn.Module, path, base: SeparatorBase) -> str:
        c = base.config
        kwargs = {**c["kwargs"], "num_stems": len(model.sources)}
        return save_checkpoint(model, Path(path), c["arch"], kwargs, model.sources, c["samplerate"], c["segment"])

    def save_msst(self, model: nn.Module, path, config, base: SeparatorBase) -> str:
        sources = list(model.sources)
        c = base.config
        torch.save(plain_state(model), str(path))
        Path(config).write_text(msst_yaml({**c["kwargs"], "num_stems": len(sources)}, sources, c["samplerate"],
                                          c["segment"], base.identity.get("config")))
        return sha256(Path(path))

    def rebuild_heads(self, base: SeparatorBase, sources: list[str],
                      parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        origin = parent_indices(base, sources, parents)
        model = copy.deepcopy(base.model)
        model.mask_estimators = nn.ModuleList(copy.deepcopy(base.model.mask_estimators[i]) for i in origin)
        model.num_stems, model.sources = len(sources), sources
        model.eval()
        return model, [f"mask_estimators.{i}" for i, s in enumerate(sources) if s not in base.sources]
