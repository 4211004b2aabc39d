"""``python -m platform.export --model REF --merged OUT.safetensors``: merge an adapter into its base.

The adapter's low-rank updates are folded into the base weights (PEFT ``merge_and_unload``;
the ConvTranspose adapters merge exactly, see ``trainables.lora``), giving a plain model with
no PEFT at inference. The file is written only after checking that the merged model -- as
reloaded from the file, through the family's own loader -- separates a test input like the
adapter model does, within ``--tolerance`` (default 1e-4, absolute, on the waveform).
The output is a base checkpoint: ``model.base: OUT.safetensors`` in a search space uses it.
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


def test_input(manifest: dict, seconds: float = 2.0) -> torch.Tensor:
    """A fixed stereo batch: seeded noise under a decaying tone, so every band is excited."""
    g = torch.Generator().manual_seed(0)
    n = int(seconds * manifest["samplerate"])
    t = torch.arange(n) / manifest["samplerate"]
    tone = 0.3 * torch.sin(2 * torch.pi * 110 * t) * torch.exp(-t)
    return (0.1 * torch.randn(1, 2, n, generator=g) + tone).float()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/RUN_ID/adapter or an adapter folder")
    p.add_argument("--merged", type=Path, required=True, help="write the merged model here (.safetensors)")
    p.add_argument("--base", help="the base weights, if not where the adapter's manifest says")
    p.add_argument("--tracking-uri", help="the MLflow store of models:/ and runs:/ references")
    p.add_argument("--tolerance", type=float, default=1e-4)
    args = p.parse_args(argv)
    if args.merged.suffix != ".safetensors":
        raise RankhouseError(f"--merged {args.merged}: expected a .safetensors file name")

    with tempfile.TemporaryDirectory(prefix="rankhouse-export-") as tmp:
        folder, _ = models.fetch(args.model, Path(tmp) / "adapter", args.tracking_uri)
        loaded = bundle.load(folder, args.base)
    write_merged(loaded, args.merged, args.tolerance)
    return 0


def write_merged(loaded: bundle.Loaded, out: Path, tolerance: float = 1e-4) -> str:
    """Merge, save through the family, reload through its loader, compare; write ``out`` only if
    the reloaded model matches the adapter model. Returns the file's sha256."""
    m = loaded.manifest
    family = get_family(m["family"])
    merged = copy.deepcopy(loaded.model).merge_and_unload().eval()
    x = test_input(m)
    with torch.no_grad():
        expected = loaded.model(x)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = out.with_name(f".{out.name}.tmp-{os.getpid()}.safetensors")
    try:
        sha = family.save_model(merged, tmp_file, loaded.base)
        reloaded = family.build_base({**m["model"], "base": str(tmp_file)}).model.eval()
        with torch.no_grad():
            diff = float((reloaded(x) - expected).abs().max())
        if not diff <= tolerance:
            raise RankhouseError(f"--merged {out}: the merged model differs from the adapter model by "
                                 f"{diff:.2e} (> {tolerance:g}); nothing written")
        os.replace(tmp_file, out)
    finally:
        tmp_file.unlink(missing_ok=True)
    print(f"merged: {out} ({out.stat().st_size} bytes, sha256 {sha[:12]}); max |merged - adapter| = {diff:.2e} "
          f"on a {x.shape[-1] / m['samplerate']:g}-s test input (tolerance {tolerance:g})")
    return sha

if __name__ == "__main__":
    run(main)
