"""``python -m platform.separate FILES... --model REF -o DIR``: separate audio with an adapter.

REF is ``models:/NAME@champion`` (or ``models:/NAME/VERSION``), ``runs:/RUN_ID/adapter`` or an
adapter folder. The base model is rebuilt from the adapter's manifest (``--base PATH`` if its
weights live elsewhere) and must have the sha256 the adapter was trained on.

Files of any length, sample rate and channel count: resampled to the model's rate, mono
duplicated to stereo (and written back as mono), more than two channels downmixed to stereo,
separated in overlapping chunks, and written as ``DIR/<file name>/<source>.wav`` (24-bit) at the
file's own rate. With ``--reference TRACK_DIR`` (one file only) the nSDR of every source against
the reference stems in that folder is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from platform import models
from platform.cli import run
from platform.data import Progress
from trainables import bundle
from trainables.data import audio
from trainables.data.layout import find_file, normalize_sources
from trainables.errors import RankhouseError
from trainables.metrics import nsdr
from trainables.separation import separate


def check_inputs(files: list[Path]) -> dict[Path, tuple[int, int, int]]:
    """Every file readable before the model is loaded: (rate, channels, frames) per file."""
    found = {}
    for f in files:
        if not f.is_file():
            raise RankhouseError(f"{f}: no such file")
        rate, channels, frames = audio.info(f)
        if frames == 0:
            raise RankhouseError(f"{f}: empty audio")
        found[f] = (rate, channels, frames)
    names = [f.stem for f in files]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise RankhouseError(f"{dup}: two input files share this name; their stems would land in one folder")
    return found


def to_stereo(mix: np.ndarray, path: Path) -> np.ndarray:
    if mix.shape[0] == 1:
        return np.repeat(mix, 2, axis=0)
    if mix.shape[0] > 2:
        print(f"note: {path}: {mix.shape[0]} channels downmixed to stereo (even channels left, odd right)",
              file=sys.stderr)
        return np.stack([mix[0::2].mean(axis=0), mix[1::2].mean(axis=0)])
    return mix


def references(folder: Path, sources: dict, rate: int, length: int) -> np.ndarray:
    """(S, C, T) reference sources from a track folder (a source may be a sum of stems)."""
    out = []
    for name, stems in sources.items():
        parts = []
        for stem in stems:
            path = find_file(folder, stem)
            if path is None:
                raise RankhouseError(f"--reference {folder}: no {stem}.wav/.flac for source {name}")
            parts.append(audio.read(path, rate)[:, :length])
        out.append(np.sum(parts, axis=0))
    return np.stack(out)


def separate_file(loaded: bundle.Loaded, path: Path, device: torch.device) -> tuple[dict[str, np.ndarray], int]:
    """{source: (C, T) at the file's rate} and that rate."""
    m = loaded.manifest
    mix, rate = audio.read_native(path)
    channels = mix.shape[0]
    stereo = to_stereo(mix, path)
    model_input = audio.resample(stereo, rate, m["samplerate"]) if rate != m["samplerate"] else stereo
    est = separate(loaded.model, torch.from_numpy(np.ascontiguousarray(model_input)).to(device),
                   int(m["segment"] * m["samplerate"]), progress=Progress(path.name, unit="chunk")).cpu().numpy()
    stems = {}
    for name, e in zip(m["sources"], est):
        e = audio.resample(e, m["samplerate"], rate) if rate != m["samplerate"] else e
        e = e[:, :mix.shape[1]]
        if e.shape[1] < mix.shape[1]:  # resampling back may drop a sample at the end
            e = np.pad(e, ((0, 0), (0, mix.shape[1] - e.shape[1])))
        stems[name] = e.mean(axis=0, keepdims=True) if channels == 1 else e
    return stems, rate


def write_stems(stems: dict[str, np.ndarray], rate: int, target: Path) -> None:
    """All stems of a file appear at once: written into a temporary folder, then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name, e in stems.items():
            audio.write(tmp / f"{name}.wav", e, rate)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.separate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/RUN_ID/adapter or an adapter folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="one folder of stems per input file goes here")
    p.add_argument("--base", help="the base weights, if not where the adapter's manifest says")
    p.add_argument("--tracking-uri", help="the MLflow store of models:/ and runs:/ references")
    p.add_argument("--reference", type=Path, help="a track folder with the true stems: print nSDR (one file only)")
    args = p.parse_args(argv)

    if args.reference and len(args.files) != 1:
        raise RankhouseError("--reference: compares one file; pass exactly one input file")
    if args.reference and not args.reference.is_dir():
        raise RankhouseError(f"--reference {args.reference}: no such folder")
    check_inputs(args.files)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded, origin = models.load_for(args.model, "separation", "platform.separate", args.tracking_uri, args.base)
    loaded.model.to(device)
    m = loaded.manifest
    print(f"model: {args.model} ({', '.join(f'{k} {v}' for k, v in origin.items())}); "
          f"base {m['base']['name']} ({(m['base']['sha256'] or '')[:12]}); sources {', '.join(m['sources'])}")
    for path in args.files:
        stems, rate = separate_file(loaded, path, device)
        target = args.out / path.stem
        write_stems(stems, rate, target)
        print(f"{path}: {len(stems)} stems -> {target}/")
        if args.reference:
            length = next(iter(stems.values())).shape[1]
            refs = references(args.reference, normalize_sources(m["sources"]), rate, length)
            est = np.stack([np.broadcast_to(s, refs.shape[1:]) for s in stems.values()])
            scores = nsdr(refs, est)
            print(f"nSDR vs {args.reference}: mean {scores.mean():.2f} dB (" +
                  ", ".join(f"{n} {v:.2f}" for n, v in zip(m["sources"], scores)) + ")")
    return 0


if __name__ == "__main__":
    run(main)
