"""``platform.data check`` on a clean corpus and on one planted defect at a time (real files, no mocks)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import platform.data as cli
from trainables.data import audio, check, compose
from trainables.data.layout import normalize_sources
from trainables.errors import RankhouseError
from trainables.separation import Separation

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ",".join(compose.STEMS)
TRACK = "train/techhouse-1-0001"
VALID = "valid/techhouse-1-0003"


def run_check(root: Path, capsys, sources: str = SOURCES, *extra: str) -> tuple[int, list[str]]:
    """Run the ``check`` command in-process: (exit code, problem lines)."""
    code = cli.main(["check", str(root), "--sources", sources, *extra])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith(f"{root}: "), lines  # the summary line
    return code, lines[:-1]


def problems(root: Path, sources: str = SOURCES, segment: float | None = None) -> list[check.Problem]:
    return check.check_dataset(root, cli.parse_sources(sources), segment)


def expect_only(root: Path, capsys, severity: str, where: str, what: str, exit_code: int) -> None:
    """The planted defect is the one problem found, exactly as described, and the CLI's exit code follows."""
    p = only(problems(root))
    assert (p.severity, p.where, p.what) == (severity, where, what)
    assert run_check(root, capsys)[0] == exit_code


def only(found: list[check.Problem], severity: str | None = None) -> check.Problem:
    if severity:
        found = [p for p in found if p.severity == severity]
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def read16(path: Path) -> tuple[np.ndarray, int]:
    return sf.read(str(path), dtype="int16", always_2d=True)


def write16(path: Path, data: np.ndarray, sr: int = 44100) -> None:
    sf.write(str(path), data, sr, subtype="PCM_16")


# --- clean -----------------------------------------------------------------------------------------


def test_clean_corpus_has_no_problems(corpus, capsys):
    assert problems(corpus) == []
    code, lines = run_check(corpus, capsys)
    assert code == 0 and lines == []


def test_cli_subprocess_exit_codes(corpus, corpus_copy):
    ok = subprocess.run([sys.executable, "-m", "platform.data", "check", str(corpus), "--sources", SOURCES],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{corpus}: 0 error(s), 0 warning(s)" in ok.stdout
    (corpus_copy / TRACK / "bass.wav").unlink()
    bad = subprocess.run([sys.executable, "-m", "platform.data", "check", str(corpus_copy), "--sources", SOURCES],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert f"error: {TRACK}/bass.wav: missing" in bad.stdout
    assert "1 error(s), 0 warning(s)" in bad.stdout


def test_the_separation_task_refuses_a_broken_dataset_with_the_fix(corpus, corpus_copy, capsys):
    def cfg(root):
        return {"data": {"root": str(root), "sources": cli.parse_sources(SOURCES), "segment": 1.0, "tolerance_db": 30.0}}

    Separation().check(cfg(corpus))
    assert capsys.readouterr().err == ""
    (corpus_copy / TRACK / "kick.wav").unlink()
    with pytest.raises(RankhouseError, match="1 dataset error.*python -m platform.data check"):
        Separation().check(cfg(corpus_copy))
    assert f"{TRACK}/kick.wav: missing" in capsys.readouterr().err


def test_missing_root(tmp_path, capsys):
    code, lines = run_check(tmp_path / "nowhere", capsys)
    assert code == 1
    assert lines == [f"error: {tmp_path / 'nowhere'}: no such directory; pass the dataset root holding train/ and valid/"]


# --- one planted defect per test --------------------------------------------------------------------


def test_missing_split(corpus_copy, capsys):
    shutil.rmtree(corpus_copy / "valid")
    p = only(problems(corpus_copy))
    assert (p.severity, p.where, p.what) == ("error", "valid/", "missing split")
    code, lines = run_check(corpus_copy, capsys)
    assert code == 1 and lines == [str(p)]


def test_empty_split(corpus_copy, capsys):
    shutil.rmtree(corpus_copy / "valid")
    (corpus_copy / "valid").mkdir()
    p = only(problems(corpus_copy))
    assert (p.severity, p.where, p.what) == ("error", "valid/", "no tracks")
    assert run_check(corpus_copy, capsys)[0] == 1


def test_missing_stem(corpus_copy, capsys):
    (corpus_copy / TRACK / "vocals.wav").unlink()
    p = only(problems(corpus_copy))
    assert (p.severity, p.where, p.what) == ("error", f"{TRACK}/vocals.wav", "missing")
    assert run_check(corpus_copy, capsys)[0] == 1


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_corrupt_file(corpus_copy, capsys):
    path = corpus_copy / TRACK / "bass.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    p = only(problems(corpus_copy))
    assert (p.severity, p.where) == ("error", f"{TRACK}/bass.wav")
    assert "unreadable or corrupt audio" in p.what
    assert run_check(corpus_copy, capsys)[0] == 1


def test_extension_lies(corpus_copy, capsys):
    path = corpus_copy / TRACK / "hihat.wav"
    data, sr = read16(path)
    sf.write(str(path), data, sr, format="FLAC")  # FLAC bytes behind a .wav name
    p = only(problems(corpus_copy))
    assert (p.severity, p.where) == ("error", f"{TRACK}/hihat.wav")
    assert p.what == "extension says WAV but the content is FLAC"
    assert "hihat.flac" in p.fix
    assert run_check(corpus_copy, capsys)[0] == 1


def test_flac_with_right_extension_is_fine(corpus_copy, capsys):
    """The same FLAC content named .flac is a valid stem (and the mixture still sums)."""
    path = corpus_copy / TRACK / "hihat.wav"
    data, sr = read16(path)
    sf.write(str(path.with_suffix(".flac")), data, sr, format="FLAC")
    path.unlink()
    assert problems(corpus_copy) == []
    assert run_check(corpus_copy, capsys)[0] == 0


def test_samplerate_mismatch(corpus_copy, capsys):
    path = corpus_copy / TRACK / "other.wav"
    x = audio.read(path)  # (2, n) float32 at 44.1 kHz
    sf.write(str(path), audio.resample(x, 44100, 22050).T, 22050, subtype="PCM_16")
    expect_only(corpus_copy, capsys, "error", f"{TRACK}/other.wav", "sample rate 22050 Hz but mixture is 44100 Hz", exit_code=1)


def test_channel_mismatch(corpus_copy, capsys):
    path = corpus_copy / TRACK / "bass.wav"
    data, sr = read16(path)
    write16(path, np.stack([data[:, 0], data[:, 1], data[:, 0]], axis=1), sr)  # 3 channels
    assert sf.info(str(path)).channels == 3
    expect_only(corpus_copy, capsys, "error", f"{TRACK}/bass.wav", "3 channel(s) but mixture has 2", exit_code=1)


def test_mono_stem_is_a_warning(corpus_copy, capsys):
    """A mono stem is used on both channels (as the loader does): a warning, and the sum check
    sees it upmixed, so a mixture made from the upmixed stem passes."""
    track = corpus_copy / TRACK
    bass, sr = read16(track / "bass.wav")
    mix, _ = read16(track / "mixture.wav")
    mono = bass[:, 0]
    write16(track / "bass.wav", mono, sr)
    write16(track / "mixture.wav", (mix.astype(np.int32) - bass + mono[:, None]).astype(np.int16), sr)
    expect_only(corpus_copy, capsys, "warning", f"{TRACK}/bass.wav", "mono but mixture has 2 channels", exit_code=0)


def test_length_mismatch(corpus_copy, capsys):
    path = corpus_copy / TRACK / "kick.wav"
    data, sr = read16(path)
    write16(path, data[: len(data) - 4410], sr)
    expect_only(corpus_copy, capsys, "error", f"{TRACK}/kick.wav", f"{6 * 44100 - 4410} samples but mixture has {6 * 44100} (-0.100 s)", exit_code=1)


def test_nan_samples(corpus_copy, capsys):
    path = corpus_copy / VALID / "vocals.wav"
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    data[1000:1010] = np.nan  # 10 frames x 2 channels
    sf.write(str(path), data, sr, subtype="FLOAT")
    expect_only(corpus_copy, capsys, "error", f"{VALID}/vocals.wav", "20 NaN/inf samples", exit_code=1)


def test_clipping(corpus_copy, capsys):
    path = corpus_copy / TRACK / "kick.wav"
    data, sr = read16(path)
    data[5000:5010, :] = 32767  # one run of 10 full-scale samples per channel
    write16(path, data, sr)
    p = only(problems(corpus_copy))
    assert (p.severity, p.where) == ("error", f"{TRACK}/kick.wav")
    assert p.what.startswith("clipped (2 runs of >= 3 full-scale samples")
    assert run_check(corpus_copy, capsys)[0] == 1


def test_two_full_scale_samples_are_not_clipping(corpus_copy):
    """Negative control for the clipping check: a run of 2 full-scale samples is not a clip."""
    path = corpus_copy / TRACK / "kick.wav"
    mix_path = corpus_copy / TRACK / "mixture.wav"
    kick, sr = read16(path)
    mix, _ = read16(mix_path)
    others = mix[:, 0].astype(np.int32) - kick[:, 0]
    # where the other stems are <= 0, a full-scale kick keeps the mixture in range (and == sum)
    i = int(np.flatnonzero((others[:-1] <= 0) & (others[1:] <= 0))[0])
    kick[i:i + 2, 0] = 32767
    mix[i:i + 2, 0] = others[i:i + 2] + 32767
    write16(path, kick, sr)
    write16(mix_path, mix, sr)
    assert problems(corpus_copy) == []
    kick[i + 2, 0] = 32767  # a third one makes it a clip
    write16(path, kick, sr)
    p = only(problems(corpus_copy))
    assert (p.where, p.what[:12]) == (f"{TRACK}/kick.wav", "clipped (1 r")


def test_silent_stem_is_a_warning(corpus_copy, capsys):
    folder = corpus_copy / TRACK
    vocals, sr = read16(folder / "vocals.wav")
    mix, _ = read16(folder / "mixture.wav")
    write16(folder / "mixture.wav", (mix.astype(np.int32) - vocals).astype(np.int16), sr)  # still == sum of stems
    write16(folder / "vocals.wav", np.zeros_like(vocals), sr)
    p = only(problems(corpus_copy))
    assert (p.severity, p.where, p.what) == ("warning", f"{TRACK}/vocals.wav", "all-silent stem")
    code, lines = run_check(corpus_copy, capsys)
    assert code == 0 and lines == [str(p)]


def test_mixture_not_sum_of_stems(corpus_copy, capsys):
    path = corpus_copy / TRACK / "mixture.wav"
    mix, sr = read16(path)
    rms = np.sqrt(np.mean(mix.astype(np.float64) ** 2))
    noise = np.random.default_rng(0).standard_normal(mix.shape) * rms * 10 ** (-20 / 20)
    write16(path, np.round(mix + noise).astype(np.int16), sr)
    p = only(problems(corpus_copy))
    assert (p.severity, p.where) == ("error", f"{TRACK}/mixture.wav")
    m = re.search(r"mixture != sum of stems \(kick, hihat, bass, other, vocals\): residual (-?\d+\.\d) dB", p.what)
    assert m, p.what
    assert float(m.group(1)) == pytest.approx(-20.0, abs=0.3)
    assert run_check(corpus_copy, capsys)[0] == 1


def test_tolerance_accepts_small_residual(corpus_copy):
    """Noise 40 dB below the mixture passes the default 30 dB tolerance, and fails a 50 dB one."""
    path = corpus_copy / TRACK / "mixture.wav"
    mix, sr = read16(path)
    rms = np.sqrt(np.mean(mix.astype(np.float64) ** 2))
    noise = np.random.default_rng(1).standard_normal(mix.shape) * rms * 10 ** (-40 / 20)
    write16(path, np.round(mix + noise).astype(np.int16), sr)
    sources = normalize_sources(list(compose.STEMS))
    assert check.check_dataset(corpus_copy, sources) == []
    p = only(check.check_dataset(corpus_copy, sources, tolerance_db=50))
    assert "residual -40." in p.what or "residual -39." in p.what, p.what


def test_same_mixture_in_train_and_valid(corpus_copy, capsys):
    shutil.copytree(corpus_copy / TRACK, corpus_copy / "valid" / "renamed-copy")
    expect_only(corpus_copy, capsys, "error", "valid/renamed-copy", f"identical mixture to {TRACK}", exit_code=1)


def test_same_track_name_in_train_and_valid(corpus_copy, capsys):
    shutil.copytree(corpus_copy / TRACK, corpus_copy / "valid" / "techhouse-1-0001")
    p = only(problems(corpus_copy))
    assert (p.severity, p.where, p.what) == ("error", "valid/techhouse-1-0001", "the same track name is in train/")
    assert run_check(corpus_copy, capsys)[0] == 1


def test_track_shorter_than_segment(corpus, capsys):
    found = problems(corpus, segment=10)
    assert len(found) == 4 and all(p.severity == "error" for p in found)
    assert sorted(p.where for p in found) == [f"train/techhouse-1-000{i}/mixture.wav" for i in range(3)] + \
        [f"{VALID}/mixture.wav"]
    assert all(p.what == "6.00 s long, shorter than one 10 s training segment" for p in found)
    assert problems(corpus, segment=6) == []  # exactly one segment long is enough
    assert run_check(corpus, capsys, SOURCES, "--segment", "10")[0] == 1
    assert run_check(corpus, capsys, SOURCES, "--segment", "5.5")[0] == 0


def test_stray_files_are_warnings(corpus_copy, capsys):
    (corpus_copy / TRACK / "notes.txt").write_text("mixdown v3")
    (corpus_copy / "README.md").write_text("my dataset")
    found = problems(corpus_copy)
    assert [(p.severity, p.where, p.what) for p in found] == [
        ("warning", "README.md", "not part of the train/valid layout"),
        ("warning", f"{TRACK}/notes.txt", "not an audio file"),
    ]
    code, lines = run_check(corpus_copy, capsys)
    assert code == 0 and lines == [str(p) for p in found]


def test_unused_audio_stem_is_a_warning_and_breaks_the_sum(corpus, capsys):
    """Sources that leave out a stem on disk: the file is flagged unused and the mixture no longer sums."""
    found = problems(corpus, "kick,hihat,bass,other")
    warnings = [p for p in found if p.severity == "warning"]
    errors = check.errors(found)
    assert sorted(p.where for p in warnings) == sorted(f"{t}/vocals.wav" for t in
                                                       ["train/techhouse-1-0000", "train/techhouse-1-0001",
                                                        "train/techhouse-1-0002", VALID])
    assert all(p.what == "audio file not used by the configured sources" for p in warnings)
    assert len(errors) == 4 and all("mixture != sum of stems (kick, hihat, bass, other)" in p.what for p in errors)
    assert run_check(corpus, capsys, "kick,hihat,bass,other")[0] == 1


def test_sources_as_sums(corpus, corpus_copy, capsys):
    sums = "drums=kick+hihat,bass,other,vocals"
    assert cli.parse_sources(sums) == {"drums": ["kick", "hihat"], "bass": ["bass"], "other": ["other"],
                                       "vocals": ["vocals"]}
    assert problems(corpus, sums) == []
    assert run_check(corpus, capsys, sums)[0] == 0
    (corpus_copy / TRACK / "hihat.wav").unlink()  # a stem that is only part of a summed source
    p = only(problems(corpus_copy, sums))
    assert (p.severity, p.where, p.what) == ("error", f"{TRACK}/hihat.wav", "missing")
    assert run_check(corpus_copy, capsys, sums)[0] == 1


@pytest.mark.parametrize("text, match", [("", "empty"), (" , ", "empty"), ("drums=mixture", "model input"),
                                         ("drums=kick+mixture,bass", "model input")])
def test_bad_sources(text, match):
    with pytest.raises(RankhouseError, match=match):
        cli.parse_sources(text)


def test_empty_stem_name_in_a_sum_is_rejected():
    with pytest.raises(RankhouseError):
        cli.parse_sources("drums=kick+,bass")
