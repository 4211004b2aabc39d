"""Shared fixtures for the data tests: one small rendered corpus per session.

The session corpus is read-only by convention; a test that plants a defect works on
``corpus_copy`` (a copytree of it into the test's own tmp dir).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CORPUS = dict(preset="techhouse", songs=4, seconds=6, seed=1)  # 3 train + 1 valid track, 6 s each


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A 4-song, 6-second tech-house corpus rendered once for the session."""
    from trainables.data import render

    root = tmp_path_factory.mktemp("corpus") / "techhouse"
    render.render_corpus(root, CORPUS["preset"], songs=CORPUS["songs"], seconds=CORPUS["seconds"],
                         seed=CORPUS["seed"])
    return root


@pytest.fixture
def corpus_copy(corpus, tmp_path) -> Path:
    """A private copy of the session corpus that a test may damage."""
    dst = tmp_path / "corpus"
    shutil.copytree(corpus, dst)
    return dst


@pytest.fixture(scope="session")
def corpus_cache(corpus, tmp_path_factory) -> Path:
    """The 44.1 kHz Arrow cache of the session corpus' train split, all five stems."""
    from trainables.data import cache, compose

    return cache.build(corpus, "train", list(compose.STEMS), 44100, cache_dir=tmp_path_factory.mktemp("cache"))


# --- tiny HT-Demucs models for the LoRA / family tests -------------------------------------------

TINY_SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="session")
def tiny_kwargs() -> dict:
    """The embedded base's architecture (depth 4, nfft 4096, 22.05 kHz) at 8 channels and 1 s."""
    from trainables import htdemucs

    return {**htdemucs.EMBEDDED_KWARGS, "channels": 8, "segment": 1}


@pytest.fixture
def make_tiny(tiny_kwargs):
    """``make_tiny(sources=None, seed=0)``: a seeded tiny HT-Demucs, frozen and in eval mode.

    Frozen on purpose: PyTorch's MultiheadAttention takes its fast path only when no parameter
    requires grad, and PEFT freezes the base, so an unfrozen reference differs by ~1e-7."""
    from trainables import htdemucs

    def make(sources: list[str] | None = None, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        model = htdemucs.new_model(list(sources or TINY_SOURCES), tiny_kwargs)
        return model.eval().requires_grad_(False)

    return make


@pytest.fixture
def tiny_mix(tiny_kwargs):
    """One second of seeded stereo noise, (1, 2, segment * samplerate)."""
    import torch

    n = int(tiny_kwargs["segment"] * tiny_kwargs["samplerate"])
    return torch.randn(1, 2, n, generator=torch.Generator().manual_seed(1234))


@pytest.fixture
def one_thread():
    """Tiny forwards are ~50x slower when torch's threads fight another job for 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TinySearch:
    """``python -m platform.tune`` on a tiny random HT-Demucs base and a 4-song corpus, for the
    end-to-end tests that start, kill and resume real searches."""

    KWARGS = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=2, t_layers=2,
                  bottom_channels=0)

    def __init__(self, work: Path):
        import os

        import torch

        from trainables import htdemucs

        torch.manual_seed(0)
        self.base = work / "tiny.safetensors"
        htdemucs.save_checkpoint(htdemucs.new_model(htdemucs.EMBEDDED_SOURCES, self.KWARGS), self.base, self.KWARGS)
        self.out = work / "out"
        self.env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}

    def cmd(self, *overrides: str) -> list[str]:
        import sys

        return [sys.executable, "-m", "platform.tune", "search_spaces/techhouse.yaml", f"model.base={self.base}",
                "search.scheduler.type=fifo", "train.batch_size=2", "data.segment=2.0", "train.valid_max_seconds=4.0",
                "data.embedded.songs=4", "data.embedded.seconds=6.0", "resources.cpus_per_worker=0.9",
                f"tracking.output={self.out}", *overrides]

    def watch(self, proc, log: Path, until, timeout: float = 900):
        """Poll the search's child runs while ``proc`` runs, until ``until(parent_id, runs)`` returns
        something; return that (None if the search ended first)."""
        import re
        import time

        from trainables import tracking

        deadline = time.time() + timeout
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            found = re.search(r"^parent run: (\w+)", log.read_text(), re.M)
            if not found:
                continue
            mlflow = tracking.client(f"sqlite:///{self.out / 'mlflow.db'}")
            parent = mlflow.get_run(found.group(1))
            hit = until(found.group(1), list(tracking.children(mlflow, parent.info.experiment_id, found.group(1))))
            if hit is not None:
                return hit
        return None


@pytest.fixture
def tiny_search(tmp_path) -> TinySearch:
    return TinySearch(tmp_path)

