"""The test split benchmarks draw their conclusions on: songs that no search, selection or
promotion uses. The embedded corpora differ only by their render seed: training and valid use
``data.embedded.seed`` (0), the promotion holdout ``registry.holdout.embedded.seed`` (1000), and
this split TEST_SEED. A benchmark that picked anything on the valid split or the holdout and
then reported it there would report its own selection."""

from __future__ import annotations

from pathlib import Path

TEST_SEED = 2000


def open_test_split(study_file: Path, manifest: dict, songs: int, seconds: float):
    """The test split (``songs`` tracks scored, the first ``seconds`` of each; the render's one
    train song is never read), opened by the study's task for a model ``manifest`` describes (a
    bundle's, or ``task.manifest``'s): a ``platform.promote.Holdout``, read the way promotion
    reads its holdout."""
    from platform import promote, spaces

    study = spaces.load(study_file, [f"registry.holdout.embedded.seed={TEST_SEED}",
                                     f"registry.holdout.embedded.songs={songs + 1}",  # one train song: the rest score
                                     f"registry.holdout.embedded.valid={songs}",
                                     f"registry.holdout.embedded.seconds={seconds + 2}",
                                     f"registry.holdout.max_seconds={seconds}"])
    return promote.holdout(study, manifest)
