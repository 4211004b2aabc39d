"""Reading and writing Music-Source-Separation-Training (MSST) checkpoints and config YAMLs, for
the families of MSST's models (``bs_roformer``, ``scnet``): a checkpoint is a plain state dict
(read with ``weights_only=True``, never as a pickle), the config's ``model:`` section is the
architecture, ``audio.sample_rate`` the rate, ``training.instruments`` the sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from trainables.checkpoint import sha256
from trainables.errors import RankhouseError


def read_yaml(path: Path) -> dict:
    """An MSST config file as a dict; MSST writes some lists as ``!!python/tuple``: read as lists."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: loader.construct_sequence(node))
    if not path.is_file():
        raise RankhouseError(f"model.config: {path}: no such file (the MSST config YAML of the checkpoint)")
    try:
        return yaml.load(path.read_text(), Loader=Loader) or {}
    except yaml.YAMLError as exc:
        raise RankhouseError(f"model.config: {path}: not YAML ({str(exc).splitlines()[0]})") from None


def read_config(path: Path) -> dict:
    """The model options, rate, segment and sources of an MSST training config."""
    raw = read_yaml(path)
    sections = [raw.get(k) if isinstance(raw, dict) else None for k in ("model", "audio", "training")]
    if not all(isinstance(x, dict) for x in sections) or "sample_rate" not in sections[1] or \
            not isinstance(sections[2].get("instruments"), list) or not sections[2]["instruments"]:
        raise RankhouseError(f"model.config: {path}: expected MSST's model:, audio.sample_rate and "
                             "training.instruments sections")
    model, audio, training = dict(sections[0]), sections[1], sections[2]
    sources = list(training["instruments"])
    if training.get("target_instrument"):
        sources = [training["target_instrument"]]
    samplerate = int(audio["sample_rate"])
    segment = float(audio.get("chunk_size", 3 * samplerate)) / samplerate
    return {"kwargs": model, "sources": sources, "samplerate": samplerate, "segment": segment}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, read safely; a ``state_dict`` wrapper and DataParallel's
    ``module.`` prefix are unwrapped, as MSST does."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RankhouseError(f"{path}: cannot be read safely as a state dict ({str(exc).splitlines()[0][:200]})") \
            from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RankhouseError(f"{path}: not a state dict of tensors")
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_keys(model: nn.Module, state: dict, where: str) -> None:
    """One line naming what does not fit, before ``load_state_dict``'s multi-line error."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{name}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise RankhouseError(f"{where}: does not fit the architecture of model.config ({'; '.join(parts)})")


def identity(name: str, checkpoint: Path, config: Path) -> dict:
    """A base read from an MSST checkpoint and its config YAML. The config decides the sources,
    their order and the rate, so the digest covers both files."""
    digest = hashlib.sha256(f"{sha256(checkpoint)}:{sha256(config)}".encode()).hexdigest()
    return {"name": name, "sha256": digest, "config": str(config)}


def write_yaml(model: dict, sources: list[str], samplerate: int, segment: float, channels: int,
               original: str | None) -> str:
    """The MSST config of a model: the base's own MSST config when it had one (its training,
    augmentation and inference settings kept), with this model's options and sources. Options
    MSST types as tuples must already be tuples in ``model`` (written as ``!!python/tuple``)."""
    import yaml

    raw = read_yaml(Path(original)) if original else {}
    raw["audio"] = {**raw.get("audio", {}), "sample_rate": int(samplerate), "num_channels": channels,
                    "chunk_size": int(round(segment * samplerate))}
    raw["model"] = model
    training = dict(raw.get("training", {}))
    if len(sources) == 1:  # MSST's single-stem models name their stem as the target
        known = training.get("instruments") or []
        training.update(instruments=known if sources[0] in known else sources, target_instrument=sources[0])
    else:
        training.update(instruments=sources, target_instrument=None)
    raw["training"] = training
    raw.setdefault("inference", {"batch_size": 1, "num_overlap": 4})
    return yaml.dump(raw, Dumper=yaml.Dumper, sort_keys=False)
