"""An adapter bundle: a PEFT adapter folder plus ``rankhouse.json``, what it was trained on.

A trial logs its bundle as the run's ``adapter`` artifact; promotion registers that folder;
``separate`` and ``export`` load it from a ``models:/`` or ``runs:/`` URI or a local folder.
The manifest names the family, the model section (base, and the task's keys: a separator's
sources and parents), the base's identity (name + sha256) and what the task records to read
data for it (``Task.manifest``), so an adapter is never applied to another base: the base is
rebuilt from the manifest (or a path the user gives) and its sha256 must match.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from trainables import lora
from trainables.errors import RankhouseError
from trainables.family import Base, Family, get_family

MANIFEST = "rankhouse.json"
FORMAT = 1


def manifest(setup) -> dict:
    """What a bundle needs to be rebuilt: written once per trial beside its adapter."""
    cfg = setup.cfg
    return {
        "format": FORMAT,
        "family": cfg["model"]["family"],
        "model": dict(cfg["model"]),
        "base": dict(setup.base.identity),
        "trainable_params": lora.trainable_parameters(setup.model),
        **setup.task.manifest(cfg, setup.base),
    }


@dataclass
class Loaded:
    model: nn.Module  # PeftModel over the base adapted as the study adapted it, in eval mode
    manifest: dict
    base: Base
    family: Family

    def reference(self) -> nn.Module:
        """The base adapted the same way (e.g. heads for the same sources), with no adapter: a
        model of its own, never the one the adapter was injected into."""
        model, _ = self.family.adapt(self.base, self.manifest["model"])
        return model.requires_grad_(False).eval()


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise RankhouseError(f"{folder}: no {MANIFEST}; not a rankhouse adapter bundle (a trial's 'adapter' artifact)")
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict) and data.get("format") == FORMAT and data["family"] and data["model"]
    except (json.JSONDecodeError, UnicodeDecodeError, AssertionError, KeyError):
        raise RankhouseError(f"{path}: corrupt or of another format (expected format {FORMAT})") from None
    return data


def check_adapter_files(folder: Path) -> None:
    """Refuse a missing, truncated or tampered adapter before anything is built or registered."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    lora.load_config(folder)
    weights = Path(folder) / "adapter_model.safetensors"
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RankhouseError(f"{weights}: corrupt adapter weights ({' '.join(str(exc).split())[:200]})") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if not tensors or bad:
        raise RankhouseError(f"{weights}: " + (f"non-finite values in {bad[0]}" if bad else "no tensors"))


def build_base(info: dict, base: str | None = None) -> Base:
    """The manifest's base (or ``base``, e.g. the same weights at another path), identity-checked."""
    model_cfg = {**info["model"], **({"base": base} if base else {})}
    family = get_family(info["family"])
    built = family.build_base(model_cfg)
    want, have = info["base"].get("sha256"), built.identity.get("sha256")
    if want != have:
        raise RankhouseError(
            f"base {model_cfg['base']!r} has sha256 {str(have)[:12]}, but the adapter was trained on "
            f"{info['base'].get('name')!r} with sha256 {str(want)[:12]}; pass the same base weights (--base PATH)")
    return built


def load(folder: Path, base: str | None = None) -> Loaded:
    """Rebuild base -> the study's adaptation (e.g. source heads) -> adapter, checking every file first."""
    folder = Path(folder)
    info = read_manifest(folder)
    check_adapter_files(folder)
    built = build_base(info, base)
    family = get_family(info["family"])
    model, _ = family.adapt(built, info["model"])
    peft_model = lora.load(model.requires_grad_(False), folder)
    return Loaded(peft_model.eval(), info, built, family)
