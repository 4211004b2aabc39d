"""Audio previews (trainables/previews.py) on a real tiny HT-Demucs and a rendered corpus, and
their logging by a trial at its best epoch (trainables/trial.py) into a real MLflow store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from trainables import htdemucs, previews, trial
from trainables.data import cache
from trainables.data.layout import MIXTURE, normalize_sources
from trainables.family import get_family
from trainables.separator import SeparatorBase
from trainables.loop import Setup

pytestmark = pytest.mark.usefixtures("one_thread")

RATE = 22050  # the tiny model's rate (tiny_kwargs)
SOURCES = normalize_sources({"drums": ["kick", "hihat"], "bass": "bass", "other": "other", "vocals": "vocals"})
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def valid_cache(corpus, tmp_path_factory) -> cache.StemCache:
    path = cache.build(corpus, "valid", ["kick", "hihat", "bass", "other", "vocals"], RATE,
                       cache_dir=tmp_path_factory.mktemp("valid-cache"))
    return cache.StemCache(path)


def test_loudest_window_finds_the_loud_part():
    x = np.full((2, 10_000), 0.01, dtype=np.float32)
    x[:, 6_000:7_000] = 0.5
    start = previews.loudest_window(x, frames=1_000, hop=100)
    assert start == 6_000
    assert previews.loudest_window(x, frames=20_000, hop=100) == 0  # longer than the track: all of it
    assert previews.loudest_window(x, frames=10_000, hop=100) == 0
    # the window always fits inside the track, even when the loudest block is at the very end
    y = np.zeros((2, 10_050), dtype=np.float32)
    y[:, -60:] = 1.0
    s = previews.loudest_window(y, frames=1_000, hop=100)
    assert s + 1_000 <= y.shape[1] and s >= 9_000


def test_write_excerpt_writes_short_16_bit_wavs_of_the_separation(make_tiny, valid_cache, tmp_path):
    model = make_tiny()
    started = time.perf_counter()
    files = previews.write_excerpt(model, valid_cache, SOURCES, RATE, 1.0, torch.device("cpu"), tmp_path,
                                   seconds=2.5)
    elapsed = time.perf_counter() - started
    print(f"\npreview of 2.5 s, 4 sources, tiny model, 1 thread: {elapsed:.3f} s")
    expected = {f"{MIXTURE}.wav", *(f"{s}.wav" for s in SOURCES), *(f"reference/{s}.wav" for s in SOURCES),
                previews.INFO}
    assert {str(f.relative_to(tmp_path)) for f in files} == expected
    assert all(f.is_file() for f in files)
    for f in files:
        if f.suffix == ".wav":
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (RATE, 2, int(2.5 * RATE), "PCM_16")
    meta = json.loads((tmp_path / previews.INFO).read_text())
    assert meta["track"] == valid_cache.names[0] and meta["seconds"] == pytest.approx(2.5)
    start = round(meta["start_s"] * RATE)
    # the mixture is the cached track's window; the drums reference is kick + hihat there
    mix, _ = sf.read(str(tmp_path / "mixture.wav"), dtype="float32", always_2d=True)
    window = valid_cache.track(0, MIXTURE)[:, start:start + int(2.5 * RATE)]
    assert np.abs(mix.T - np.clip(window, -1, 1)).max() < 2 / 2**15
    drums, _ = sf.read(str(tmp_path / "reference" / "drums.wav"), dtype="float32", always_2d=True)
    kick_hihat = (valid_cache.track(0, "kick") + valid_cache.track(0, "hihat"))[:, start:start + int(2.5 * RATE)]
    assert np.abs(drums.T - np.clip(kick_hihat, -1, 1)).max() < 2 / 2**15
    # estimates are the model's own output, not silence and not a copy of the mixture
    for s in SOURCES:
        est, _ = sf.read(str(tmp_path / f"{s}.wav"), dtype="float32", always_2d=True)
        assert np.abs(est).max() > 1e-3
        assert not np.allclose(est, mix, atol=1e-3)
    assert not model.training  # the model's mode is left as it was


def test_write_excerpt_restores_training_mode_and_takes_the_whole_short_track(make_tiny, valid_cache, tmp_path):
    model = make_tiny().train()
    previews.write_excerpt(model, valid_cache, {"bass": ["bass"]}, RATE, 1.0, torch.device("cpu"), tmp_path,
                           seconds=600.0, references=False)
    assert model.training
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bass.wav", previews.INFO, "mixture.wav"]
    assert sf.info(str(tmp_path / "bass.wav")).frames == valid_cache.frames[0]


def test_sdr_bar_chart_is_a_png(tmp_path):
    from matplotlib.image import imread

    metrics = {"epoch": 3, "valid/sdr": 1.5, "valid/sdr/kick": 4.0, "valid/sdr/bass": -1.0,
               "valid/sdr/vocals": float("nan"), "valid/loss": 0.1}
    path = previews.sdr_bar_chart(metrics, tmp_path / "chart.png")
    assert path.read_bytes()[:8] == PNG
    image = imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    with pytest.raises(ValueError, match="valid/sdr/"):
        previews.sdr_bar_chart({"valid/sdr": 1.0}, tmp_path / "none.png")


# --- logging by a trial -----------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    """A real MLflow SQLite store with one experiment and one run: (client, run_id)."""
    from trainables import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.client(uri)
    exp = client.create_experiment("previews", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, client.create_run(exp).info.run_id


def names(client, run_id: str, path: str) -> set[str]:
    return {Path(f.path).name for f in client.list_artifacts(run_id, path)}


def test_a_failing_preview_leaves_a_warning_tag_and_no_partial_artifacts(make_tiny, valid_cache, store):
    _, client, run_id = store
    model = make_tiny()
    base = SeparatorBase(model=model, identity={"name": "tiny", "sha256": ""}, sources=list(SOURCES), samplerate=RATE,
                         segment=1.0)
    cfg = {"data": {"sources": SOURCES, "segment": 1.0}}
    setup = Setup(model, {}, [], base, get_family("htdemucs"), cfg, valid=valid_cache)
    trial.log_preview(client, run_id, setup, {"epoch": 2, "valid/sdr": 1.0}, torch.device("cpu"))
    tags = client.get_run(run_id).data.tags
    assert tags["rankhouse.preview_warning"].startswith("epoch 2: ValueError: no valid/sdr/")
    assert "rankhouse.preview_epoch" not in tags
    assert client.list_artifacts(run_id, trial.PREVIEW_PATH) == []
    trial.log_preview(client, run_id, None, {"epoch": 3}, torch.device("cpu"))  # no setup: still no exception
    assert client.get_run(run_id).data.tags["rankhouse.preview_warning"].startswith("epoch 3: RuntimeError")


@pytest.fixture
def trial_config(corpus, tiny_kwargs, tmp_path) -> dict:
    torch.manual_seed(0)
    base = tmp_path / "base.safetensors"
    htdemucs.save_checkpoint(htdemucs.new_model(["drums", "bass", "other", "vocals"], tiny_kwargs), base, tiny_kwargs)
    return {
        "model": {"family": "htdemucs", "base": str(base), "sources": ["kick", "hihat", "bass", "other", "vocals"],
                  "parents": {"kick": "drums", "hihat": "drums"}},
        "data": {"root": str(corpus), "segment": 1.0, "cache_dir": str(tmp_path / "cache")},
        "lora": {"rank": 2, "alpha": 4.0},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "train": {"epochs": 2, "steps_per_epoch": 1, "batch_size": 1, "seed": 3, "valid_max_seconds": 2.0},
        "objective": {"metric": "valid/sdr", "mode": "max"},
    }


class FolderCheckpoint:
    """Stands in for ray.tune.Checkpoint: the loop deletes its folder after ``report``."""

    @classmethod
    def from_directory(cls, path: str) -> str:
        return path


def test_the_best_epoch_of_a_trial_logs_its_preview(trial_config, store):
    uri, client, run_id = store
    reported = []
    trial._run_loop({"cfg": trial_config, "uri": uri, "run_id": run_id},
                    lambda metrics, checkpoint: reported.append(metrics), None, FolderCheckpoint, 0,
                    torch.device("cpu"))
    assert [m["epoch"] for m in reported] == [1, 2]
    tags = client.get_run(run_id).data.tags
    assert "rankhouse.preview_warning" not in tags
    assert tags["rankhouse.preview_epoch"] == tags["rankhouse.best_epoch"]
    sources = trial_config["model"]["sources"]
    assert names(client, run_id, "preview") == {"mixture.wav", previews.CHART, previews.INFO, "reference",
                                                *(f"{s}.wav" for s in sources)}
    assert names(client, run_id, "preview/reference") == {f"{s}.wav" for s in sources}
    local = Path(client.download_artifacts(run_id, "preview"))
    assert (local / previews.CHART).read_bytes()[:8] == PNG
    info = sf.info(str(local / "kick.wav"))
    assert (info.samplerate, info.channels, info.frames) == (RATE, 2, 6 * RATE)
