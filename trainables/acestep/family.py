"""The ACE-Step family: ``TextToMusic`` bases (``model.py``), adapted with LoRA, for the
text-to-music task.

Bases: ``embedded`` (``trainables/assets/acestep_embedded.safetensors``, trained by
``python -m platform.base --family acestep``), ``scratch`` (``model.kwargs``), a rankhouse
``.safetensors`` of this family (``platform.export --merged`` writes one), or a user's ACE-Step
folder in diffusers' layout (``pipeline.py``: its DiT, VAE and text side; read from disk only).

LoRA targets by default: the seed trainer's, ``to_q``, ``to_k``, ``to_v`` and ``to_out.0`` of
every attention (self and cross) of the transformer. The MLPs, the timestep embeddings and the
tag encoder are reached through ``layer_ranks`` and ``lora.placement``'s groups.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trainables.acestep import pipeline
from trainables.acestep.latent import MelLatent
from trainables.acestep.model import TextToMusic as TextToMusicModel
from trainables.acestep.task import TextToMusic
from trainables.checkpoint import read_model, sha256, write_model
from trainables.errors import RankhouseError
from trainables.family import Base, Family
from trainables.schema import Key

ASSET = Path(__file__).resolve().parent.parent / "assets" / "acestep_embedded.safetensors"
LAYERS = "transformer.layers.*"


@dataclass(kw_only=True)
class AceStepBase(Base):
    latent: MelLatent | pipeline.VaeLatent


def save_checkpoint(model: TextToMusicModel, path: Path, latent: MelLatent) -> str:
    meta = {"family": "acestep", "kwargs": json.dumps(model.kwargs), "latent": json.dumps(latent.spec)}
    return write_model(model, path, meta)


def load_checkpoint(path: Path) -> tuple[TextToMusicModel, MelLatent]:
    model, meta = read_model(path, "acestep", "ACE-Step",
                             lambda meta, state: TextToMusicModel(**json.loads(meta["kwargs"])))
    return model, MelLatent(**json.loads(meta["latent"]))


class AceStepFamily(Family):
    name = "acestep"
    task = TextToMusic()
    embedded = ASSET
    options = {"model": {"kwargs": Key({}, "a scratch base's architecture: transformer (AceStepTransformer1DModel "
                                           "options) and text (the tag encoder's dim, layers, heads)", type=dict)}}
    default_targets = [f"{LAYERS}.to_q", f"{LAYERS}.to_k", f"{LAYERS}.to_v", f"{LAYERS}.to_out.0"]

    def resolve_base(self, name: str):
        """A folder with ``model_index.json`` is an ACE-Step folder; the rest as every family's."""
        path = Path(str(name)).expanduser()
        if "/" in str(name) and not path.exists():
            raise RankhouseError(f"model.base: {path}: no such file or folder")
        if str(name) not in ("embedded", "scratch") and path.is_dir():
            if not pipeline.is_folder(path):
                raise RankhouseError(f"model.base: {path}: a folder without {pipeline.INDEX}; give an ACE-Step folder "
                                     "in diffusers' layout (AceStepPipeline.save_pretrained writes one)")
            return path
        return super().resolve_base(name)

    def build_base(self, cfg: dict) -> AceStepBase:
        name = str(cfg.get("base", "embedded"))
        ref = self.resolve_base(name)
        if isinstance(ref, Path) and ref.is_dir():
            pipe, folder = pipeline.load(ref.resolve()), ref.resolve()
            identity = pipeline.identity(folder)
            return AceStepBase(model=pipeline.PipelineTextToMusic(pipe, folder).eval(), identity=identity,
                               latent=pipeline.VaeLatent(pipe, pipeline.digest(folder / "vae", whole=True)),
                               config={"folder": str(folder)})
        if ref == "scratch":
            latent = MelLatent()
            model = TextToMusicModel(channels=latent.n_mels, **dict(cfg.get("kwargs") or {}))
            identity = {"name": "scratch", "sha256": None}
        elif isinstance(ref, Path):
            (model, latent), identity = load_checkpoint(ref), {"name": name, "sha256": sha256(ref)}
        else:
            raise RankhouseError(f"model.base: {name!r}: the acestep family knows no pretrained names; give "
                                 "embedded, scratch or a checkpoint file")
        return AceStepBase(model=model.eval(), identity=identity, latent=latent, config={"kwargs": model.kwargs})

    def layer_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """The attentions (self and cross), the MLPs, the timestep embeddings, the tag encoder."""
        return {"self_attention": [f"{LAYERS}.self_attn.*"], "cross_attention": [f"{LAYERS}.cross_attn.*"],
                "mlp": [f"{LAYERS}.mlp.*"], "timestep": ["transformer.time_embed*"],
                "text": ["text_encoder.encoder.*"]}

    def save_model(self, model: nn.Module, path, base: AceStepBase) -> str:
        if isinstance(model, pipeline.PipelineTextToMusic):
            raise RankhouseError(f"{path}: a model on an ACE-Step folder is not written whole; keep its adapter, "
                                 "which loads onto the folder")
        return save_checkpoint(model, Path(path), base.latent)
