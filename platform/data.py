"""``python -m platform.data render|check|cache|acestep``: make, check and pre-decode datasets.

    python -m platform.data render --preset techhouse --songs 40 --seconds 30 --out data/techhouse --seed 0
    python -m platform.data check data/techhouse --sources kick,hihat,bass,other,vocals
    python -m platform.data cache data/techhouse --sources kick,hihat,bass,other,vocals --samplerate 22050
    python -m platform.data acestep data/songs --out data/songs_hf [--repeat 1]

``acestep`` converts the ACE-Step seed's layout (name.mp3, name_prompt.txt, optional
name_lyrics.txt) into the Hugging Face dataset ACE-Step's trainer and the acestep family read.

``check SPACE.yaml [overrides]`` checks a study's data the way its search's preflight does, by
its family's task, whatever the task (a separator's stems, a classifier's features, ...).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from platform.cli import run
from trainables.data import cache, check, render
from trainables.data.layout import normalize_sources, stems_of
from trainables.errors import RankhouseError


class Progress:
    """A tqdm bar driven by ``callback(done, total)`` calls (on stderr)."""

    def __init__(self, desc: str, unit: str = "track"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, mininterval=0.5)
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


def parse_sources(text: str):
    """``kick,hihat`` or ``drums=kick+hihat,bass,other,vocals``."""
    out = {}
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, _, stems = item.partition("=")
        out[name.strip()] = [s.strip() for s in stems.split("+")] if stems else [name.strip()]
    return normalize_sources(out)


def check_space(file: Path, overrides: list[str]) -> int:
    """A study's data, checked by its family's task as the search's preflight checks it."""
    from platform import preflight, spaces

    study = spaces.load(file, overrides)
    cfg = preflight.resolve_data(study)
    study.task.check(cfg, Progress)  # raises one line naming the file and the fix
    print(f"{cfg['data']['root']}: no errors ({study.task.name} data of study {study.name})")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render a synthetic stem corpus through a GM soundfont")
    r.add_argument("--preset", default="techhouse", choices=sorted(render.compose.PRESETS))
    r.add_argument("--songs", type=int, required=True)
    r.add_argument("--seconds", type=float, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--valid", type=int, default=None, help="songs in the valid split (default: a fifth)")
    c = sub.add_parser("check", help="check a stem dataset, or a search space's data by its task; exit 1 on errors")
    c.add_argument("root", type=Path, help="a stem dataset folder, or a search-space YAML file")
    c.add_argument("overrides", nargs="*", help="with a search-space file: Hydra overrides, as for platform.tune")
    c.add_argument("--sources", help="kick,hihat,bass,other,vocals or drums=kick+hihat,bass,... (a folder only)")
    c.add_argument("--segment", type=float, default=None, help="training segment in seconds")
    c.add_argument("--tolerance-db", type=float, default=30.0,
                   help="mixture - sum of stems must be this many dB below the mixture (default 30)")
    k = sub.add_parser("cache", help="decode the dataset into the memory-mapped Arrow cache")
    k.add_argument("root", type=Path)
    k.add_argument("--sources", required=True)
    k.add_argument("--samplerate", type=int, default=44100)
    a = sub.add_parser("acestep", help="convert name.mp3 + name_prompt.txt songs into ACE-Step's dataset")
    a.add_argument("songs", type=Path, help="the folder of name.mp3, name_prompt.txt, name_lyrics.txt files")
    a.add_argument("--out", type=Path, required=True, help="a new folder for the dataset")
    a.add_argument("--repeat", type=int, default=1, help="write every song N times (the seed's --repeat_count)")
    args = parser.parse_args(argv)

    if args.command == "acestep":
        from trainables.acestep import convert

        out = convert.convert(args.songs, args.out, args.repeat)
        print(f"dataset: {out} ({len(convert.load(out))} songs, each {args.repeat} time(s))")
        return 0
    if args.command == "render":
        out = render.render_corpus(args.out, args.preset, args.songs, args.seconds, args.seed, args.valid,
                                   progress=Progress(f"render {args.preset}"))
        print(f"corpus: {out}")
        return 0
    if args.command == "check" and args.root.suffix in (".yaml", ".yml"):
        return check_space(args.root, args.overrides)
    if not args.sources:
        raise RankhouseError(f"{args.root}: --sources is required for a dataset folder (e.g. "
                             "--sources kick,hihat,bass,other,vocals), or pass a search-space file")
    if args.command == "check" and args.overrides:
        raise RankhouseError(f"{args.overrides[0]}: overrides go with a search-space file, not a dataset folder")
    sources = parse_sources(args.sources)
    if args.command == "check":
        problems = check.check_dataset(args.root, sources, args.segment, args.tolerance_db, progress=Progress("check"))
        for p in problems:
            print(p)
        n_err = len(check.errors(problems))
        print(f"{args.root}: {n_err} error(s), {len(problems) - n_err} warning(s)")
        return 1 if n_err else 0
    for split in ("train", "valid"):
        path = cache.build(args.root, split, stems_of(sources), args.samplerate, progress=Progress(f"cache {split}"))
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    run(main)
