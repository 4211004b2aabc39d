"""The memory-mapped Arrow stem cache and the segment sampler, on real rendered audio."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainables.data import audio, cache, compose
from trainables.data.layout import MIXTURE, find_file, normalize_sources, tracks
from trainables.data.segments import Augment, SegmentSampler, source_audio, validation_tracks
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
STEMS = list(compose.STEMS)
TRACK = "train/techhouse-1-0001"
SR = 44100


def arrow_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.arrow"))


# --- cache contents ---------------------------------------------------------------------------------


@pytest.mark.parametrize("samplerate", [44100, 22050])
@pytest.mark.parametrize("split", ["train", "valid"])
def test_cache_equals_decoded_audio(corpus, tmp_path, split, samplerate):
    path = cache.build(corpus, split, STEMS, samplerate, cache_dir=tmp_path)
    assert path.parent == tmp_path and path.name.startswith(f"{split}-{samplerate}-")
    c = cache.StemCache(path)
    expected = tracks(corpus, split)
    assert c.names == [t.name for t in expected]
    assert sorted(c.stems) == sorted(STEMS)
    for i, track in enumerate(expected):
        assert c.frames[i] == round(6 * samplerate)
        for stem in [MIXTURE, *STEMS]:
            decoded = audio.read(find_file(track, stem), samplerate, 2)
            cached = c.track(i, stem)
            assert cached.shape == decoded.shape == (2, c.frames[i])
            assert cached.dtype == np.float32
            np.testing.assert_array_equal(cached, decoded, err_msg=f"{track.name}/{stem} @ {samplerate}")


def test_cache_at_44100_is_the_int16_audio(corpus, corpus_cache):
    """No resampling at the native rate: cached floats are exactly the PCM values / 32768."""
    c = cache.StemCache(corpus_cache)
    pcm, _ = sf.read(str(corpus / TRACK / "bass.wav"), dtype="int16")
    np.testing.assert_array_equal(c.track(c.names.index("techhouse-1-0001"), "bass"), pcm.T / np.float32(32768))


def test_mono_stem_is_cached_as_stereo(corpus_copy, tmp_path):
    path = corpus_copy / TRACK / "vocals.wav"
    data, sr = sf.read(str(path), dtype="int16")
    sf.write(str(path), data[:, 1], sr, subtype="PCM_16")
    c = cache.StemCache(cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path))
    x = c.track(1, "vocals")
    np.testing.assert_array_equal(x[0], data[:, 1] / np.float32(32768))
    np.testing.assert_array_equal(x[0], x[1])


def test_track_is_a_read_only_zero_copy_view(corpus_cache):
    c = cache.StemCache(corpus_cache)
    a, b = c.track(0, "kick"), c.track(0, "kick")
    assert not a.flags.writeable
    assert np.shares_memory(a, b)  # both views into the one memory map, no copy per call
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    assert not np.shares_memory(c.track(0, "kick"), c.track(0, "hihat"))
    assert not np.shares_memory(c.track(0, "kick"), c.track(1, "kick"))


def test_build_twice_reuses_the_file(corpus, tmp_path):
    first = cache.build(corpus, "train", STEMS, SR, cache_dir=tmp_path)
    st = first.stat()
    # stem order and duplicates do not change the cache
    second = cache.build(corpus, "train", list(reversed(STEMS)) + ["kick"], SR, cache_dir=tmp_path)
    assert second == first
    assert (second.stat().st_mtime_ns, second.stat().st_ino) == (st.st_mtime_ns, st.st_ino)
    assert arrow_files(tmp_path) == [first.name]
    assert not list(tmp_path.glob("*.tmp-*"))


def test_rewritten_stem_invalidates_the_cache(corpus_copy, tmp_path):
    old = cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path)
    path = corpus_copy / TRACK / "bass.wav"
    data, sr = sf.read(str(path), dtype="int16")
    before = path.stat().st_mtime_ns
    sf.write(str(path), (data // 2).astype(np.int16), sr, subtype="PCM_16")  # same size, new content
    assert path.stat().st_size == os.path.getsize(corpus_copy / TRACK / "kick.wav")
    assert path.stat().st_mtime_ns != before
    new = cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path)
    assert new != old
    assert not old.exists()
    assert arrow_files(tmp_path) == [new.name]
    c = cache.StemCache(new)
    np.testing.assert_array_equal(c.track(1, "bass"), (data // 2).T / np.float32(32768))


def test_touched_stem_invalidates_the_cache(corpus_copy, tmp_path):
    old = cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path)
    key = cache.cache_key(corpus_copy, "train", STEMS, SR)
    assert key in old.name
    path = corpus_copy / TRACK / "vocals.wav"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.cache_key(corpus_copy, "train", STEMS, SR) != key
    new = cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path)
    assert new != old and not old.exists()
    assert arrow_files(tmp_path) == [new.name]


def test_other_splits_and_rates_are_kept(corpus, tmp_path):
    """Superseded-version cleanup only touches the same split at the same rate."""
    train = cache.build(corpus, "train", STEMS, SR, cache_dir=tmp_path)
    valid = cache.build(corpus, "valid", STEMS, SR, cache_dir=tmp_path)
    low = cache.build(corpus, "train", STEMS, 22050, cache_dir=tmp_path)
    assert len({train, valid, low}) == 3 and all(p.exists() for p in (train, valid, low))


def test_cache_for_another_stem_set_is_kept(corpus, tmp_path):
    two = cache.build(corpus, "train", ["kick", "bass"], SR, cache_dir=tmp_path)
    five = cache.build(corpus, "train", STEMS, SR, cache_dir=tmp_path)
    assert two != five
    assert two.exists() and five.exists()


def test_missing_stem_refuses_to_build(corpus_copy, tmp_path):
    (corpus_copy / TRACK / "hihat.wav").unlink()
    with pytest.raises(RankhouseError, match="techhouse-1-0001: no hihat file; run python -m platform.data check"):
        cache.build(corpus_copy, "train", STEMS, SR, cache_dir=tmp_path)
    assert arrow_files(tmp_path) == [] and not list(tmp_path.glob("*.tmp-*"))


def test_default_cache_dir(corpus_copy, monkeypatch, tmp_path):
    monkeypatch.delenv("RANKHOUSE_CACHE", raising=False)
    assert cache.default_cache_dir(corpus_copy) == corpus_copy / ".rankhouse-cache"
    monkeypatch.setenv("RANKHOUSE_CACHE", str(tmp_path / "shared"))
    assert cache.default_cache_dir(corpus_copy) == tmp_path / "shared"


def test_cli_cache(corpus, tmp_path):
    env = dict(os.environ, RANKHOUSE_CACHE=str(tmp_path / "shared"))
    proc = subprocess.run([sys.executable, "-m", "platform.data", "cache", str(corpus),
                           "--sources", "drums=kick+hihat,bass,other,vocals", "--samplerate", "22050"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert sorted(paths) == ["train", "valid"]
    for split, path in paths.items():
        path = Path(path)
        assert path.parent == tmp_path / "shared" and path.name.startswith(f"{split}-22050-")
        c = cache.StemCache(path)
        assert sorted(c.stems) == sorted(STEMS)  # the stems on disk, not the summed source names
        assert c.frames == [6 * 22050] * len(c)


# --- segments -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stem_cache(corpus_cache) -> cache.StemCache:
    return cache.StemCache(corpus_cache)


SOURCES5 = normalize_sources(STEMS)
SOURCES4 = normalize_sources({"drums": ["kick", "hihat"], "bass": "bass", "other": "other", "vocals": "vocals"})


def test_sampler_shapes_and_mixture(stem_cache):
    sampler = SegmentSampler(stem_cache, SOURCES5, segment_frames=SR, seed=0)
    mix, src = sampler.sample(6)
    assert mix.shape == (6, 2, SR) and src.shape == (6, 5, 2, SR)
    assert mix.dtype == src.dtype == np.float32
    np.testing.assert_allclose(mix, src.astype(np.float64).sum(axis=1), atol=1e-6)
    # augmented (gain up to 1.25) but never silent as a whole and never absurdly loud
    assert 0.01 < np.abs(src).max() <= 1.25


def test_sampler_same_seed_same_batches(corpus_cache):
    a = SegmentSampler(cache.StemCache(corpus_cache), SOURCES4, segment_frames=SR // 2, seed=3)
    b = SegmentSampler(cache.StemCache(corpus_cache), SOURCES4, segment_frames=SR // 2, seed=3)
    c = SegmentSampler(cache.StemCache(corpus_cache), SOURCES4, segment_frames=SR // 2, seed=4)
    for _ in range(2):
        (ma, sa), (mb, sb), (mc, sc) = a.sample(4), b.sample(4), c.sample(4)
        assert sa.shape == (4, 4, 2, SR // 2)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(sa, sb)
        assert not np.array_equal(sa, sc)


def test_sampler_state_resumes(stem_cache):
    a = SegmentSampler(stem_cache, SOURCES5, segment_frames=SR // 4, seed=11)
    a.sample(2)
    state = a.state()
    expected = a.sample(3)
    b = SegmentSampler(stem_cache, SOURCES5, segment_frames=SR // 4, seed=999)
    b.set_state(state)
    got = b.sample(3)
    np.testing.assert_array_equal(got[1], expected[1])


def locate(c: cache.StemCache, segment_mix: np.ndarray) -> list[tuple[int, int]]:
    """Every (track, offset) whose cached mixture equals ``segment_mix`` exactly."""
    t_len = segment_mix.shape[-1]
    k = int(np.argmax(np.abs(segment_mix[0])))
    assert segment_mix[0, k] != 0
    hits = []
    for t in range(len(c)):
        x = c.track(t, MIXTURE)
        for o in np.flatnonzero(x[0, k:c.frames[t] - t_len + 1 + k] == segment_mix[0, k]):
            if np.array_equal(x[:, o:o + t_len], segment_mix):
                hits.append((t, int(o)))
    return hits


@pytest.mark.parametrize("sources", [SOURCES5, SOURCES4], ids=["5-stem", "drums=kick+hihat"])
def test_unaugmented_segment_is_a_slice_of_the_cache(stem_cache, sources):
    t_len = SR
    sampler = SegmentSampler(stem_cache, sources, segment_frames=t_len, seed=5, augment=Augment.off())
    mix, src = sampler.sample(8)
    seen = set()
    for b in range(len(mix)):
        # int16 stems sum exactly in float32, so the mixture is exactly the cached mixture's slice
        hits = locate(stem_cache, mix[b])
        assert len(hits) == 1, f"item {b}: {hits}"
        t, o = hits[0]
        seen.add((t, o))
        for s, stems in enumerate(sources.values()):
            expected = sum(stem_cache.track(t, stem)[:, o:o + t_len] for stem in stems)
            np.testing.assert_array_equal(src[b, s], expected, err_msg=f"item {b} source {s}")
    assert len(seen) > 1  # random offsets, not one fixed segment


def test_segment_longer_than_every_track(stem_cache):
    with pytest.raises(RankhouseError, match="no track is as long as one segment"):
        SegmentSampler(stem_cache, SOURCES5, segment_frames=6 * SR + 1, seed=0)
    whole = SegmentSampler(stem_cache, SOURCES5, segment_frames=6 * SR, seed=0, augment=Augment.off())
    mix, _ = whole.sample(2)
    assert locate(stem_cache, mix[0])[0][1] == 0


def test_validation_tracks(corpus, tmp_path):
    c = cache.StemCache(cache.build(corpus, "valid", STEMS, SR, cache_dir=tmp_path))
    out = list(validation_tracks(c, SOURCES4))
    assert [name for name, _, _ in out] == ["techhouse-1-0003"]
    name, mix, refs = out[0]
    assert mix.shape == (2, 6 * SR) and refs.shape == (4, 2, 6 * SR)
    np.testing.assert_array_equal(mix, refs.sum(axis=0))
    np.testing.assert_array_equal(refs[0], c.track(0, "kick") + c.track(0, "hihat"))
    short = list(validation_tracks(c, SOURCES4, max_seconds=1.5, samplerate=SR))
    assert short[0][1].shape == (2, int(1.5 * SR)) and short[0][2].shape == (4, 2, int(1.5 * SR))
    np.testing.assert_array_equal(short[0][2], refs[..., : int(1.5 * SR)])


def test_source_audio_does_not_write_into_the_cache(stem_cache):
    before = stem_cache.track(0, "kick")[:, :100].copy()
    x = source_audio(stem_cache, 0, ["kick"], 0, 100)
    x *= 0
    np.testing.assert_array_equal(stem_cache.track(0, "kick")[:, :100], before)
