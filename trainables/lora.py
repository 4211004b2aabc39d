"""LoRA through PEFT on real module paths, with ConvTranspose support and explicit per-module ranks.

- ``targets`` and ``layer_ranks`` are ordered glob patterns over ``named_modules()`` paths; they
  resolve to an explicit {module: rank} map (first matching ``layer_ranks`` pattern wins, rank 0
  means "no adapter"). A pattern that matches nothing is an error naming close matches.
- PEFT gets disjoint exact names: it sorts ``rank_pattern`` keys when saving, so overlapping
  patterns would reload with the wrong shapes.
- PEFT has no LoRA for some layers rankhouse's families need (ConvTranspose: HT-Demucs'
  decoders; LSTM: SCNet's BiLSTMs); ``trainables/lora_layers.py`` registers its own through PEFT's custom-module
  mechanism, so they save, load and merge like the built-in layers.
- A rank above a layer's min(fan_in, fan_out) is an error before training.
- Scaling is explicit: ``standard`` (alpha / r) or ``rslora`` (alpha / sqrt(r)).
- Rank modes: ``custom`` (``rank`` for every target, ``layer_ranks`` overriding by pattern),
  ``uniform`` (``rank`` everywhere; ``layer_ranks`` refused) and ``heuristic`` (``rank`` scaled
  per module by the family's documented ``rank_scales``, rounded half up, at least 1 and at
  most the layer's min(fan_in, fan_out)). Each resolves to the same explicit rank map, so
  saving, reloading and logging never depend on the mode. ``gradient`` starts every target at
  ``gradient_init_scale`` x ``rank`` and reallocates after a warm-up, once or in
  ``gradient_steps`` steps, down to the parameters of ``rank`` everywhere (``trainables/realloc.py``).
- Placement: ``placement`` switches the family's layer groups (HT-Demucs: frequency/time
  encoder, transformer, frequency/time decoder) on or off, ``{group: false}`` dropping that
  group's adapters in every rank mode. Groups not named stay on; a name the family does not
  document is an error listing the ones it does.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from trainables import schema
from trainables.errors import RankhouseError
from trainables.lora_layers import CUSTOM_MODULES

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.MultiheadAttention, nn.LSTM)
RankScales = Callable[[list[str]], dict[str, float]]  # targeted module paths -> rank multiplier
Groups = Mapping[str, list[str]]  # layer group name -> glob patterns over module paths


LORA = schema.SCHEMA["lora"]  # the section's keys, defaults and rules: declared once, in the schema


@dataclass
class LoraSpec:
    """The ``lora`` section, typed. Defaults and checks are the schema's (``trainables/schema.py``),
    applied in ``__post_init__``, so a spec built in code is held to what a YAML file is."""

    rank: int = LORA["rank"].default
    alpha: float = LORA["alpha"].default
    dropout: float = LORA["dropout"].default
    scaling: str = LORA["scaling"].default
    rank_mode: str = LORA["rank_mode"].default
    targets: list[str] | None = None  # None: the family's default targets
    layer_ranks: dict[str, int] = field(default_factory=dict)  # ordered: first match wins
    placement: dict[str, bool] = field(default_factory=dict)  # layer group -> adapters on/off (unnamed: on)
    gradient_init_scale: float = LORA["gradient_init_scale"].default
    gradient_at: float = LORA["gradient_at"].default
    gradient_steps: int = LORA["gradient_steps"].default

    def __post_init__(self):
        checked = schema.validate(LORA, {f.name: getattr(self, f.name) for f in fields(self)}, "", "lora")
        for name, value in checked.items():
            setattr(self, name, value)
        if self.rank_mode != "custom" and self.layer_ranks:
            raise RankhouseError(f"lora.layer_ranks: rank_mode {self.rank_mode} sets every layer's rank itself; "
                                 "remove layer_ranks or use rank_mode: custom")

    @classmethod
    def from_config(cls, cfg: Mapping) -> "LoraSpec":
        unknown = sorted(set(cfg) - set(LORA))
        if unknown:
            raise RankhouseError(f"lora.{unknown[0]}: unknown key; expected one of {', '.join(LORA)}")
        return cls(**cfg)


def fan(module: nn.Module) -> tuple[int, int]:
    """(fan_in, fan_out) of the weight matrix a LoRA delta has to approximate."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.in_channels // module.groups * math.prod(module.kernel_size), module.out_channels
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
        return module.in_channels * math.prod(module.kernel_size), module.out_channels
    if isinstance(module, nn.LSTM):  # its input-hidden (4h x in) and hidden-hidden (4h x h) matrices
        return module.input_size, module.hidden_size
    raise TypeError(type(module).__name__)


def adaptable_modules(model: nn.Module, exclude: list[str] = ()) -> dict[str, nn.Module]:
    """Modules LoRA can adapt, by real path. A MultiheadAttention's out_proj is not offered:
    PEFT wraps the whole attention module, so targeting out_proj alone would do nothing."""
    out = {}
    attn = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, module in model.named_modules():
        if not name or not isinstance(module, ADAPTABLE):
            continue
        # modules_to_save are trained whole: no adapter on them or inside them
        if any(name.startswith(a + ".") for a in attn) or any(name == e or name.startswith(e + ".") for e in exclude):
            continue
        out[name] = module
    return out


def _no_match(kind: str, pattern: str, names: list[str]) -> RankhouseError:
    close = difflib.get_close_matches(pattern.rstrip("*."), names, n=3, cutoff=0.4)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return RankhouseError(f"lora.{kind}: pattern {pattern!r} matches no adaptable module{hint}")


def placed(targeted: list[str], placement: Mapping[str, bool], groups: Groups | None) -> list[str]:
    """``targeted`` without the modules of the groups ``placement`` switches off."""
    if not placement:
        return targeted
    if not groups:
        raise RankhouseError("lora.placement: this model family documents no layer groups; remove placement "
                             "and choose modules with targets")
    unknown = sorted(set(placement) - set(groups))
    if unknown:
        raise RankhouseError(f"lora.placement.{unknown[0]}: not a layer group of this family; "
                             f"expected one of {', '.join(groups)}")
    off = [p for g, on in placement.items() if not on for p in groups[g]]
    kept = [n for n in targeted if not any(fnmatch.fnmatchcase(n, p) for p in off)]
    if not kept:
        raise RankhouseError(f"lora.placement: every targeted module is in a group switched off "
                             f"({', '.join(g for g, on in placement.items() if not on)}); switch one on")
    return kept


def resolve_ranks(model: nn.Module, spec: LoraSpec, exclude: list[str] = (),
                  default_targets: list[str] = ("*",), rank_scales: RankScales | None = None,
                  groups: Groups | None = None) -> dict[str, int]:
    """The explicit {module path: rank} map this spec means for this model (rank 0 entries dropped)."""
    modules = adaptable_modules(model, exclude)
    names = list(modules)
    targeted = []
    for pattern in spec.targets if spec.targets is not None else default_targets:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise _no_match("targets", pattern, names)
        targeted += [n for n in hits if n not in targeted]
    # layer_ranks patterns are checked against every target: a pattern of a group placement
    # switched off in this trial is moot, not wrong
    for pattern in spec.layer_ranks:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in targeted):
            raise _no_match("layer_ranks", pattern, targeted)
    targeted = placed(targeted, spec.placement, groups)
    ranks = {n: spec.rank for n in targeted}
    if spec.rank_mode == "gradient":  # the warm-up's ranks; realloc.allocate prunes them to the budget
        lstms = [n for n in targeted if isinstance(modules[n], nn.LSTM)]
        if lstms:
            raise RankhouseError(f"lora.rank_mode: gradient does not reallocate LSTM adapters ({lstms[0]}); use "
                                 "custom, uniform or heuristic, or leave the LSTMs out of lora.targets")
        return {n: max(1, min(math.ceil(spec.rank * spec.gradient_init_scale), min(fan(modules[n]))))
                for n in targeted}
    if spec.rank_mode == "heuristic":
        if rank_scales is None:
            raise RankhouseError("lora.rank_mode: heuristic: this model family documents no rank allocation")
        scales = rank_scales(targeted)
        # clamped, not refused: the heuristic scales one base rank, so a narrow layer takes what it can
        # rounded half up (not Python's round-half-even), so x1.5 of rank 5 is 8 as documented
        return {n: max(1, min(math.floor(spec.rank * scales.get(n, 1.0) + 0.5), min(fan(modules[n]))))
                for n in targeted}
    for n in targeted:
        for pattern, r in spec.layer_ranks.items():
            if fnmatch.fnmatchcase(n, pattern):
                ranks[n] = r
                break
    ranks = {n: r for n, r in ranks.items() if r > 0}
    if not ranks:
        raise RankhouseError("lora: no module gets an adapter (every targeted layer has rank 0)")
    for n, r in ranks.items():
        fan_in, fan_out = fan(modules[n])
        if r > min(fan_in, fan_out):
            raise RankhouseError(f"lora: rank {r} for {n} exceeds min(fan_in, fan_out) = {min(fan_in, fan_out)} "
                                 f"({type(modules[n]).__name__} {fan_in}->{fan_out}); lower it in layer_ranks")
    return ranks


def lora_config(ranks: dict[str, int], spec: LoraSpec, modules_to_save: list[str] = ()) -> LoraConfig:
    default = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(
        r=default,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        use_rslora=spec.scaling == "rslora",
        target_modules=sorted(ranks),
        # exact names (PEFT anchors keys at a dot boundary and the end): disjoint by construction,
        # so PEFT's sorting of the keys on save is harmless
        rank_pattern={re.escape(n): r for n, r in sorted(ranks.items()) if r != default},
        modules_to_save=list(modules_to_save) or None,
        bias="none",
    )
    config._register_custom_module(CUSTOM_MODULES)
    return config


def apply(model: nn.Module, spec: LoraSpec, modules_to_save: list[str] = (),
          default_targets: list[str] = ("*",), rank_scales: RankScales | None = None,
          groups: Groups | None = None) -> tuple[PeftModel, dict[str, int]]:
    """Wrap ``model`` with adapters; only adapter and ``modules_to_save`` parameters train."""
    names = [n for n, _ in model.named_modules()]
    for declared in modules_to_save:
        # PEFT matches modules_to_save by suffix: "decoder.3.conv_tr" would also take "tdecoder.3.conv_tr"
        clash = [n for n in names if n not in modules_to_save and n.endswith(declared)]
        if clash:
            raise RankhouseError(f"modules_to_save: {declared!r} is also the suffix of {clash[0]!r}; PEFT would "
                                 "train both. Declare every module whose name ends the same way")
    ranks = resolve_ranks(model, spec, list(modules_to_save), default_targets, rank_scales, groups)
    try:
        peft_model = get_peft_model(model, lora_config(ranks, spec, modules_to_save))
    except ValueError as exc:  # a layer's adapter refusing an option (e.g. dropout on an LSTM)
        raise RankhouseError(f"lora: {' '.join(str(exc).split())}") from None
    return peft_model, ranks


def coverage(model: nn.Module, names: list[str]) -> float:
    """The share of ``model``'s parameters held by the modules ``names`` (what the adapters reach)."""
    modules = dict(model.named_modules())
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for n in names for p in modules[n].parameters()) / max(total, 1)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save(model: PeftModel, folder: Path) -> Path:
    """PEFT format: adapter_config.json + adapter_model.safetensors (never pickles)."""
    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_config(folder: Path) -> LoraConfig:
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() or not (folder / "adapter_model.safetensors").is_file():
        raise RankhouseError(f"{folder}: not a PEFT adapter (needs adapter_config.json and adapter_model.safetensors)")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (json.JSONDecodeError, TypeError, ValueError) as exc:
        raise RankhouseError(f"{folder}/adapter_config.json: unreadable ({exc})") from None
    config._register_custom_module(CUSTOM_MODULES)  # not serialised by PEFT
    return config


def load_weights(model: PeftModel, folder: Path) -> None:
    """Load a saved adapter's weights into a PeftModel built with the same config (resume)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(folder) / "adapter_model.safetensors")))


def load(base: nn.Module, folder: Path, trainable: bool = False) -> PeftModel:
    """``PeftModel.from_pretrained`` with the custom ConvTranspose layers registered."""
    return PeftModel.from_pretrained(base, str(folder), config=load_config(folder), is_trainable=trainable)
