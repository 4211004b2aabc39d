"""BSSEval v4 SDR through museval: the SiSEC 2018 / MUSDB18 paper metric, for promotion.

Per track and source: SDR over 1-s frames (museval ``evaluate``, mode v4), then the median
over frames; a frame whose reference is silent has no defined SDR (museval gives NaN) and is
left out of the median rather than averaged in. Over tracks: the median. A source with no
defined frame on any track stays NaN and is reported as such.

museval costs about twice the audio's duration per five-stem excerpt on one core, so tracks
are scored in parallel worker processes. This module imports no torch: the workers are
spawned fresh (forking a process that runs torch threads is unsafe) and start fast.
"""

from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


def track_sdr(references: np.ndarray, estimates: np.ndarray, samplerate: int) -> np.ndarray:
    """(S, C, T) references and estimates of one track -> median framewise SDR per source, (S,)."""
    import museval

    sdr, _, _, _ = museval.evaluate(np.transpose(references, (0, 2, 1)), np.transpose(estimates, (0, 2, 1)),
                                    win=samplerate, hop=samplerate, mode="v4")
    with warnings.catch_warnings():  # an all-NaN source (silent on the whole track) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(np.asarray(sdr, dtype=np.float64), axis=1)


def _timed(args: tuple) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    return track_sdr(*args), time.perf_counter() - started


def score(jobs: list[tuple[np.ndarray, np.ndarray]], samplerate: int, workers: int | None = None,
          progress=None) -> tuple[list[np.ndarray], float]:
    """SDR per source for every (references, estimates) job, in parallel; also the CPU seconds
    museval spent (the sum over jobs, so its cost is reported whatever the parallelism)."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[np.ndarray | None] = [None] * len(jobs)
    spent = 0.0
    if workers == 1:
        outputs = map(_timed, [(r, e, samplerate) for r, e in jobs])
        for i, (sdr, seconds) in enumerate(outputs):
            results[i], spent = sdr, spent + seconds
            if progress:
                progress(i + 1, len(jobs))
        return results, spent
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_timed, (r, e, samplerate)) for r, e in jobs]
        for done, future in enumerate(futures, 1):
            sdr, seconds = future.result()
            results[done - 1], spent = sdr, spent + seconds
            if progress:
                progress(done, len(jobs))
    return results, spent


def aggregate(per_track: list[np.ndarray], sources: list[str]) -> dict[str, float]:
    """Median over tracks per source (NaN tracks left out) and the mean over sources."""
    stacked = np.stack(per_track)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(stacked, axis=0)
    out = {f"sdr/{s}": float(v) for s, v in zip(sources, medians)}
    defined = medians[np.isfinite(medians)]
    out["sdr"] = float(defined.mean()) if defined.size else float("nan")
    return out
