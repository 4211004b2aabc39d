"""HT-Demucs (``demucs.htdemucs.HTDemucs``) as a rankhouse model family.

Bases: ``embedded`` (a small 4-stem HT-Demucs trained by ``python -m platform.base`` and
shipped under ``trainables/assets/``), a local checkpoint path (``.safetensors`` written by
rankhouse, or a demucs ``.th`` package read with ``weights_only=True``), or a pretrained
demucs name (``htdemucs``, ``htdemucs_ft``, ...) whose weights are already in torch hub's cache.

Source heads: the last frequency and time decoders' transposed convolutions emit one block of
channels per source. ``adapt`` rebuilds them for the target sources, initialising a
new source from its parent (kick and hihat from drums), and returns them as modules to train
fully; shared sources keep their exact weights.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import torch
from torch import nn

from trainables.checkpoint import read_model, sha256, write_model
from trainables.errors import RankhouseError
from trainables.separator import Separator, SeparatorBase, copy_blocks, parent_indices

ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED = ASSETS / "htdemucs_embedded.safetensors"
HUB_CHECKPOINTS = Path(torch.hub.get_dir()) / "checkpoints"  # where demucs' downloads land

# the embedded base's architecture: depth 4 with nfft 4096 (shallower models attend over
# thousands of frequency bins and run out of memory), 16 channels, 22.05 kHz, 2 transformer layers
EMBEDDED_KWARGS = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=3,
                       t_layers=2, bottom_channels=0)
EMBEDDED_SOURCES = ["drums", "bass", "other", "vocals"]


def new_model(sources: list[str], kwargs: dict) -> nn.Module:
    from demucs.htdemucs import HTDemucs

    return HTDemucs(list(sources), **kwargs)


def save_checkpoint(model: nn.Module, path: Path, kwargs: dict, extra: dict | None = None) -> str:
    """Write a base checkpoint as safetensors, architecture in the metadata; returns its sha256."""
    meta = {"family": "htdemucs", "sources": json.dumps(list(model.sources)), "kwargs": json.dumps(kwargs)}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    return write_model(model, path, meta)


def load_safetensors(path: Path) -> tuple[nn.Module, dict]:
    model, meta = read_model(path, "htdemucs", "HT-Demucs",
                             lambda meta, state: new_model(json.loads(meta["sources"]), json.loads(meta["kwargs"])))
    return model, json.loads(meta["kwargs"])


def load_demucs_package(path: Path) -> tuple[nn.Module, dict]:
    """A demucs ``.th`` package ({klass, args, kwargs, state}), unpickled with weights_only=True."""
    from demucs.htdemucs import HTDemucs

    try:
        with torch.serialization.safe_globals([HTDemucs, Fraction]):
            package = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RankhouseError(f"{path}: cannot be read safely as a demucs checkpoint ({str(exc).splitlines()[0]}); "
                             "only HTDemucs packages are accepted") from None
    if not isinstance(package, dict) or package.get("klass") is not HTDemucs:
        raise RankhouseError(f"{path}: not an HTDemucs package (bags of models are not supported; pass one member)")
    kwargs = dict(package["kwargs"])
    sources = kwargs.pop("sources")
    model = HTDemucs(sources, *package.get("args", ()), **kwargs)
    model.load_state_dict(package["state"])
    return model, kwargs


def find_pretrained(name: str) -> Path:
    """The cached weights of a pretrained demucs model; no download is ever attempted."""
    import yaml
    from demucs import pretrained

    remote = Path(pretrained.__file__).parent / "remote"
    spec = remote / f"{name}.yaml"
    if not spec.is_file():
        names = sorted(p.stem for p in remote.glob("*.yaml"))
        raise RankhouseError(f"model.base: unknown pretrained model {name!r}; known: {', '.join(names)}, "
                             "or 'embedded', or a checkpoint path")
    models = yaml.safe_load(spec.read_text()).get("models", [])
    if len(models) != 1:
        raise RankhouseError(f"model.base: {name} is a bag of {len(models)} models; pass one member's "
                             f"checkpoint path from {HUB_CHECKPOINTS} instead")
    files = [line.strip() for line in (remote / "files.txt").read_text().splitlines() if line.startswith(models[0])]
    expected = files[0] if files else f"{models[0]}-<checksum>.th"
    path = HUB_CHECKPOINTS / expected
    if not path.is_file():
        raise RankhouseError(f"model.base: weights of {name} are not on this machine; put {expected} in "
                             f"{HUB_CHECKPOINTS} (rankhouse never downloads at run time)")
    return path


class HTDemucsFamily(Separator):
    name = "htdemucs"
    embedded = EMBEDDED
    checkpoint_suffixes = (".safetensors", ".th")  # rankhouse's, and demucs' own
    # the layers that carry the model: each encoder/decoder's main conv and 1x1 rewrite, and the
    # cross-domain transformer. The DConv residual branches are left out by default: they are
    # bottlenecks of a few channels (a 16-channel layer's branch has 2), so any useful rank
    # would exceed their min(fan_in, fan_out).
    default_targets = ["encoder.*.conv", "encoder.*.rewrite", "tencoder.*.conv", "tencoder.*.rewrite",
                       "decoder.*.conv_tr", "decoder.*.rewrite", "tdecoder.*.conv_tr", "tdecoder.*.rewrite",
                       "crosstransformer.*"]

    scratch_sources, scratch_kwargs = EMBEDDED_SOURCES, EMBEDDED_KWARGS

    def new_base(self, sources: list[str], kwargs: dict) -> SeparatorBase:
        model = new_model(sources, kwargs)
        return SeparatorBase(model=model, sources=sources, samplerate=int(model.samplerate),
                             segment=float(model.segment), identity={"name": "scratch", "sha256": None},
                             config={"kwargs": kwargs})

    def load_base(self, ref: str | Path, name: str, cfg: dict) -> SeparatorBase:
        path = ref if isinstance(ref, Path) else find_pretrained(ref)
        model, kwargs = load_safetensors(path) if path.suffix == ".safetensors" else load_demucs_package(path)
        model.eval()
        return SeparatorBase(model=model, sources=list(model.sources), samplerate=int(model.samplerate),
                             segment=float(model.segment), identity={"name": name, "sha256": sha256(path)},
                             config={"kwargs": kwargs})

    def save_model(self, model: nn.Module, path, base: SeparatorBase) -> str:
        return save_checkpoint(model, Path(path), base.config["kwargs"])

    def rank_scales(self, names: list[str]) -> dict[str, float]:
        """The heuristic allocation: x2 for the first encoder of each branch falling linearly to x1
        for the last, x2 for the cross-domain transformer (where the two branches meet), x1 for
        the first decoder falling linearly to x0.5 for the last (next to the output heads, which
        train fully when sources change and are never adapted). Why: the early encoders and
        the transformer carry the features a new domain re-weights, while the last decoders
        mostly map features to waveforms/spectrograms."""
        depth = {kind: 1 + max((int(m.group(2)) for n in names if (m := re.match(rf"({kind})\.(\d+)\.", n))),
                               default=0) for kind in ("encoder", "tencoder", "decoder", "tdecoder")}
        scales = {}
        for n in names:
            m = re.match(r"(t?encoder|t?decoder)\.(\d+)\.", n)
            if m:
                pos = int(m.group(2)) / max(depth[m.group(1)] - 1, 1)  # 0 at the first layer, 1 at the last
                scales[n] = 2.0 - pos if "encoder" in m.group(1) else 1.0 - 0.5 * pos
            else:
                scales[n] = 2.0 if n.startswith("crosstransformer.") else 1.0
        return scales

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """The five branches of HT-Demucs: frequency (spectrogram) and time (waveform) encoders,
        the cross-domain transformer, frequency and time decoders."""
        return {"encoder": ["encoder.*"], "tencoder": ["tencoder.*"], "transformer": ["crosstransformer.*"],
                "decoder": ["decoder.*"], "tdecoder": ["tdecoder.*"]}

    @staticmethod
    def heads(model: nn.Module) -> list[str]:
        return [f"decoder.{len(model.decoder) - 1}.conv_tr", f"tdecoder.{len(model.tdecoder) - 1}.conv_tr"]

    def rebuild_heads(self, base: SeparatorBase, sources: list[str],
                      parents: dict[str, str]) -> tuple[nn.Module, list[str]]:
        model = new_model(sources, base.config["kwargs"])
        heads = self.heads(model)
        copy_blocks(base.model, model, heads, parent_indices(base, sources, parents), len(base.sources))
        model.eval()
        return model, heads
