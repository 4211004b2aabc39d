"""The structure family: ``StructureNet`` bases (``trainables/structure/model.py``), adapted
with LoRA, for the structure task.

Bases: ``embedded`` (``trainables/assets/structure_embedded.safetensors``, trained by
``python -m platform.base --family structure``), ``scratch`` (``model.backbone`` and
``model.kwargs``), a rankhouse ``.safetensors`` (the architecture in its metadata;
``platform.export --merged`` writes one), or a MERT/HuBERT checkpoint folder (``mert.py``):
its heads are new, the same in every trial (seeded), and train fully beside the adapters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.checkpoint import read_model, sha256, write_model
from trainables.errors import RankhouseError
from trainables.family import Base, Family
from trainables.schema import Key
from trainables.structure import mert
from trainables.structure.model import StructureNet
from trainables.structure.task import Structure

ASSET = Path(__file__).resolve().parent.parent / "assets" / "structure_embedded.safetensors"


@dataclass(kw_only=True)
class StructureBase(Base):
    samplerate: int
    hop: int  # samples per output frame at ``samplerate``


def save_checkpoint(model: StructureNet, path: Path) -> str:
    meta = {"family": "structure", "backbone": model.kind, "kwargs": json.dumps(model.kwargs)}
    return write_model(model, path, meta)


def load_checkpoint(path: Path) -> StructureNet:
    model, _ = read_model(path, "structure", "structure",
                          lambda meta, state: StructureNet(meta["backbone"], **json.loads(meta["kwargs"])))
    return model


class StructureFamily(Family):
    name = "structure"
    task = Structure()
    embedded = ASSET
    options = {"model": {"backbone": Key("cnn", "the backbone a scratch base is built with: cnn (a mel CNN) or mert "
                                                "(HuBERT's architecture on raw audio)",
                                         rule=lambda v: v in ("cnn", "mert"), expect="cnn or mert"),
                         "kwargs": Key({}, "the backbone's architecture options for a scratch base", type=dict)}}
    # cnn: the temporal layers, the attention and the heads; the mel front end's 2-D
    # convolutions are left to layer_ranks (they see only local time-frequency patches)
    default_targets = ["backbone.frontend.proj", "backbone.tcn.*.conv", "backbone.tcn.*.mix",
                       "backbone.context.*.to_*", "backbone.context.*.ff*", "head"]

    def build_base(self, cfg: dict) -> StructureBase:
        name = str(cfg.get("base", "embedded"))
        if name not in ("embedded", "scratch") and Path(name).expanduser().is_dir():
            return self.mert_base(Path(name).expanduser(), name)
        ref = self.resolve_base(name)
        if ref == "scratch":
            model = StructureNet(str(cfg.get("backbone") or "cnn"), **dict(cfg.get("kwargs") or {}))
            identity = {"name": "scratch", "sha256": None}
        elif isinstance(ref, Path):
            model, identity = load_checkpoint(ref), {"name": name, "sha256": sha256(ref)}
        else:
            raise RankhouseError(f"model.base: {name!r}: the structure family knows no pretrained names; give "
                                 "embedded, scratch or a checkpoint file")
        return StructureBase(model=model.eval(), identity=identity, samplerate=model.samplerate, hop=model.hop,
                             config={"backbone": model.kind, "kwargs": model.kwargs})

    @staticmethod
    def mert_base(folder: Path, name: str) -> StructureBase:
        model = StructureNet("mert", folder=str(folder))
        g = torch.Generator().manual_seed(0)  # new heads, the same in every process that builds this base
        with torch.no_grad():
            model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=g) * 0.02)
            model.head.bias.zero_()
        weights = next((folder / f for f in ("model.safetensors", "pytorch_model.bin") if (folder / f).is_file()))
        return StructureBase(model=model.eval(), identity={"name": name, "sha256": sha256(weights)},
                             samplerate=model.samplerate, hop=model.hop,
                             config={"backbone": "mert", "kwargs": model.kwargs, "new_heads": True})

    def adapt(self, base: StructureBase, model_cfg: dict) -> tuple[nn.Module, list[str]]:
        model, _ = super().adapt(base, model_cfg)
        return model, ["head"] if base.config.get("new_heads") else []

    def apply_lora(self, model: nn.Module, spec, modules_to_save: list[str] = ()):
        from trainables import lora

        targets = (mert.TARGETS + ["head"]) if model.kind == "mert" else self.default_targets
        targets = [t for t in targets if t not in modules_to_save]
        return lora.apply(model, spec, modules_to_save, targets, self.rank_scales, self.layer_groups(model))

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """cnn: the mel front end, the dilated convolutions, the attention blocks and the heads;
        mert: the feature encoder, the attention and feed-forward layers, and the heads."""
        if getattr(model, "kind", "cnn") == "mert":
            layers = "backbone.model.encoder.layers.*"
            return {"frontend": ["backbone.model.feature_*"], "attention": [f"{layers}.attention.*"],
                    "feed_forward": [f"{layers}.feed_forward.*"], "head": ["head"]}
        return {"frontend": ["backbone.frontend.*"], "tcn": ["backbone.tcn.*"],
                "context": ["backbone.context.*"], "head": ["head"]}

    def save_model(self, model: nn.Module, path, base: StructureBase) -> str:
        return save_checkpoint(model, Path(path))
