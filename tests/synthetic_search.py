"""A search of the techhouse space whose trials run ``benchmarks.scheduling``'s synthetic training
function (a smooth objective of rank and lr, no data, no model) inside the platform's real trial
wrapper, on local Ray, Optuna and MLflow: what the bookkeeping and scheduler tests share."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Searched:
    study: Any
    prepared: Any
    out: Path
    uri: str
    exp_id: str
    parent_id: str
    results: Any  # Tune's ResultGrid


def synthetic_search(work: Path, overrides: list[str], epoch_ms: float = 10.0) -> Searched:
    """``platform.tune``'s steps (parent run, Tune, closing the child runs) over the synthetic
    function, with ``overrides`` on the space; Ray is shut down and the environment restored after."""
    import ray
    import ray.cloudpickle

    import benchmarks.scheduling as scheduling
    from platform import spaces, study_runs, tune

    ray.cloudpickle.register_pickle_by_value(scheduling)  # trial processes need not import it
    saved = dict(os.environ)
    study = spaces.load(ROOT / "search_spaces" / "techhouse.yaml", [
        *overrides, "resources.cpus_per_worker=1.0", f"data.root={work}", f"tracking.output={work / 'out'}"])
    prepared = scheduling.synthetic_prepared(study, epoch_ms=epoch_ms)
    out = study_runs.output_dir(study)
    out.mkdir(parents=True)
    uri = study_runs.tracking_uri(study, out)
    try:
        _, exp_id, parent_id = study_runs.start_parent(uri, study, prepared, out)
        results = tune.run_search(study, prepared, out, uri, exp_id, parent_id, train=scheduling.synthetic_train)
        tune.close_child_runs(study, results, uri, exp_id, parent_id)
    finally:
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)
    return Searched(study, prepared, out, uri, exp_id, parent_id, results)
