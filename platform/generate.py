"""``python -m platform.generate --model REF --prompt TAGS --seconds S --seed N -o OUT.wav``:
music from a prompt with an ACE-Step family model.

REF is ``models:/NAME@champion`` (or ``models:/NAME/VERSION``), ``runs:/RUN_ID/adapter``, an
adapter folder of an acestep study, or a base without an adapter: ``embedded``, a rankhouse
``.safetensors`` of the family or an ACE-Step folder (diffusers' layout). The prompt is
comma-separated tags, as in a ``name_prompt.txt``. The same model, prompt, length, steps,
guidance and seed give the same bytes. ``--image PNG`` also draws the generated latent.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from platform import models
from platform.cli import run
from trainables.errors import RankhouseError

STEPS, GUIDANCE = 20, 3.0


def load(ref: str, tracking_uri: str | None, base: str | None):
    """(model, latent, shift, description) for an adapter reference or a bare base."""
    from trainables.acestep import pipeline
    from trainables.acestep.family import AceStepFamily
    from trainables.acestep.flow import SHIFT

    if ref == "embedded" or ref.endswith(".safetensors") or pipeline.is_folder(Path(ref)):
        b = AceStepFamily().build_base({"base": ref})
        return b.model, b.latent, SHIFT, f"base {ref}"
    loaded, origin = models.load_for(ref, "text_to_music", "platform.generate", tracking_uri, base)
    m = loaded.manifest
    about = ", ".join(f"{k} {v}" for k, v in origin.items())
    return loaded.model, loaded.base.latent, float(m["shift"]), f"{ref} ({about}); base {m['base']['name']}"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="models:/NAME@champion, runs:/RUN_ID/adapter, an adapter folder, "
                                                  "embedded or a base .safetensors")
    p.add_argument("--prompt", required=True, help='comma-separated tags, e.g. "tech house, 126 bpm, kick, hihat"')
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=STEPS, help=f"Euler sampling steps (default {STEPS})")
    p.add_argument("--guidance", type=float, default=GUIDANCE,
                   help=f"classifier-free guidance scale; 1: none (default {GUIDANCE:g})")
    p.add_argument("-o", "--out", type=Path, required=True, help="the WAV file to write")
    p.add_argument("--image", type=Path, help="also draw the generated latent into this PNG")
    p.add_argument("--base", help="the base weights, if not where the adapter's manifest says")
    p.add_argument("--tracking-uri", help="the MLflow store of models:/ and runs:/ references")
    args = p.parse_args(argv)

    from trainables.acestep import generation, tags

    found = tags.parse(args.prompt)
    if not found:
        raise RankhouseError(f"--prompt {args.prompt!r}: no tags; give comma-separated tags, e.g. "
                             "\"tech house, 126 bpm, kick, hihat\"")
    if not 0 < args.seconds <= 600:
        raise RankhouseError(f"--seconds {args.seconds:g}: give a length between 0 and 600 seconds")
    if args.steps < 1:
        raise RankhouseError(f"--steps {args.steps}: give 1 or more")
    if args.out.suffix.lower() != ".wav":
        raise RankhouseError(f"-o {args.out}: the output is a WAV file; name it .wav")
    for path in (args.out, args.image):
        if path is not None and not path.parent.is_dir():
            raise RankhouseError(f"{path}: no folder {path.parent}; create it first")
    model, latent, shift, about = load(args.model, args.tracking_uri, args.base)
    print(f"model: {about}")
    print(f"generating {args.seconds:g} s for [{', '.join(found)}] (seed {args.seed}, {args.steps} steps, "
          f"guidance {args.guidance:g})", flush=True)
    tmp = args.out.with_name(f".{args.out.stem}.{os.getpid()}.wav")
    try:
        generation.write_clip(model, found, args.seconds, latent, shift, args.steps, args.guidance, args.seed, tmp,
                              torch.device("cpu"))
        os.replace(tmp, args.out)
        if args.image:
            os.replace(tmp.with_suffix(".png"), args.image)
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_suffix(".png").unlink(missing_ok=True)
    print(f"wrote {args.out}" + (f" and {args.image}" if args.image else ""))
    return 0


if __name__ == "__main__":
    run(main)
