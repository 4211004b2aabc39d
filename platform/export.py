"""``python -m platform.export --model REF --merged OUT``: merge an adapter into its base.

The adapter's low-rank updates are folded into the base weights (PEFT ``merge_and_unload``;
the ConvTranspose adapters merge exactly, see ``trainables.lora``), giving a plain model with
no PEFT at inference. The file is written only after checking that the merged model -- as
reloaded from the file, through the family's own loader -- separates a test input like the
adapter model does, within ``--tolerance`` (default 1e-4, absolute, on the waveform).

Formats:
- ``rankhouse`` (default): ``OUT.safetensors``, a base checkpoint: ``model.base: OUT.safetensors``
  in a search space uses it.
- ``msst`` (the RoFormer family): ``OUT.ckpt``, a plain state dict with MSST's key names, and
  ``OUT.yaml`` beside it, the MSST config that builds it (the base's own MSST config, when it
  had one, with the sources updated). MSST's ``inference.py`` runs it with
  ``--model_type bs_roformer`` (or ``mel_band_roformer``) ``--config_path OUT.yaml
  --start_check_point OUT.ckpt``; rankhouse reads it back as ``model.base`` + ``model.config``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path

import torch

from platform import models
from platform.cli import run
from trainables import bundle
from trainables.errors import RankhouseError
from trainables.family import get_family

SUFFIXES = {"rankhouse": (".safetensors",), "msst": (".ckpt", ".pth", ".pt")}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/RUN_ID/adapter or an adapter folder")
    p.add_argument("--merged", type=Path, required=True, help="write the merged model here (.safetensors; "
                                                              "--format msst: .ckpt)")
    p.add_argument("--format", choices=sorted(SUFFIXES), default="rankhouse")
    p.add_argument("--base", help="the base weights, if not where the adapter's manifest says")
    p.add_argument("--tracking-uri", help="the MLflow store of models:/ and runs:/ references")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    if args.merged.suffix not in SUFFIXES[args.format]:
        raise RankhouseError(f"--merged {args.merged}: --format {args.format} writes "
                             f"{' or '.join(SUFFIXES[args.format])} files; rename the output")

    with tempfile.TemporaryDirectory(prefix="rankhouse-export-") as tmp:
        folder, _ = models.fetch(args.model, Path(tmp) / "adapter", args.tracking_uri)
        loaded = bundle.load(folder, args.base)
    write_merged(loaded, args.merged, args.tolerance, args.format)
    return 0


def write_merged(loaded: bundle.Loaded, out: Path, tolerance: float = 1e-4, fmt: str = "rankhouse") -> str:
    """Merge, save through the family, reload through its loader, compare; write ``out`` (and,
    for ``msst``, its YAML) only if the reloaded model matches the adapter model. Returns the
    checkpoint's sha256."""
    m = loaded.manifest
    family = get_family(m["family"])
    merged = copy.deepcopy(loaded.model).merge_and_unload().eval()
    x = loaded.family.task.example_input(m)
    args = x if isinstance(x, tuple) else (x,)  # a model of several inputs gets a tuple
    with torch.no_grad():
        expected = loaded.model(*args)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_name(f".{out.stem}.tmp-{os.getpid()}{out.suffix}")
    tmp_yaml = tmp_file.with_suffix(".yaml")
    try:
        if fmt == "msst":
            sha = family.save_msst(merged, tmp_file, tmp_yaml, loaded.base)
            reloaded = family.build_base({"base": str(tmp_file), "config": str(tmp_yaml)}).model.eval()
        else:
            sha = family.save_model(merged, tmp_file, loaded.base)
            reloaded = family.build_base({**m["model"], "base": str(tmp_file)}).model.eval()
        with torch.no_grad():
            diff = float((reloaded(*args) - expected).abs().max())
        if not diff <= tolerance:
            raise RankhouseError(f"--merged {out}: the merged model differs from the adapter model by "
                                 f"{diff:.2e} (> {tolerance:g}); nothing written")
        if fmt == "msst":
            os.replace(tmp_yaml, out.with_suffix(".yaml"))
        os.replace(tmp_file, out)
    finally:
        tmp_file.unlink(missing_ok=True)
        tmp_yaml.unlink(missing_ok=True)
    beside = f" and its MSST config {out.with_suffix('.yaml')}" if fmt == "msst" else ""
    shapes = " and ".join("x".join(map(str, a.shape)) for a in args)
    print(f"merged: {out} ({out.stat().st_size} bytes, sha256 {sha[:12]}){beside}; max |merged - adapter| = "
          f"{diff:.2e} on a fixed {shapes} test input (tolerance {tolerance:g})")
    return sha


if __name__ == "__main__":
    run(main)
