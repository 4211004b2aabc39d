"""``python -m platform.analyze FILES... --model REF -o DIR``: the structure of audio files.

REF is ``models:/NAME@champion`` (or ``models:/NAME/VERSION``), ``runs:/RUN_ID/adapter`` or an
adapter folder of a structure study; the base is rebuilt from its manifest (``--base PATH``
if its weights live elsewhere). Files of any format soundfile or librosa reads (WAV, FLAC, MP3,
...), any sample rate, channel count and length: downmixed to mono and resampled to the
model's rate. For each file, ``DIR`` gets ``<name>.yaml`` (the EDM trainer's annotation
format), ``<name>.beats.txt`` and ``<name>.png`` (see ``trainables/structure/analysis.py``).
``--reference ANNOTATION.yaml`` (one file only) draws the annotated sections too and prints
the boundary and beat F-measures against it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from platform import models
from platform.cli import run
from platform.separate import check_inputs
from trainables.data import audio
from trainables.errors import RankhouseError


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.analyze", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/RUN_ID/adapter or an adapter folder")
    p.add_argument("-o", "--out", type=Path, required=True, help="the three outputs of every file go here")
    p.add_argument("--base", help="the base weights, if not where the adapter's manifest says")
    p.add_argument("--tracking-uri", help="the MLflow store of models:/ and runs:/ references")
    p.add_argument("--reference", type=Path, help="the file's annotation YAML: drawn and scored (one file only)")
    args = p.parse_args(argv)

    from trainables.structure import analysis, annotations, metrics

    reference = None
    if args.reference:
        if len(args.files) != 1:
            raise RankhouseError("--reference: compares one file; pass exactly one input file")
        reference = annotations.load(args.reference, audio_dir=args.files[0].parent)
        reference.audio = args.files[0]
    check_inputs(args.files)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded, origin = models.load_for(args.model, "structure", "platform.analyze", args.tracking_uri, args.base)
    loaded.model.to(device)
    m = loaded.manifest
    rate, hop = int(m["samplerate"]), int(m["hop"])
    print(f"model: {args.model} ({', '.join(f'{k} {v}' for k, v in origin.items())}); "
          f"base {m['base']['name']} ({(m['base']['sha256'] or '')[:12]})")
    for path in args.files:
        mono = audio.read(path, rate, channels=None).mean(axis=0).astype(np.float32)
        result = analysis.analyse(loaded.model, mono, rate, hop, device)
        ref = None
        if reference is not None:
            reference = annotations.with_audio(reference)
            ref = (reference.times, reference.labels)
        written = analysis.write_outputs(result, mono, rate, path, args.out, ref)
        print(f"{path}: {len(result.sections[1])} sections, {len(result.beats)} beats"
              + (f", {result.bpm:.1f} bpm" if result.bpm else "") + f" -> {', '.join(w.name for w in written)}")
        if reference is not None:
            f05 = metrics.boundary_f(reference.boundaries, result.boundaries, reference.duration, 0.5)
            f3 = metrics.boundary_f(reference.boundaries, result.boundaries, reference.duration, 3.0)
            print(f"vs {args.reference}: boundary F@0.5s {f05:.3f}, F@3s {f3:.3f}, "
                  f"beat F {metrics.beat_f(reference.beats, result.beats):.3f}")
    return 0


if __name__ == "__main__":
    run(main)
