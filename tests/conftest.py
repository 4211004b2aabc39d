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
