"""Rendering a synthetic stem corpus: determinism, exact mixtures, layout and annotations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from trainables.data import compose, render
from trainables.data.layout import MIXTURE, SPLITS, tracks
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 6
SONGS = 4
LABELS = set(compose.LABELS)


def all_tracks(root: Path) -> list[Path]:
    return [t for split in SPLITS for t in tracks(root, split)]


def read_int16(path: Path) -> np.ndarray:
    data, _ = sf.read(str(path), dtype="int16", always_2d=True)
    return data


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_song(tmp_path_factory) -> Path:
    return render.render_corpus(tmp_path_factory.mktemp("a") / "c", "techhouse", songs=2, seconds=3, seed=7)


def test_layout(corpus):
    assert json.loads((corpus / render.MANIFEST).read_text())["songs"] == SONGS
    assert [t.name for t in tracks(corpus, "train")] == [f"techhouse-1-{i:04d}" for i in range(3)]
    assert [t.name for t in tracks(corpus, "valid")] == ["techhouse-1-0003"]
    for track in all_tracks(corpus):
        names = sorted(p.name for p in track.iterdir())
        assert names == sorted([f"{s}.wav" for s in (MIXTURE, *compose.STEMS)] + ["annotations.yaml"])


def test_same_seed_gives_identical_bytes(two_song, tmp_path):
    again = render.render_corpus(tmp_path / "again", "techhouse", songs=2, seconds=3, seed=7)
    first, second = files_of(two_song), files_of(again)
    assert len(first) == 2 * 7 + 1  # 2 tracks x (6 wav + yaml) + corpus.json
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two renders with the same seed"


def test_songs_do_not_depend_on_corpus_size(corpus, tmp_path):
    """Song i of seed s is the same whether 2 or 4 songs are rendered (song_seed is per index)."""
    small = render.render_corpus(tmp_path / "small", "techhouse", songs=2, seconds=SECONDS, seed=1)
    for name in (f"{s}.wav" for s in (MIXTURE, *compose.STEMS)):
        assert (small / "train/techhouse-1-0000" / name).read_bytes() == \
            (corpus / "train/techhouse-1-0000" / name).read_bytes()


def test_different_seed_gives_different_audio(two_song, tmp_path):
    other = render.render_corpus(tmp_path / "other", "techhouse", songs=2, seconds=3, seed=8)
    for a, b in zip(all_tracks(two_song), all_tracks(other)):
        x, y = read_int16(a / "mixture.wav"), read_int16(b / "mixture.wav")
        assert x.shape == y.shape
        assert not np.array_equal(x, y)


def test_mixture_is_exact_sum_of_stems(corpus):
    for track in all_tracks(corpus):
        mix = read_int16(track / "mixture.wav").astype(np.int32)
        total = sum(read_int16(track / f"{s}.wav").astype(np.int32) for s in compose.STEMS)
        np.testing.assert_array_equal(mix, total, err_msg=f"{track.name}: mixture != int sum of stems")


def test_format_stereo_44100_expected_length(corpus):
    for track in all_tracks(corpus):
        for name in (MIXTURE, *compose.STEMS):
            info = sf.info(str(track / f"{name}.wav"))
            assert (info.format, info.subtype) == ("WAV", "PCM_16"), f"{track.name}/{name}"
            assert info.samplerate == 44100
            assert info.channels == 2
            assert info.frames == SECONDS * 44100


def test_no_stem_silent_over_the_corpus(corpus):
    for stem in (MIXTURE, *compose.STEMS):
        audio = np.concatenate([read_int16(t / f"{stem}.wav") for t in all_tracks(corpus)]).astype(np.float64) / 32768
        rms_db = 10 * np.log10(np.mean(audio ** 2) + 1e-20)
        assert rms_db > -60, f"{stem}: {rms_db:.1f} dBFS over the whole corpus"
        # both channels carry signal (chorus off: nothing cancels in a mono sum)
        assert np.abs(audio).max(axis=0).min() > 0.01, stem
        assert np.abs(audio).max() < 1.0, f"{stem} reaches full scale"


def check_annotations(track: Path, preset: compose.Preset, seconds: float) -> None:
    notes = yaml.safe_load((track / "annotations.yaml").read_text())
    a = notes["audio"]
    assert a["file"] == "mixture.wav"
    assert a["duration"] == seconds
    assert a["time_signature"] == [4, 4]
    bpm = a["bpm"]
    assert preset.bpm[0] <= bpm <= preset.bpm[1], f"{track.name}: bpm {bpm} outside {preset.bpm}"
    beat = 60.0 / bpm

    beats = np.array(notes["beats"])
    assert beats[0] == 0.0
    assert len(beats) == int(np.floor(seconds / beat - 1e-9)) + 1
    assert beats[-1] < seconds
    np.testing.assert_allclose(np.diff(beats), beat, atol=2e-6)
    assert notes["downbeats"] == notes["beats"][::4]

    structure = notes["structure"]
    assert structure, track.name
    assert structure[0]["bar"] == 1 and structure[0]["time"] == 0.0
    bars = [s["bar"] for s in structure]
    assert bars == sorted(set(bars)), f"{track.name}: sections not strictly increasing: {bars}"
    for s in structure:
        assert s["label"] in LABELS, s
        assert s["time"] == pytest.approx((s["bar"] - 1) * 4 * beat, abs=1e-6)
        assert s["time"] < seconds
        assert s["confidence"] == 1.0
    assert notes["metadata"]["preset"] == preset.name


def test_annotations_techhouse(corpus):
    for track in all_tracks(corpus):
        check_annotations(track, compose.TECHHOUSE, SECONDS)


def test_generic_preset_renders(tmp_path):
    root = render.render_corpus(tmp_path / "generic", "generic", songs=2, seconds=4, seed=3)
    found = all_tracks(root)
    assert [t.name for t in found] == ["generic-3-0000", "generic-3-0001"]
    for track in found:
        check_annotations(track, compose.GENERIC, 4)
        mix = read_int16(track / "mixture.wav").astype(np.int32)
        assert mix.shape == (4 * 44100, 2)
        assert np.abs(mix).max() > 1000
        np.testing.assert_array_equal(mix, sum(read_int16(track / f"{s}.wav").astype(np.int32)
                                               for s in compose.STEMS))


def test_long_song_uses_the_whole_arrangement():
    """A song long enough for every section keeps the preset's arrangement, in order."""
    song = compose.compose(compose.TECHHOUSE, seed=5, seconds=60)
    labels = [s.label for s in song.sections]
    assert labels == [label for label, _ in compose.TECHHOUSE.arrangement]
    assert song.sections[0].bar == 0
    assert sum(s.bars for s in song.sections) == song.bars
    for prev, nxt in zip(song.sections, song.sections[1:]):
        assert nxt.bar == prev.bar + prev.bars


def test_reuses_identical_corpus(two_song):
    before = {p: p.stat().st_mtime_ns for p in two_song.rglob("*")}
    assert render.render_corpus(two_song, "techhouse", songs=2, seconds=3, seed=7) == two_song
    assert {p: p.stat().st_mtime_ns for p in two_song.rglob("*")} == before


@pytest.mark.parametrize("change", [dict(seed=8), dict(songs=3), dict(seconds=4), dict(preset="generic")])
def test_refuses_non_empty_dir_of_another_corpus(two_song, change):
    spec = dict(preset="techhouse", songs=2, seconds=3, seed=7) | change
    with pytest.raises(RankhouseError, match="choose an empty --out"):
        render.render_corpus(two_song, spec["preset"], songs=spec["songs"], seconds=spec["seconds"], seed=spec["seed"])


def timgm6mb() -> Path:
    import pretty_midi

    return Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"  # the fallback when FluidR3_GM is absent


def test_a_corpus_is_keyed_on_its_soundfont(two_song, monkeypatch, tmp_path):
    """The same songs through another soundfont are other audio: the corpus rendered with
    FluidR3_GM is not reused for TimGM6mb, and the embedded corpora of the two live apart."""
    spec = json.loads((two_song / render.MANIFEST).read_text())
    assert spec["soundfont"] == render.synth.find_soundfont().name and len(spec["soundfont_sha256"]) == 64
    assert spec["fluidsynth"].count(".") == 2
    monkeypatch.setenv("RANKHOUSE_SOUNDFONT", str(timgm6mb()))
    with pytest.raises(RankhouseError, match="choose an empty --out"):
        render.render_corpus(two_song, "techhouse", songs=2, seconds=3, seed=7)
    other = render.render_corpus(tmp_path / "tim", "techhouse", songs=2, seconds=3, seed=7)
    assert json.loads((other / render.MANIFEST).read_text())["soundfont"] == "TimGM6mb.sf2"
    track = "train/techhouse-7-0000/mixture.wav"
    assert not np.array_equal(read_int16(other / track), read_int16(two_song / track))
    monkeypatch.setenv("RANKHOUSE_HOME", str(tmp_path / "home"))
    tim = render.embedded_corpus("techhouse", 2, 2.0, 7)
    monkeypatch.delenv("RANKHOUSE_SOUNDFONT")
    fluid = render.embedded_corpus("techhouse", 2, 2.0, 7)
    assert tim != fluid and tim.parent == fluid.parent


def test_refuses_non_empty_dir_without_manifest(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    with pytest.raises(RankhouseError, match="not a corpus"):
        render.render_corpus(tmp_path / "out", "techhouse", songs=2, seconds=2, seed=0)
    assert (tmp_path / "out" / "keep.txt").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no tmp dir left behind


@pytest.mark.parametrize("kwargs, match", [
    (dict(preset="dubstep"), "unknown preset"),
    (dict(songs=1), "at least 2 songs"),
    (dict(seconds=0.5), "at least 1 second"),
    (dict(valid=2), "valid=2"),
])
def test_rejects_bad_arguments(tmp_path, kwargs, match):
    args = dict(preset="techhouse", songs=2, seconds=2, seed=0) | kwargs
    with pytest.raises(RankhouseError, match=match):
        render.render_corpus(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()


def test_cli_render(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "platform.data", "render", "--preset", "techhouse", "--songs", "2",
                           "--seconds", "2", "--seed", "4", "--valid", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"corpus: {out}" in proc.stdout
    assert json.loads((out / render.MANIFEST).read_text()) == render.corpus_spec("techhouse", 2, 2, 4, 1,
                                                                                         render.synth.find_soundfont())
    assert [t.name for t in tracks(out, "train")] == ["techhouse-4-0000"]
    assert [t.name for t in tracks(out, "valid")] == ["techhouse-4-0001"]
    assert sf.info(str(out / "valid/techhouse-4-0001/vocals.wav")).frames == 2 * 44100


def test_cli_render_refuses_other_corpus(two_song):
    proc = subprocess.run([sys.executable, "-m", "platform.data", "render", "--songs", "2", "--seconds", "3",
                           "--seed", "99", "--out", str(two_song)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("rankhouse: error:") and "choose an empty --out" in proc.stderr


def test_out_dot_in_an_empty_dir(tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(RankhouseError, match="not the current directory"):
        render.render_corpus(Path("."), "techhouse", songs=2, seconds=1, seed=0)
    assert list(Path(".").iterdir()) == []  # nothing written, nothing removed
