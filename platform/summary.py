"""A finished search, summarised: one row per trial read back from MLflow (the record users
browse), the best trial, a multi-objective search's Pareto front, and the tables printed at the end."""

from __future__ import annotations

from pathlib import Path

from platform import pareto, spaces
from platform.study_runs import ui_url
from trainables import objective, tags, tracking

def summarize(study: spaces.Study, results, prepared, uri: str, experiment: str, exp_id: str, parent_id: str) -> dict:
    """One row per trial from MLflow (the record users browse), with the configs Tune sampled."""
    mlflow = tracking.client(uri)
    configs = {Path(r.path).name.removeprefix("trial_"): spaces.sampled_values(study.params, r.config) for r in results}
    metric, mode = study.config["objective"]["metric"], study.config["objective"]["mode"]
    objs = spaces.objectives(study.config)
    status_names = {"KILLED": "STOPPED"}
    trials = []
    for run in tracking.children(mlflow, exp_id, parent_id):
        if tags.LOST in run.data.tags:
            continue
        tid = run.data.tags.get(tags.TRIAL_ID)
        history = tracking.epochs(mlflow, run.info.run_id, metric)
        values = list(history.values())
        best = objective.best(values, mode)
        params = run.data.params
        best_epoch = run.data.tags.get(tags.BEST_EPOCH)
        row = {
            "trial_id": tid, "run_id": run.info.run_id,
            "status": status_names.get(run.info.status, run.info.status),
            "config": configs.get(tid, {}),
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith(("valid/", "train/"))},
            "best": best, "epochs": len(history),
            "trainable_params": int(params["trainable_params"]) if "trainable_params" in params else None,
            "adapter_bytes": int(params["adapter_bytes"]) if "adapter_bytes" in params else None,
            "adapter": f"runs:/{run.info.run_id}/adapter" if best_epoch else None,
            "failure": run.data.tags.get(tags.FAILURE),
            # MLflow's times (ms since the epoch): the history plot orders trials by when they ended
            "started_at": run.info.start_time, "ended_at": run.info.end_time,
        }
        if len(objs) > 1:  # every objective at the epoch whose adapter the trial kept
            row["objectives"] = {m: objective_value(mlflow, run.info.run_id, row, m, best_epoch) for m, _ in objs}
        trials.append(row)
    trials.sort(key=lambda t: objective.rank_key(t["best"], mode))
    best = next((t for t in trials if t["best"] is not None and t["adapter"]), None)
    summary = {"study": study.name, "tracking_uri": tracking.redact(uri), "experiment": experiment, "experiment_id": exp_id,
               "ui_url": ui_url(uri, exp_id, parent_id), "parent_run_id": parent_id,
               "objective": {"metric": metric, "mode": mode}, "base": {"identity": prepared.base_identity,
                                                                       "metrics": prepared.base_metrics},
               "baselines": prepared.baselines, "trials": trials, "best": best}
    if len(objs) > 1:
        summary["objectives"] = [{"metric": m, "mode": d} for m, d in objs]
        on_front = set(pareto.front({t["run_id"]: [t["objectives"][m] for m, _ in objs]
                                     for t in trials if t["adapter"]}, [d for _, d in objs]))
        summary["pareto"] = [t for t in trials if t["run_id"] in on_front]
    return summary


def objective_value(mlflow, run_id: str, row: dict, metric: str, best_epoch: str | None) -> float | None:
    """A trial's value of one objective: its cost (constant) or the metric at its best epoch."""
    if metric in spaces.COST_METRICS:
        return row[metric]
    if best_epoch is not None:
        return tracking.epochs(mlflow, run_id, metric).get(int(best_epoch))
    return None


def short(key: str) -> str:
    """``lora.layer_ranks."encoder.*"`` -> ``r[encoder.*]``, ``lora.placement.tencoder`` ->
    ``placed[tencoder]``, ``optim.lr`` -> ``lr``."""
    parts = spaces.split_key(key)
    if parts[:2] == ("lora", "layer_ranks"):
        return f"r[{parts[2]}]"
    return f"placed[{parts[2]}]" if parts[:2] == ("lora", "placement") else parts[-1]


def describe(values: dict) -> str:
    """Sampled values as the tables and the console show them: ``rank=16 alpha=11.2 r[encoder.*]=8``."""
    return " ".join(f"{short(k)}={v:.3g}" if isinstance(v, float) else f"{short(k)}={v}" for k, v in values.items())


def parts_of(summary: dict) -> list[str]:
    """The objective's parts (a task's metric M/part: separation's per-source nSDR), shown beside it."""
    metric = summary["objective"]["metric"]
    return sorted(k.removeprefix(metric + "/") for k in summary["base"]["metrics"] if k.startswith(metric + "/"))


def markdown(summary: dict) -> str:
    """The closing table as Markdown, for the parent run's description (the note on its MLflow
    page): the base, then the trials best first, with the objective's parts and the config."""
    metric = summary["objective"]["metric"]
    base = summary["base"]["metrics"]
    parts = parts_of(summary)
    lines = [f"Study **{summary['study']}**: {len(summary['trials'])} trials, objective {metric} "
             f"({summary['objective']['mode']}).", "",
             "| trial | status | epochs | " + " | ".join([metric, *parts]) + " | config |",
             "|---|---|---:|" + "---:|" * (1 + len(parts)) + "---|"]
    if metric in base:
        lines.append("| base | | | " + " | ".join(f"{base[k]:.3f}" for k in [metric, *(f"{metric}/{p}" for p in parts)])
                     + " | (no adapter) |")
    for name, scores in summary.get("baselines", {}).items():
        lines.append(f"| {name} | | | " + " | ".join(number(scores.get(k)) for k in
                                                     [metric, *(f"{metric}/{p}" for p in parts)]) + " | (baseline) |")
    for t in summary["trials"]:
        values = [number(t["best"]), *(number(t["metrics"].get(f"{metric}/{p}")) for p in parts)]
        cfg = describe(t["config"])
        lines.append(f"| {t['trial_id'] or '?'} | {t['status']} | {t['epochs']} | " + " | ".join(values)
                     + f" | {cfg} |")
    best = summary["best"]
    if best:
        lines += ["", f"Best: trial {best['trial_id']}, {metric} {best['best']:.3f}"
                      + (f" (base {base[metric]:.3f})" if metric in base else "") + f"; adapter {best['adapter']}."]
    return "\n".join(lines)


def print_table(summary: dict) -> None:
    metric = summary["objective"]["metric"]
    base = summary["base"]["metrics"].get(metric)
    parts = parts_of(summary)
    head = f"{'trial':<12} {'status':<9} {'ep':>3} {metric:>10} " + " ".join(f"{s[:7]:>7}" for s in parts) + "  config"
    print("\n" + head)
    print("-" * len(head))
    if base is not None:
        print(f"{'base':<12} {'':<9} {'':>3} {base:>10.3f} " + " ".join(
            f"{summary['base']['metrics'][f'{metric}/{s}']:>7.2f}" for s in parts) + "  (no adapter)")
    for name, scores in summary.get("baselines", {}).items():
        print(f"{name[:12]:<12} {'':<9} {'':>3} {number(scores.get(metric)):>10} "
              + " ".join(f"{number(scores.get(f'{metric}/{s}')):>7}" for s in parts) + "  (baseline, cannot listen)")
    for t in summary["trials"]:
        best = f"{t['best']:.3f}" if t["best"] is not None else "-"
        per = " ".join(f"{t['metrics'].get(f'{metric}/{s}', float('nan')):>7.2f}" for s in parts)
        cfg = describe(t["config"])
        print(f"{t['trial_id'] or '?':<12} {t['status']:<9} {t['epochs']:>3} {best:>10} {per}  {cfg}")
    if parts:
        print(f"(the {metric} column: each trial's best epoch; its parts: the trial's last epoch)")
    for r in summary.get("rejected", []):
        cfg = describe(r["params"])
        print(f"rejected before training (optuna trial {r['optuna_trial']}): {r['reason']}  {cfg}")


def number(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_pareto(summary: dict) -> None:
    """The non-dominated trials of a multi-objective search, best primary objective first."""
    if "pareto" not in summary:
        return
    objs = summary["objectives"]
    head = f"{'trial':<12} " + " ".join(f"{o['metric'] + (' ↑' if o['mode'] == 'max' else ' ↓'):>18}" for o in objs)
    print(f"\nPareto front ({len(summary['pareto'])} of {len(summary['trials'])} trials; "
          "objectives at each trial's best epoch):")
    print(head + "  config")
    print("-" * len(head))
    for t in summary["pareto"]:
        cfg = describe(t["config"])
        print(f"{t['trial_id'] or '?':<12} " + " ".join(f"{number(t['objectives'][o['metric']]):>18}" for o in objs)
              + f"  {cfg}")
