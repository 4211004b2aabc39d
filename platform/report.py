"""Study plots for the MLflow parent run: what the search did, at a glance.

After a search the parent run gets these PNGs under ``plots/`` (also kept in a local folder):

- ``optimization_history.png``: each trial's objective (its best epoch) in completion order,
  with the running best, so one sees whether the search was still improving when it stopped;
- ``objective_vs_trainable_params.png``: the objective against the adapter's trainable parameters
  (the summary's ``trainable_params``, from the child runs): what a larger rank bought;
- ``param_importances.png``: Optuna's parameter importances over the study's completed trials;
- ``rank_heatmap.png``: the chosen (best) trial's rank per adapted module, one row per layer
  kind and one column per depth, so an allocation reads at a glance;
- ``pareto_front.png`` (multi-objective searches): the primary objective against the second,
  the non-dominated trials joined as the front.

A plot that cannot be made (too few trials, nothing logged) is skipped with a one-line note and
a ``rankhouse.plot_skipped.<name>`` tag on the parent run: plots never fail a search.
Driver-only (control plane).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

from trainables import objective, tags, tracking

ARTIFACT_PATH = "plots"
HISTORY = "optimization_history"
PARAMS = "objective_vs_trainable_params"
IMPORTANCES = "param_importances"
HEATMAP = "rank_heatmap"
PARETO = "pareto_front"
STATUS_STYLE = {"FINISHED": ("o", "#4c72b0"), "STOPPED": ("v", "#dd8452"), "FAILED": ("x", "#c44e52")}


class Skip(Exception):
    """A plot that cannot be made from this study; the message says why."""


def study_plots(summary: dict, uri: str, parent_id: str, optuna_storage_url: str, optuna_study_name: str,
                folder: Path) -> dict[str, Path | str]:
    """Make the study's plots in ``folder`` and log them under ``plots/`` of the parent run.

    Returns ``{name: png path}`` for a plot made and logged, ``{name: reason}`` (a str) for one
    skipped. Never raises for a plot: a search that finished is not failed by its report."""
    mlflow = tracking.client(uri)
    folder = Path(folder)
    # the trials come from the summary, which read every child run already: reading them again
    # here cost ~1 s at 200 trials (benchmarks/scheduling.py)
    makers = {
        HISTORY: lambda path: history_plot(summary, path),
        PARAMS: lambda path: params_plot(summary, path),
        IMPORTANCES: lambda path: importances_plot(optuna_storage_url, optuna_study_name, path),
        HEATMAP: lambda path: heatmap_plot(summary, best_ranks(mlflow, summary), path),
    }
    if "pareto" in summary:
        makers[PARETO] = lambda path: pareto_plot(summary, path)
    out: dict[str, Path | str] = {}
    for name, make in makers.items():
        path = folder / f"{name}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            make(path)
            mlflow.log_artifact(parent_id, str(path), ARTIFACT_PATH)
            out[name] = path
        except Exception as exc:  # a Skip, or whatever plotting or the store raised
            reason = str(exc) if isinstance(exc, Skip) else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            out[name] = reason[:500]
            print(f"note: plot {name} skipped: {out[name]}")
            with contextlib.suppress(Exception):  # an unreachable store has failed the logging above already
                mlflow.set_tag(parent_id, tags.PLOT_SKIPPED + name, out[name])
    return out


def best_ranks(mlflow, summary: dict) -> dict[str, int]:
    """The chosen trial's rank per adapted module: its run's ``rank.<module>`` params."""
    best = summary.get("best")
    if not best:
        raise Skip("no trial produced an adapter")
    params = mlflow.get_run(best["run_id"]).data.params
    ranks = {k.removeprefix("rank."): int(v) for k, v in params.items() if k.startswith("rank.")}
    if not ranks:
        raise Skip(f"trial {best['trial_id']} logged no per-module ranks")
    return ranks


def _figure(width: float = 6.4, height: float = 3.8):
    # a Figure without pyplot renders with Agg and leaves the process' backend alone
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _scatter_by_status(ax, points: list[tuple]) -> None:
    """(x, y, trial) points, one marker and colour per trial status."""
    for status in sorted({p[2]["status"] for p in points}):
        marker, color = STATUS_STYLE.get(status, ("s", "0.5"))
        ax.scatter([p[0] for p in points if p[2]["status"] == status],
                   [p[1] for p in points if p[2]["status"] == status], marker=marker, color=color,
                   label=status.lower(), zorder=3)


def _base_line(ax, summary: dict) -> None:
    base = summary.get("base", {}).get("metrics", {}).get(summary["objective"]["metric"])
    if objective.finite(base):
        ax.axhline(base, color="0.4", linestyle=":", linewidth=1, label=f"base {base:.2f}")


def history(summary: dict) -> tuple[list[dict], list[float]]:
    """The summary's trials with an objective, in completion order (their MLflow runs' end times;
    the summary itself is sorted by objective), and the running best after each."""
    def finished_at(t: dict) -> float:
        return float(t.get("ended_at") or t.get("started_at") or math.inf)

    done = sorted((t for t in summary["trials"] if objective.finite(t.get("best"))), key=finished_at)
    mode = summary["objective"]["mode"]
    running: list[float] = []
    for t in done:
        running.append(objective.best([*running[-1:], t["best"]], mode))
    return done, running


def history_plot(summary: dict, path: Path) -> Path:
    """Objective per trial in completion order and the running best."""
    from matplotlib.ticker import MaxNLocator

    metric = summary["objective"]["metric"]
    done, running = history(summary)
    if not done:
        raise Skip(f"no trial reported {metric}")
    order = list(range(1, len(done) + 1))
    fig = _figure()
    ax = fig.add_subplot()
    for status in sorted({t["status"] for t in done}):
        marker, color = STATUS_STYLE.get(status, ("s", "0.5"))
        xs = [i for i, t in zip(order, done) if t["status"] == status]
        ax.scatter(xs, [t["best"] for t in done if t["status"] == status], marker=marker, color=color,
                   label=status.lower(), zorder=3)
    ax.step(order, running, where="post", color="black", linewidth=1.2, label="running best")
    _base_line(ax, summary)
    ax.set_xlabel("trial (completion order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (best epoch)")
    ax.set_title(f"{summary['study']}: optimisation history ({len(done)} trials)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, format="png")
    return path


def params_plot(summary: dict, path: Path) -> Path:
    """Objective against trainable parameters (log scale), the best trial starred."""
    metric = summary["objective"]["metric"]
    points = [(t["trainable_params"], t["best"], t) for t in summary["trials"]
              if t.get("trainable_params") is not None and objective.finite(t.get("best"))]
    if not points:
        raise Skip(f"no trial logged both trainable_params and {metric}")
    fig = _figure()
    ax = fig.add_subplot()
    _scatter_by_status(ax, points)
    best = (summary.get("best") or {}).get("run_id")
    for n, value, t in points:
        if t["run_id"] == best:
            ax.scatter([n], [value], marker="*", s=220, facecolor="none", edgecolor="black", zorder=4, label="best")
    counts = [p[0] for p in points]
    if min(counts) > 0 and max(counts) / min(counts) > 10:  # ranks double: a log axis spaces them evenly
        ax.set_xscale("log")
    _base_line(ax, summary)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{metric} (best epoch)")
    ax.set_title(f"{summary['study']}: {metric} vs adapter size", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, format="png")
    return path


def importances(optuna_storage_url: str, optuna_study_name: str) -> tuple[dict[str, float], list[str], int]:
    """(importances, searched parameters not assessed, completed trials) of the Optuna study.

    PED-ANOVA explicitly (Optuna 5's default): it scores conditional (define-by-run) parameters
    on the trials that have them, where fANOVA and MDI drop any parameter missing from a single
    trial. Whatever an evaluator leaves out is returned, so the plot can say so."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=optuna_study_name, storage=optuna_storage_url)
    except KeyError:
        raise Skip(f"no Optuna study {optuna_study_name!r} in {tracking.redact(optuna_storage_url)}") from None
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values and all(objective.finite(v) for v in t.values)]
    if len(complete) < 2:
        raise Skip(f"parameter importances need at least 2 completed Optuna trials, the study has {len(complete)}")
    searched = sorted({name for t in complete for name in t.distributions})
    if not searched:
        raise Skip("the study searched no parameters")
    with warnings.catch_warnings():
        # "few trials in a regime" and the like: a small study's importances are rough, the title says how many
        warnings.simplefilter("ignore")
        scores = optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    if not scores:
        raise Skip(f"Optuna assessed none of {', '.join(searched)} (each is missing from some trial)")
    return scores, [p for p in searched if p not in scores], len(complete)


def importances_plot(optuna_storage_url: str, optuna_study_name: str, path: Path) -> Path:
    scores, left_out, trials = importances(optuna_storage_url, optuna_study_name)
    names = list(scores)[::-1]  # most important on top
    fig = _figure(6.4, 1.4 + 0.35 * len(names))
    ax = fig.add_subplot()
    bars = ax.barh([n if len(n) <= 40 else n[:18] + "…" + n[-21:] for n in names], [scores[n] for n in names],
                   color="#4c72b0")
    for bar, n in zip(bars, names):
        ax.annotate(f"{scores[n]:.2f}", (bar.get_width(), bar.get_y() + bar.get_height() / 2), va="center",
                    xytext=(3, 0), textcoords="offset points", fontsize=8)
    ax.set_xlim(0, max(1e-9, max(scores.values())) * 1.2)
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    ax.set_title(f"parameter importances over {trials} completed trials", fontsize=10)
    if left_out:
        fig.supxlabel(f"not assessed: {', '.join(left_out)}", fontsize=7)
    fig.savefig(path, format="png")
    return path


def rank_grid(ranks: dict[str, int]) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """(rows, columns, {(row, column): rank}): a module path's first numeric part is its depth
    (the column), the path with that part starred its row: ``encoder.2.conv`` -> row
    ``encoder.*.conv``, column ``2``. A path without a number is its own row, column ``-``."""
    import re

    cells: dict[tuple[str, str], int] = {}
    for name, rank in ranks.items():
        m = re.match(r"^(.*?)\.(\d+)(\..*)?$", name)
        row, col = (f"{m.group(1)}.*{m.group(3) or ''}", m.group(2)) if m else (name, "-")
        cells[(row, col)] = rank
    rows = list(dict.fromkeys(r for r, _ in cells))
    cols = sorted({c for _, c in cells}, key=lambda c: (c == "-", int(c) if c.isdigit() else 0))
    return rows, cols, cells


def heatmap_plot(summary: dict, ranks: dict[str, int], path: Path) -> Path:
    """The chosen trial's per-module ranks (``best_ranks``) as a grid."""
    import numpy as np

    best = summary["best"]
    rows, cols, cells = rank_grid(ranks)
    grid = np.ma.masked_invalid(np.array([[cells.get((r, c), np.nan) for c in cols] for r in rows], dtype=float))
    from matplotlib.ticker import MaxNLocator

    fig = _figure(max(6.4, 3.6 + 0.45 * len(cols)), 1.6 + 0.28 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if (r, c) in cells:
                value = cells[(r, c)]
                light = value < (grid.min() + grid.max()) / 2  # dark cells get white text
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if light else "black")
    ax.set_xticks(range(len(cols)), cols, fontsize=7)
    ax.set_xlabel("depth (the module path's first index)", fontsize=8)
    ax.set_yticks(range(len(rows)), [r if len(r) <= 44 else r[:20] + "…" + r[-23:] for r in rows], fontsize=7)
    fig.colorbar(image, ax=ax, label="LoRA rank", ticks=MaxNLocator(integer=True))
    ax.set_title(f"trial {best['trial_id']}: ranks of {len(ranks)} adapted modules\n(sum {sum(ranks.values())}; "
                 "blank: no adapter)", fontsize=9)
    fig.savefig(path, format="png")
    return path


def pareto_plot(summary: dict, path: Path) -> Path:
    """Primary objective against the second for every trial with both; the front joined."""
    (y_obj, x_obj), more = summary["objectives"][:2], summary["objectives"][2:]
    points = [(t["objectives"][x_obj["metric"]], t["objectives"][y_obj["metric"]], t) for t in summary["trials"]
              if objective.finite(t.get("objectives", {}).get(x_obj["metric"]))
              and objective.finite(t.get("objectives", {}).get(y_obj["metric"]))]
    if not points:
        raise Skip(f"no trial has both {y_obj['metric']} and {x_obj['metric']}")
    fig = _figure()
    ax = fig.add_subplot()
    _scatter_by_status(ax, points)
    front_ids = {t["run_id"] for t in summary["pareto"]}
    front = sorted((p for p in points if p[2]["run_id"] in front_ids), key=lambda p: p[0])
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1.2, zorder=2,
                drawstyle="steps-post" if len(more) == 0 else "default")
        ax.scatter([p[0] for p in front], [p[1] for p in front], s=90, facecolor="none", edgecolor="black",
                   zorder=4, label=f"Pareto front ({len(front)})")
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    if y_obj["metric"] == summary["objective"]["metric"]:
        _base_line(ax, summary)
    arrow = {"max": "higher is better", "min": "lower is better"}
    ax.set_xlabel(f"{x_obj['metric']} ({arrow[x_obj['mode']]})")
    ax.set_ylabel(f"{y_obj['metric']} ({arrow[y_obj['mode']]})")
    title = f"{summary['study']}: Pareto front of {len(points)} trials"
    if more:
        title += f" (front over {len(summary['objectives'])} objectives; two shown)"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, format="png")
    return path
