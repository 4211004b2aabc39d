"""Is the best trial's gain over the base larger than seed noise? Its configuration, retrained
at several training seeds (data order, noise, initialisation), side by side in one run.

A search picks its best trial from one seed, so part of that trial's lead may be luck. This
retrains the summary's best configuration once per seed, in this process, with the study's
own data and epochs (no Ray, no MLflow: nothing is written), and prints each seed's objective
at its best and last epoch and the task's other valid metrics at the best epoch, then the mean,
the spread (max - min) and the margin over the base the search measured.

    .venv/bin/python -m benchmarks.seed_spread search_spaces/acestep_techhouse.yaml \\
        --summary runs/acestep_techhouse/summary.json --seeds 0 1 2     (from the repository root)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path


def retrain(cfg: dict, metric: str, sign: float) -> dict:
    """Train ``cfg`` to its last epoch; the best epoch's metrics and the last epoch's objective."""
    from trainables import loop

    best: dict = {}
    last: dict = {}

    def report(metrics: dict, folder) -> bool:
        nonlocal best, last
        last = dict(metrics)
        if not best or sign * metrics[metric] > sign * best[metric]:
            best = dict(metrics)
        print(f"  epoch {metrics['epoch']}: {metric} {metrics[metric]:.4f}", flush=True)
        return False

    loop.train(loop.complete(copy.deepcopy(cfg)), report)
    return {"best": best, "last": last[metric]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", help="the study's search-space YAML")
    parser.add_argument("--summary", required=True, help="the search's summary.json (its best trial is retrained)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    from platform import preflight, spaces
    from trainables import schema
    from trainables.errors import RankhouseError

    try:
        study = spaces.load(args.space)
        summary = json.loads(Path(args.summary).read_text())
        best = summary["best"]
        if summary["study"] != study.name:
            raise RankhouseError(f"{args.summary}: the summary is of study {summary['study']!r}, "
                                 f"not {study.name!r}")
        cfg = preflight.resolve_data(study)
    except (RankhouseError, OSError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metric, mode = summary["objective"]["metric"], summary["objective"]["mode"]
    sign = 1.0 if mode == "max" else -1.0
    trial = schema.overlay(cfg, spaces.SampleToConfig(study.params)(best["config"]))
    print(f"retraining trial {best['trial_id']} of {study.name} at seeds {args.seeds}: {best['config']}")

    rows = []
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        rows.append((seed, retrain(schema.overlay(trial, {"train": {"seed": seed}}), metric, sign)))

    others = sorted(k for k in rows[0][1]["best"] if k.startswith("valid/") and k != metric and k != "valid/loss")
    head = ["seed", f"{metric} (best epoch)", "last epoch", "best epoch", *others]
    lines = [head]
    for seed, r in rows:
        lines.append([str(seed), f"{r['best'][metric]:.4f}", f"{r['last']:.4f}", str(r["best"]["epoch"]),
                      *(f"{r['best'][k]:.4f}" for k in others)])
    values = [r["best"][metric] for _, r in rows]
    mean, spread = statistics.fmean(values), max(values) - min(values)
    base = summary["base"]["metrics"][metric]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print()
    for line in lines:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))
    print(f"\nsearch's trial {best['trial_id']}: {best['best']:.4f}; base {base:.4f}")
    print(f"over {len(values)} seeds: mean {mean:.4f}, spread (max - min) {spread:.4f}, "
          f"std {statistics.pstdev(values):.4f}")
    margin = sign * (mean - base)
    print(f"margin over the base: {margin:+.4f} ({'larger' if margin > spread else 'not larger'} than the spread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
