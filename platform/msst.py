"""Music-Source-Separation-Training's ``lora:`` block, read in a search space.

MSST users bring configs like ``lora: {r: 8, lora_alpha: 16, lora_dropout: 0.05,
merge_weights: False, fan_in_fan_out: False, enable_lora: [True]}``. Each key is translated to
rankhouse's meaning or refused with the reason; none is silently dropped:

- ``r``, ``lora_alpha``, ``lora_dropout`` -> ``lora.rank``, ``lora.alpha``, ``lora.dropout``
  (loralib scales by alpha / r: rankhouse's ``scaling: standard``). Search-space keys written
  as ``lora.r`` etc. are renamed the same way.
- ``target_modules`` (PEFT-style module names: a name matches a module whose path ends with it)
  -> ``lora.targets`` globs ``*.NAME``.
- ``merge_weights: True`` -> ``registry.merged: true``: promotion also writes the champion
  merged into its base (what MSST's flag is for: a model for deployment with no LoRA at run time).
- ``fan_in_fan_out: True`` is refused: it is for GPT-2-style ``Conv1D`` layers that store
  weights as (in, out); every RoFormer/Demucs layer stores (out, in), so it would transpose
  the update.
- ``enable_lora``: loralib's ``MergedLinear`` splits a fused layer's outputs into groups and
  adapts only the True ones (``[True, False, True]``: q and v of a fused qkv). All True is a
  whole-layer adapter, which is what rankhouse does. A False group is refused: PEFT has no
  grouped-output LoRA and rankhouse does not emulate one. (In MSST's own code this flag also
  makes replacements fail where a layer's outputs do not divide into the groups, and the error
  is caught and printed, so those layers silently get no adapter.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainables.errors import RankhouseError

RENAMED = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets"}
MSST_KEYS = {*RENAMED, "merge_weights", "fan_in_fan_out", "enable_lora"}


def is_msst(block: Any) -> bool:
    return isinstance(block, dict) and bool(set(block) & MSST_KEYS)


def _targets(file: Path, value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise RankhouseError(f"{file}: lora.target_modules: {value!r}; expected a list of module names "
                             "(e.g. [to_qkv, to_out.0])")
    return [v if v.startswith("*") else f"*.{v}" for v in value]


def translate(file: Path, raw: dict) -> dict:
    """``raw`` with an MSST ``lora:`` block in rankhouse's keys (unchanged if it has none)."""
    _rename_space(raw)
    block = raw.get("lora")
    if not is_msst(block):
        return raw
    out: dict[str, Any] = {}
    for key, value in block.items():
        if key in RENAMED:
            new = RENAMED[key]
            if new in block:
                raise RankhouseError(f"{file}: lora: both {key} (MSST) and {new} (rankhouse) are set; keep one")
            out[new] = _targets(file, value) if key == "target_modules" else value
        elif key == "fan_in_fan_out":
            if value:
                raise RankhouseError(f"{file}: lora.fan_in_fan_out: True is for GPT-2-style Conv1D layers that "
                                     "store weights as (in, out); this model's layers store (out, in), so the "
                                     "update would be transposed. Set it to False or remove it")
        elif key == "enable_lora":
            if not isinstance(value, list) or not value or not all(isinstance(v, bool) for v in value):
                raise RankhouseError(f"{file}: lora.enable_lora: {value!r}; expected a list of booleans")
            if not all(value):
                raise RankhouseError(
                    f"{file}: lora.enable_lora: {value}: adapting only some output groups of a fused layer "
                    "(loralib's MergedLinear) has no PEFT equivalent, and rankhouse adapts whole layers. "
                    "Use [True] (the whole layer, e.g. all of to_qkv) or choose layers with lora.target_modules")
        elif key == "merge_weights":
            if not isinstance(value, bool):
                raise RankhouseError(f"{file}: lora.merge_weights: {value!r}; expected True or False")
            if value:
                raw.setdefault("registry", {})
                if not isinstance(raw["registry"], dict):
                    raise RankhouseError(f"{file}: registry: expected a mapping")
                raw["registry"]["merged"] = True
        else:
            out[key] = value  # rankhouse's own keys (scaling, layer_ranks) may sit beside MSST's
    raw["lora"] = out
    return raw


def _rename_space(raw: dict) -> None:
    """Search-space keys written with MSST's names (``lora.r``), whatever the lora block uses."""
    space = (raw.get("search") or {}).get("space") if isinstance(raw.get("search"), dict) else None
    if isinstance(space, dict):
        raw["search"]["space"] = {_rename(k): v for k, v in space.items()}
        for spec in raw["search"]["space"].values():
            if isinstance(spec, dict) and isinstance(spec.get("when"), dict):
                spec["when"] = {_rename(k): v for k, v in spec["when"].items()}


def _rename(key: str) -> str:
    section, _, rest = key.partition(".")
    if section == "lora" and rest in RENAMED and rest != "target_modules":
        return f"lora.{RENAMED[rest]}"
    return key
