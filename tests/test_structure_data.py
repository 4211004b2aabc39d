"""The structure family's data: the EDM trainer's annotation format, its checks, and the
rendered corpus whose arrangements vary and whose sections can be heard."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from trainables.errors import RankhouseError
from trainables.structure import annotations, corpus, dataset
from trainables.structure.task import Structure

# the annotation example of the EDM trainer's documentation, verbatim but for the audio path
SEED_EXAMPLE = """\
metadata:
  tier: 1
  confidence: 0.95
audio:
  file: {audio}
  duration: 240.0
  bpm: 128.0
  downbeat: 0.0
  time_signature: [4, 4]
structure:
  - bar: 1
    label: intro
    time: 0.0
    confidence: 1.0
  - bar: 17
    label: buildup
    time: 30.0
    confidence: 0.9
  - bar: 25
    label: drop
    time: 45.0
    confidence: 1.0
"""


def tone(path: Path, seconds: float, samplerate: int = 22050) -> Path:
    t = np.arange(int(seconds * samplerate)) / samplerate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t).astype(np.float32), samplerate)
    return path


def test_the_trainers_documented_example_parses_and_its_beats_come_from_bpm(tmp_path):
    audio = tone(tmp_path / "track.flac", 240.0, 8000)
    (tmp_path / "track.yaml").write_text(SEED_EXAMPLE.format(audio=audio))
    ann = annotations.with_audio(annotations.load(tmp_path / "track.yaml"))
    assert ann.labels == ["intro", "buildup", "drop"] and list(ann.times) == [0.0, 30.0, 45.0]
    assert ann.bpm == 128.0 and ann.duration == 240.0 and ann.meter == 4
    assert ann.beats_from == "bpm"
    assert np.allclose(np.diff(ann.beats), 60 / 128) and ann.beats[0] == 0.0
    assert np.allclose(ann.downbeats[:3], [0.0, 4 * 60 / 128, 8 * 60 / 128])
    assert list(ann.boundaries) == [30.0, 45.0]  # the track's start is not a boundary
    assert annotations.problems(ann) == []


def test_annotated_beats_are_read_rather_than_derived(tmp_path):
    audio = tone(tmp_path / "a.wav", 20.0)
    beats = [0.1 + 0.5 * i for i in range(38)]
    data = yaml.safe_load(SEED_EXAMPLE.format(audio=audio))
    data["audio"]["duration"], data["audio"]["bpm"] = 20.0, 120.0
    data["structure"] = data["structure"][:1]
    data["beats"], data["downbeats"] = beats, beats[::4]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    ann = annotations.with_audio(annotations.load(tmp_path / "a.yaml"))
    assert ann.beats_from == "annotation" and list(ann.beats) == beats and list(ann.downbeats) == beats[::4]


def bad(tmp_path, change, audio_seconds: float = 60.0) -> list[str]:
    audio = tone(tmp_path / "song.wav", audio_seconds)
    data = yaml.safe_load(SEED_EXAMPLE.format(audio=audio))
    data["audio"]["duration"] = audio_seconds
    change(data)
    (tmp_path / "song.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return [str(p) for p in annotations.problems(annotations.load(tmp_path / "song.yaml"))]


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["audio"].update(file="/nowhere/missing.flac"), "audio.file: /nowhere/missing.flac: no such file"),
    (lambda d: d["structure"][2].update(time=20.0), "structure[2].time: 20 s does not come after 30 s"),
    (lambda d: d["structure"][2].update(time=75.0), "structure[2].time: 75 s is past the audio's end (60.0 s)"),
    (lambda d: d["structure"][1].update(label="chorus"), "structure[1].label: 'chorus' is not a known label"),
    (lambda d: d.update(beats=[0.5 * i for i in range(100)]), "audio.bpm: 128 disagrees with the annotated beats "
                                                             "(120.0 bpm"),
    (lambda d: d["audio"].update(duration=90.0), "audio.duration: 90 s but the audio lasts 60.0 s"),
])
def test_each_bad_annotation_is_named_with_its_field_and_a_fix(tmp_path, change, expected):
    found = bad(tmp_path, change)
    assert len(found) == 1 and expected in found[0] and str(tmp_path / "song.yaml") in found[0]
    assert found[0].startswith("error: ") and "; " in found[0]  # what is wrong; how to fix it


def test_unreadable_audio_and_missing_fields_are_one_line_each(tmp_path):
    (tmp_path / "junk.flac").write_bytes(b"not audio at all" * 100)
    data = yaml.safe_load(SEED_EXAMPLE.format(audio=tmp_path / "junk.flac"))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
    found = [str(p) for p in annotations.problems(annotations.load(tmp_path / "a.yaml"))]
    assert len(found) == 1 and "unreadable audio" in found[0]
    del data["audio"]["bpm"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RankhouseError, match=r"b\.yaml: audio\.bpm: missing"):
        annotations.load(tmp_path / "b.yaml")


def test_an_audio_folder_overrides_the_annotated_paths(tmp_path):
    (tmp_path / "music").mkdir()
    tone(tmp_path / "music" / "track.flac", 50.0)
    (tmp_path / "a.yaml").write_text(SEED_EXAMPLE.format(audio="/home/someone/music/track.flac"))
    ann = annotations.load(tmp_path / "a.yaml", audio_dir=tmp_path / "music")
    assert ann.audio == tmp_path / "music" / "track.flac" and ann.audio.is_file()


def test_a_flat_folder_splits_every_fifth_file_into_valid(tmp_path):
    for i in range(10):
        (tmp_path / f"t{i}.yaml").write_text("x: 1")
    split = annotations.files(tmp_path)
    assert [p.name for p in split["valid"]] == ["t4.yaml", "t9.yaml"] and len(split["train"]) == 8


def test_arrangements_vary_in_length_order_and_section_size():
    plans = [corpus.plan((30.0, 120.0))(126.0, np.random.default_rng(s)) for s in range(300)]
    bar = 4 * 60 / 126.0
    lengths = [sum(s.bars for s in p) * bar for p in plans]
    assert 30 <= min(lengths) and max(lengths) <= 120 and np.std(lengths) > 15
    sequences = Counter(tuple(s.label for s in p) for p in plans)
    assert sequences.most_common(1)[0][1] / len(plans) < 0.4  # no arrangement a template could rely on
    drops = [sum(s.label == "drop" for s in p) for p in plans]
    assert max(drops) >= 3 and sum(d >= 2 for d in drops) > 0.3 * len(plans)
    assert any(sum(s.label == "breakdown" for s in p) >= 2 for p in plans)
    assert any(p[0].label != "intro" for p in plans) and any(p[-1].label != "outro" for p in plans)
    sizes = {s.bars for p in plans for s in p if s.label != "drop"}  # drops may join: 8+8, 16+8...
    assert sizes == {4, 8, 16}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    return corpus.render_corpus(tmp_path_factory.mktemp("structure") / "corpus", "techhouse", 3, (30.0, 60.0), seed=4)


def test_the_corpus_is_written_in_the_trainers_format_and_checks_clean(rendered, capsys):
    found = annotations.files(rendered)
    assert len(found["train"]) == 2 and len(found["valid"]) == 1
    data = yaml.safe_load(found["train"][0].read_text())
    assert set(data) >= {"metadata", "audio", "structure", "beats", "downbeats"}
    assert set(data["audio"]) == {"file", "duration", "bpm", "downbeat", "time_signature"}
    assert all(set(s) == {"bar", "label", "time", "confidence"} for s in data["structure"])
    Structure().check({"data": {"root": str(rendered), "audio_dir": None}})
    assert "beats read from the annotation in 3, derived from bpm and downbeat in 0" in capsys.readouterr().err


def test_rendering_again_gives_the_same_bytes(rendered, tmp_path):
    again = corpus.render_corpus(tmp_path / "again", "techhouse", 3, (30.0, 60.0), seed=4)
    for f in sorted(rendered.rglob("*.flac")):
        a, _ = sf.read(f, dtype="int16")
        b, _ = sf.read(again / f.relative_to(rendered), dtype="int16")
        assert np.array_equal(a, b)


def test_every_section_is_audible_in_the_mixture(tmp_path):
    """Per section, the low band (kick and bass) and the snare-roll band differ as the
    arrangement says: no kick in buildups and breakdowns, a roll in buildups."""
    pcm, notes = corpus.render_structure_song("techhouse", 11, (60.0, 90.0), corpus.synth.find_soundfont())
    ann_path = tmp_path / "s.yaml"
    sf.write(tmp_path / "s.flac", pcm, corpus.SAMPLERATE)
    notes["audio"]["file"] = "s.flac"
    ann_path.write_text(yaml.safe_dump(notes))
    ann = annotations.with_audio(annotations.load(ann_path))
    energy = dataset.band_energy(pcm, corpus.SAMPLERATE, 882, len(pcm) // 882)
    ends = np.append(ann.times[1:], ann.duration)
    low = {}
    for start, end, label in zip(ann.times, ends, ann.labels):
        inner = slice(int((start + 1) * 25), int((end - 1) * 25))
        low.setdefault(label, []).append(float(energy[inner, 0].mean()))
    assert {"buildup", "drop"} <= set(low)
    for quiet in ("buildup", "breakdown"):
        for value in low.get(quiet, []):
            assert value < min(low["drop"]) - 0.15, (quiet, low)


def test_data_check_names_each_bad_annotation_and_exits_non_zero(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    for split in ("train", "valid"):
        (tmp_path / split).mkdir()
        audio = tone(tmp_path / split / "a.wav", 60.0)
        data = yaml.safe_load(SEED_EXAMPLE.format(audio=audio.name))
        data["audio"]["duration"] = 60.0
        if split == "valid":
            data["structure"][1]["label"] = "chorus"
        (tmp_path / split / "a.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "platform.data", "check", "search_spaces/structure_techhouse.yaml",
                           f"data.root={tmp_path}"], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert f"error: {tmp_path / 'valid' / 'a.yaml'}: structure[1].label: 'chorus' is not a known label; use one of " \
           "intro, buildup, drop, breakdown, outro" in lines
    assert "beats read from the annotation in 0, derived from bpm and downbeat in 2" in proc.stderr
    assert lines[-1].startswith(f"rankhouse: error: {tmp_path}: 1 annotation error(s)")
    assert "Traceback" not in proc.stderr
