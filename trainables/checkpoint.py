"""Trial checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint folder holds the PEFT adapter (``adapter/``) or, for full training, the whole
model (``model.safetensors``); the optimizer's tensors (``optimizer.safetensors``); and
``state.json`` (epoch, step, scheduler, RNG states, metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from typing import TYPE_CHECKING, Callable

from trainables.errors import RankhouseError

# torch and safetensors are imported where tensors are read or written: a trial process imports
# this module for its names alone until the loop trains (see trainables/trial.py)
if TYPE_CHECKING:
    import torch

STATE = "state.json"
OPTIMIZER = "optimizer.safetensors"
ADAPTER = "adapter"
MODEL = "model.safetensors"


def plain_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as safetensors can write it: tensors that share storage (the RoFormers
    share one rotary embedding between layers) are written as copies; loading copies the same
    values back into the shared one."""
    seen, out = set(), {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        key = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if key in seen else v.contiguous()
        seen.add(key)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_model(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> str:
    """A whole model as one safetensors file (a family's base checkpoint), written atomically,
    with what rebuilds it in ``metadata``; returns the file's sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(plain_state(model), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return sha256(path)


def read_model(path: Path, family: str, title: str,
               build: Callable[[dict[str, str], dict[str, torch.Tensor]], torch.nn.Module]
               ) -> tuple[torch.nn.Module, dict[str, str]]:
    """A base checkpoint that ``write_model`` wrote for ``family``, and its metadata.
    ``build(metadata, state)`` makes the model (and may refuse the file with its own
    RankhouseError). Any other failure (a corrupt file, missing metadata, weights of another
    architecture) is one line naming the file and the command that writes such a checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("family") != family:
            raise ValueError(f"metadata names family {meta.get('family')!r}")
        state = load_file(str(path))
        model = build(meta, state)
        model.load_state_dict(state)
    except RankhouseError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise RankhouseError(f"{path}: not a rankhouse {title} checkpoint ({type(exc).__name__}: {first}); "
                             f"write one with python -m platform.base --family {family}") from None
    return model, meta


def save_weights(model: torch.nn.Module, folder: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import save_file

    from trainables import lora

    if isinstance(model, PeftModel):
        lora.save(model, folder / ADAPTER)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        save_file(plain_state(model), str(folder / MODEL))


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file

    from trainables import lora

    if isinstance(model, PeftModel):
        lora.load_weights(model, folder / ADAPTER)
    else:
        model.load_state_dict(load_file(str(folder / MODEL)))


def _optimizer_split(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    import torch

    tensors, plain = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for idx, entry in state_dict["state"].items():
        plain["state"][str(idx)] = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain["state"][str(idx)][key] = value
    return tensors, plain


def _optimizer_join(tensors: dict[str, torch.Tensor], plain: dict) -> dict:
    state = {int(idx): dict(entry) for idx, entry in plain["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"param_groups": plain["param_groups"], "state": state}


def save(folder: Path, optimizer, scheduler, epoch: int, step: int, sampler_state: dict | None,
         metrics: dict, ranks: dict[str, int] | None = None) -> None:
    """``ranks``: the adapter's per-module ranks, which a resumed ``gradient`` trial (ranks
    reallocated during its first epoch) rebuilds before loading the weights."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors, plain = _optimizer_split(optimizer.state_dict())
    save_file(tensors, str(folder / OPTIMIZER))
    (folder / STATE).write_text(json.dumps({
        "epoch": epoch, "step": step, "optimizer": plain, "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state().tolist(), "sampler": sampler_state}, "metrics": metrics,
        "ranks": ranks,
    }))


def load(folder: Path) -> tuple[dict, dict]:
    """(optimizer state_dict, state) of a checkpoint folder."""
    from safetensors.torch import load_file

    state = json.loads((folder / STATE).read_text())
    optimizer = _optimizer_join(load_file(str(folder / OPTIMIZER)), state.pop("optimizer"))
    return optimizer, state
