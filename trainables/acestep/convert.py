"""The seed's data layout -> the Hugging Face dataset ACE-Step's trainer reads.

    DIR/name.mp3, DIR/name_prompt.txt (comma-separated tags), DIR/name_lyrics.txt (optional)

Each song becomes one row with the seed's fields: ``keys`` (the name), ``filename`` (the mp3's
absolute path, so the trainer finds it from any working directory), ``tags`` (a list),
``speaker_emb_path`` (""), ``norm_lyrics`` ("" without a lyrics file: ACE-Step's converter
drops such songs although its docs call lyrics optional) and ``recaption`` ({}).
``--repeat N`` writes every row N times, as the seed's ``--repeat_count`` does.

Every song is checked before anything is written; the dataset is written to a temporary
folder and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from trainables.acestep import tags as tag_text
from trainables.errors import RankhouseError

PROMPT, LYRICS = "_prompt.txt", "_lyrics.txt"
FIELDS = ("keys", "filename", "tags", "speaker_emb_path", "norm_lyrics", "recaption")


@dataclass(frozen=True)
class Song:
    key: str
    audio: Path
    tags: list[str]
    lyrics: str


@contextlib.contextmanager
def quiet_stderr():
    """File descriptor 2 sent to /dev/null for the block (C libraries write there directly)."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _read_song(mp3: Path) -> Song:
    key = mp3.stem
    prompt = mp3.with_name(key + PROMPT)
    if not prompt.is_file():
        raise RankhouseError(f"{mp3}: no {prompt.name} beside it; write the song's tags there, comma-separated")
    found = tag_text.parse(prompt.read_text(encoding="utf-8", errors="replace"))
    if not found:
        raise RankhouseError(f"{prompt}: no tags; write the song's tags there, comma-separated "
                             "(e.g. tech house, 126 bpm, kick, hihat)")
    try:
        with quiet_stderr():  # libmpg123 prints its own warnings on a broken file
            frames = sf.info(str(mp3)).frames
    except Exception:  # libsndfile's own message blames the path, not the content
        raise RankhouseError(f"{mp3}: unreadable audio (not an MP3 stream libsndfile can decode); "
                             "re-encode it as mp3") from None
    if frames <= 0:
        raise RankhouseError(f"{mp3}: no audio in the file; re-encode it as mp3")
    lyrics = mp3.with_name(key + LYRICS)
    text = lyrics.read_text(encoding="utf-8", errors="replace").strip() if lyrics.is_file() else ""
    return Song(key, mp3.resolve(), found, text)


def scan(folder: Path) -> list[Song]:
    """Every song under ``folder`` (subfolders too), checked: a missing or empty prompt, an
    unreadable mp3 or a name used twice is a ``RankhouseError`` naming the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RankhouseError(f"{folder}: no such folder; give the folder of name.mp3 + name_prompt.txt files")
    mp3s = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".mp3" and p.is_file())
    if not mp3s:
        raise RankhouseError(f"{folder}: no .mp3 files; the seed's layout is name.mp3 beside name_prompt.txt")
    seen: dict[str, Path] = {}
    for mp3 in mp3s:
        if mp3.stem in seen:
            raise RankhouseError(f"{mp3}: key {mp3.stem!r} is also {seen[mp3.stem]}; rename one of them "
                                 "(a key names one song)")
        seen[mp3.stem] = mp3
    orphans = [p for p in folder.rglob("*" + PROMPT) if p.name[:-len(PROMPT)] not in seen]
    for p in orphans:
        print(f"warning: {p}: no {p.name[:-len(PROMPT)]}.mp3 beside it; skipped", file=sys.stderr)
    return [_read_song(mp3) for mp3 in mp3s]


def rows(songs: list[Song], repeat: int = 1) -> list[dict]:
    one = [{"keys": s.key, "filename": str(s.audio), "tags": list(s.tags), "speaker_emb_path": "",
            "norm_lyrics": s.lyrics, "recaption": {}} for s in songs]
    return one * repeat


def write(songs: list[Song], out: Path, repeat: int = 1) -> Path:
    """The dataset at ``out`` (a new folder), written whole or not at all."""
    import datasets

    out = Path(out).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RankhouseError(f"--out {out}: exists; give a new folder (nothing was written)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.disable_progress_bars()
    try:
        datasets.Dataset.from_list(rows(songs, repeat)).save_to_disk(str(tmp))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert(folder: Path, out: Path, repeat: int = 1) -> Path:
    """``scan`` then ``write``: the seed's ``convert2hf_dataset.py``, with its faults fixed."""
    if repeat < 1:
        raise RankhouseError(f"--repeat {repeat}: give 1 or more")
    return write(scan(folder), out, repeat)


def load(root: Path) -> list[dict]:
    """A converted dataset's rows (``datasets.load_from_disk``), each key once (``--repeat``
    copies dropped), with ``filename`` resolved: absolute as written, else relative to the
    dataset folder, else to the working directory (where ACE-Step's trainer looks)."""
    import datasets

    root = Path(root)
    if not (root / "state.json").is_file():
        raise RankhouseError(f"data.root: {root}: not a converted dataset (no state.json); make one with "
                             "python -m platform.data acestep SONGS_DIR --out DATASET")
    table = datasets.load_from_disk(str(root))
    missing = [f for f in ("keys", "filename", "tags") if f not in table.column_names]
    if missing:
        raise RankhouseError(f"data.root: {root}: no {', '.join(missing)} column; convert the songs with "
                             "python -m platform.data acestep")
    out, seen = [], set()
    for row in table:
        if row["keys"] in seen:
            continue
        seen.add(row["keys"])
        path = Path(row["filename"])
        if not path.is_absolute():
            path = root / path if (root / path).is_file() else Path.cwd() / path
        out.append({**row, "filename": str(path)})
    return out
