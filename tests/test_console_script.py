"""``rankhouse COMMAND ...``, the console script: the same commands and arguments as
``python -m platform.COMMAND``, though a console script's ``import platform`` would find the
standard library's module (its ``sys.path`` starts at the environment's ``bin``).
``tests/test_tune_e2e.py`` runs a whole search through it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import soundfile as sf

RANKHOUSE = Path(sys.executable).parent / "rankhouse"
ROOT = Path(__file__).resolve().parents[1]


def rankhouse(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(RANKHOUSE), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_help_lists_every_command(tmp_path):
    proc = rankhouse("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for command in ("tune", "promote", "separate", "analyze", "generate", "export", "data", "base"):
        assert f"\n  {command} " in proc.stdout
    bare = rankhouse(cwd=tmp_path)
    assert bare.returncode == 2 and "usage: rankhouse COMMAND" in bare.stdout


def test_a_command_takes_the_module_s_arguments(tmp_path):
    """``rankhouse tune --help`` is ``python -m platform.tune --help``, from any folder."""
    ours = rankhouse("tune", "--help", cwd=tmp_path)
    module = subprocess.run([sys.executable, "-m", "platform.tune", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert ours.returncode == module.returncode == 0, ours.stderr
    assert ours.stdout == module.stdout


def test_an_unknown_command_is_one_line(tmp_path):
    proc = rankhouse("tnue", "search_spaces/techhouse.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rankhouse: error: 'tnue' is not a command; use one of tune, promote, separate, analyze, generate, export, data, base"]


def test_bad_input_is_the_command_s_one_line(tmp_path):
    proc = rankhouse("tune", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["rankhouse: error: missing.yaml: no such search-space file"]


def test_render_then_check_a_dataset(tmp_path):
    """Two real commands end to end through the console script: the rendered songs are
    audio files the checker accepts, and the checker finds a stem removed afterwards."""
    out = tmp_path / "corpus"
    proc = rankhouse("data", "render", "--preset", "techhouse", "--songs", "2", "--seconds", "2", "--out", str(out),
                     "--seed", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    mixtures = sorted(out.rglob("mixture.wav"))
    assert len(mixtures) == 2 and sf.info(mixtures[0]).duration == 2.0
    sources = "kick,hihat,bass,other,vocals"
    assert rankhouse("data", "check", str(out), "--sources", sources, cwd=tmp_path).returncode == 0
    (mixtures[0].parent / "hihat.wav").unlink()
    broken = rankhouse("data", "check", str(out), "--sources", sources, cwd=tmp_path)
    assert broken.returncode != 0
    assert "hihat" in broken.stdout + broken.stderr
    assert "Traceback" not in broken.stderr
