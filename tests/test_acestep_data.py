"""The ACE-Step seed's data converter, done right: songs without lyrics kept, tags split on
commas, every bad input a named error with nothing written; and the embedded corpus that
runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf

from trainables.acestep import convert, dataset, tags
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]


def mp3(path: Path, seconds: float = 1.0, freq: float = 220.0) -> Path:
    t = np.arange(int(seconds * 44100)) / 44100
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 44100, format="MP3")
    return path


def song(folder: Path, name: str, prompt: str | None, lyrics: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    mp3(folder / f"{name}.mp3")
    if prompt is not None:
        (folder / f"{name}_prompt.txt").write_text(prompt)
    if lyrics is not None:
        (folder / f"{name}_lyrics.txt").write_text(lyrics)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "platform.data", "acestep", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_tags_split_on_commas_trimmed_and_empty_ones_dropped():
    assert tags.parse("tech house,126 bpm ,  kick,, ,hihat\n") == ["tech house", "126 bpm", "kick", "hihat"]
    assert tags.parse(" , ") == []
    # the tokens a tag encoder reads: one row a tag, hashed words, zero padding
    t = tags.tokens(["tech house", "126 bpm"])
    assert t.shape == (tags.MAX_TAGS, tags.MAX_WORDS) and (t[0, :2] > 0).all() and (t[0, 2:] == 0).all()
    assert (t[2:] == 0).all() and t[0, 0] == tags.token("tech")


def test_converter_writes_the_dataset_the_trainer_reads(tmp_path):
    src = tmp_path / "data"
    song(src, "with_lyrics", "melodic techno,male vocal , 124 bpm", "[Verse]\nLately I've been wondering\n")
    song(src, "no_lyrics", "tech house, 126 bpm, kick, hihat")
    proc = run_cli(str(src), "--out", str(tmp_path / "hf"), "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    table = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(table.column_names) == set(convert.FIELDS) and len(table) == 6  # 2 songs x --repeat 3
    rows = {r["keys"]: r for r in table}
    assert rows["no_lyrics"]["norm_lyrics"] == ""  # kept, where ACE-Step's converter drops it
    assert rows["with_lyrics"]["norm_lyrics"].startswith("[Verse]\nLately")
    assert rows["with_lyrics"]["tags"] == ["melodic techno", "male vocal", "124 bpm"]
    assert rows["no_lyrics"]["filename"] == str((src / "no_lyrics.mp3").resolve())
    assert rows["no_lyrics"]["speaker_emb_path"] == "" and rows["no_lyrics"]["recaption"] == {}
    assert [r["keys"] for r in convert.load(tmp_path / "hf")] == ["no_lyrics", "with_lyrics"]  # repeats dropped


@pytest.mark.parametrize("case, expected", [
    ("no_prompt", "{src}/b.mp3: no b_prompt.txt beside it"),
    ("empty_prompt", "{src}/b_prompt.txt: no tags"),
    ("unreadable", "{src}/b.mp3: unreadable audio"),
    ("duplicate", "{src}/sub/a.mp3: key 'a' is also {src}/a.mp3"),
])
def test_each_bad_input_is_one_named_error_and_nothing_is_written(tmp_path, case, expected):
    src, out = tmp_path / "data", tmp_path / "hf"
    song(src, "a", "house, kick")
    if case == "no_prompt":
        song(src, "b", None)
    elif case == "empty_prompt":
        song(src, "b", " , \n")
    elif case == "unreadable":
        song(src, "b", "house")
        (src / "b.mp3").write_bytes(b"ID3 this is not an mp3 stream" * 10)
    else:
        song(src / "sub", "a", "house")
    proc = run_cli(str(src), "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("rankhouse: error: " + expected.format(src=src)), lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no half dataset


def test_converter_refuses_an_existing_output_and_a_folder_without_songs(tmp_path):
    src = tmp_path / "data"
    song(src, "a", "house")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(RankhouseError, match="exists; give a new folder"):
        convert.convert(src, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    with pytest.raises(RankhouseError, match="no .mp3 files"):
        convert.convert(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(RankhouseError, match="--repeat 0"):
        convert.convert(src, tmp_path / "out", repeat=0)


def test_split_is_by_key_whatever_the_row_order():
    keys = [f"song{i}" for i in range(20)]
    a = dataset.split_keys(keys, 0.2)
    assert a == dataset.split_keys(list(reversed(keys)) * 3, 0.2)
    assert len(a["valid"]) == 4 and not set(a["valid"]) & set(a["train"])
    assert dataset.split_keys(keys, 1.0)["train"] == []


def test_the_embedded_corpus_is_rendered_songs_run_through_the_converter(tmp_path, monkeypatch):
    from trainables.acestep.corpus import embedded_dataset

    monkeypatch.setenv("RANKHOUSE_HOME", str(tmp_path))
    out = embedded_dataset({"preset": "techhouse", "songs": 3, "seconds": 4.0, "seed": 5})
    rows = convert.load(out)
    assert len(rows) == 3
    for row in rows:
        mp3_path = Path(row["filename"])
        assert mp3_path.suffix == ".mp3" and sf.info(str(mp3_path)).duration == pytest.approx(4.0, abs=0.1)
        t = row["tags"]
        assert t[0] == "tech house" and t[1].endswith(" bpm") and 122 <= int(t[1].split()[0]) <= 130
        assert t[2].endswith(" minor") and {"kick", "hihat"} <= set(t)
        assert row["norm_lyrics"] == ""
        assert (mp3_path.parent / f"{row['keys']}_prompt.txt").read_text().strip() == ", ".join(t)
    assert embedded_dataset({"preset": "techhouse", "songs": 3, "seconds": 4.0, "seed": 5}) == out  # reused
