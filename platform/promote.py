"""``python -m platform.promote STUDY [overrides] [--run RUN_ID] [--min-gain DB] [--dry-run] [--rollback] [--json OUT]``

Promote a study's best adapter to the MLflow Model Registry, behind a gate: the candidate (the
best finished trial of the study's latest search, or ``--run``) and the current ``champion``
(or, before the first promotion, the base model with no adapter) are scored on the same
held-out data by the family's task (separation: museval's BSSEval v4 SDR, median over 1-s
frames, then over tracks). The candidate becomes a new version with the alias ``champion`` only
if it gains at least ``--min-gain`` (in the task's score unit, e.g. dB); either way both scores
are printed, and a refusal exits non-zero.
``--rollback`` moves ``champion`` back to the version that held it before.

STUDY is a search-space file or the name of one in ``search_spaces/`` (its ``tracking`` and
``registry`` sections say where the runs and the registry are).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from platform import database, export, models, spaces
from platform.cli import run
from platform.data import Progress
from platform.preflight import resolve_data
from platform.study_runs import output_dir, searches, tracking_uri
from trainables import bundle, objective, tags, tracking
from trainables.errors import RankhouseError

ALIAS = "champion"


def find_space(ref: str) -> Path:
    path = Path(ref)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RankhouseError(f"{ref}: no such search-space file")
        return path
    path = models.SPACES / f"{ref}.yaml"
    if not path.is_file():
        raise RankhouseError(f"{ref}: no search space {path}; pass the space's YAML file")
    return path


@contextlib.contextmanager
def promotion_lock(out: Path, name: str):
    """One promotion of a model at a time: a second one would compare against a champion that is
    about to change. A lock file beside the study's store (flock: released if the process dies)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f".promote-{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise RankhouseError(f"{name}: another promotion of this model is in progress (pid {holder}, lock {path}); "
                                 "wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def best_value(client, run_id: str, metric: str, mode: str) -> float | None:
    return objective.best(tracking.epochs(client, run_id, metric).values(), mode)


def pick_candidate(client, study: spaces.Study, uri: str, run_id: str | None):
    metric, mode = study.config["objective"]["metric"], study.config["objective"]["mode"]
    if run_id:
        from mlflow.exceptions import MlflowException

        try:
            chosen = client.get_run(run_id)
        except MlflowException:
            raise RankhouseError(f"--run {run_id}: no such run in this study's store") from None
        value = best_value(client, run_id, metric, mode)
        if value is None:
            raise RankhouseError(f"--run {run_id}: has no {metric} (the objective); pick a trial run of this study")
        return chosen, value
    # the latest search that finished a trial: one that crashed or was stopped before any is skipped, aloud
    exp_id, parents = searches(client, study, uri)
    for parent in parents:
        finished = list(tracking.children(client, exp_id, parent.info.run_id, status="FINISHED"))
        if finished:
            break
        print(f"note: skipped search {parent.info.run_id} ({parent.info.status}): no finished trial")
    else:
        raise RankhouseError(f"study {study.name}: none of its {len(parents)} search(es) has a finished trial; run the "
                             "search again or pass --run RUN_ID")
    scored = [(r, best_value(client, r.info.run_id, metric, mode)) for r in finished]
    scored = [(r, v) for r, v in scored if v is not None]
    if not scored:
        raise RankhouseError(f"study {study.name}: no finished trial of parent run {parent.info.run_id} logged "
                             f"{metric} (the objective)")
    return objective.best(scored, mode, key=lambda rv: rv[1])


@dataclass
class Holdout:
    data: object  # the task's opened split
    description: str
    max_seconds: float | None


def holdout(study: spaces.Study, info: dict) -> Holdout:
    """``registry.holdout``'s split, opened by the task for the bundle ``info`` describes."""
    h = study.config["registry"]["holdout"]
    if h["root"] == "embedded":
        e = h.get("embedded") or {}
        root = study.task.embedded(e, Progress)
        what = f"embedded {e.get('preset', '')} seed {e.get('seed', '')} ({h['split']})"
    elif h["root"] is None:
        root = Path(resolve_data(study)["data"]["root"])
        what = f"{root} ({h['split']}; the split the search selected on)"
        print(f"warning: {study.file}: registry.holdout.root is not set; promoting on the study's own "
              f"{h['split']} split, which the search selected trials on (optimistic scores)", file=sys.stderr)
    else:
        root = Path(h["root"]).expanduser().resolve()
        what = f"{root} ({h['split']})"
    if not (root / h["split"] if study.task.split_folders else root).is_dir():
        missing = root / h["split"] if study.task.split_folders else root
        raise study.error("registry.holdout", f"{missing}: no such folder")
    data = study.task.open_holdout(info, root, h["split"], Progress)
    size = f", {len(data)} items" if hasattr(data, "__len__") else ""
    first = f", first {h['max_seconds']:g} s" if h["max_seconds"] else ""
    return Holdout(data, f"{what}{size}{first}", h["max_seconds"])


def champion_version(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def history(client, name: str) -> list[str]:
    model_tags = client.get_registered_model(name).tags
    return [v for v in model_tags.get(tags.CHAMPION_HISTORY, "").split(",") if v]


def register(client, name: str, run_id: str, version_tags: dict, description: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapters promoted by rankhouse (alias: champion)")
    mv = client.create_model_version(name, source=f"runs:/{run_id}/adapter", run_id=run_id, description=description,
                                     tags={k: str(v)[:5000] for k, v in version_tags.items()})
    client.set_registered_model_alias(name, ALIAS, mv.version)
    client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, ",".join([*history(client, name), str(mv.version)]))
    return str(mv.version)


def rollback(client, name: str) -> dict:
    from mlflow.exceptions import MlflowException

    try:
        past = history(client, name)
    except MlflowException:
        raise RankhouseError(f"{name}: not in the registry; nothing to roll back") from None
    current = champion_version(client, name)
    if current is None or len(past) < 2 or past[-1] != str(current.version):
        raise RankhouseError(f"{name}: no previous champion to roll back to (champion history: "
                             f"{', '.join(past) or 'empty'})")
    previous = past[-2]
    client.set_registered_model_alias(name, ALIAS, previous)
    client.set_registered_model_tag(name, tags.CHAMPION_HISTORY, ",".join(past[:-1]))
    client.set_model_version_tag(name, str(current.version), tags.ROLLED_BACK, time.strftime("%Y-%m-%dT%H:%M:%S"))
    print(f"{name}: champion moved back from version {current.version} to version {previous}")
    return {"model": name, "rolled_back": str(current.version), "champion": previous}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.promote", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="search-space file, or the name of one in search_spaces/ (e.g. techhouse)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as given to platform.tune")
    p.add_argument("--run", help="promote this trial run instead of the latest search's best")
    p.add_argument("--min-gain", type=float, help="holdout score over the champion, in the task's unit (separation: dB "
                                                  "of SDR; default: registry.min_gain)")
    p.add_argument("--dry-run", action="store_true", help="evaluate and decide, change nothing")
    p.add_argument("--rollback", action="store_true", help="move champion back to the previous champion version")
    p.add_argument("--workers", type=int, help="scoring processes, e.g. museval's (default: one per CPU)")
    p.add_argument("--json", type=Path, help="write the decision here")
    args = p.parse_args(argv)

    study = spaces.load(find_space(args.study), args.overrides)
    name = study.config["registry"]["model_name"]
    if not name:
        raise study.error("registry.model_name", "not set; name the registered model to promote into")
    out = output_dir(study)
    uri = tracking_uri(study, out)
    database.check(study.config["tracking"]["backend"], str(study.file))
    client = tracking.client(uri)
    min_gain = study.config["registry"]["min_gain"] if args.min_gain is None else args.min_gain
    if min_gain < 0:
        raise RankhouseError(f"--min-gain {min_gain}: expected >= 0 ({study.task.score_metric.unit or 'score'})")
    with promotion_lock(out, name):
        result = rollback(client, name) if args.rollback else promote(client, study, name, uri, args, min_gain)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("decision", "promoted") in ("promoted", "would promote") else 1


def promote(client, study: spaces.Study, name: str, uri: str, args, min_gain: float) -> dict:
    task = study.task
    unit = f" {task.score_metric.unit}" if task.score_metric.unit else ""
    chosen, objective = pick_candidate(client, study, uri, args.run)
    run_id = chosen.info.run_id
    trial = chosen.data.tags.get(tags.TRIAL_ID, "?")
    print(f"candidate: run {run_id} (trial {trial}), {study.config['objective']['metric']} = {objective:.3f}")
    with tempfile.TemporaryDirectory(prefix="rankhouse-promote-") as tmp:
        folder = models.download_run_folder(uri, run_id, "adapter", Path(tmp) / "candidate")
        candidate = bundle.load(folder)  # checks the files and the base identity before any compute
        info = candidate.manifest
        current = champion_version(client, name)
        if current is not None and current.run_id == run_id:
            raise RankhouseError(f"run {run_id} is already {name}@{ALIAS} (version {current.version}); nothing to do")
        if current is not None:
            champ_folder = models.download_run_folder(uri, *models.parse_runs_uri(current.source),
                                                      Path(tmp) / "champion")
            champion = bundle.load(champ_folder)
            theirs, ours = champion.family.task.outputs(champion.manifest), task.outputs(info)
            if champion.family.task.name != task.name or theirs != ours:
                raise RankhouseError(f"{name}: the champion (version {current.version}) outputs {theirs} "
                                     f"({champion.family.task.name}), the candidate {ours} ({task.name}); "
                                     "register it under another registry.model_name")
            reference, label = champion.model, f"champion v{current.version}"
        else:
            reference, label = candidate.reference(), "base (no adapter)"
        data = holdout(study, info)
        print(f"holdout: {data.description}")
        scores = task.score_holdout({"candidate": candidate.model, label.split()[0]: reference}, data.data, info,
                                    data.max_seconds, args.workers, Progress)
    cand_scores, ref_scores = scores["candidate"], scores[label.split()[0]]
    gain = task.gain(cand_scores, ref_scores)
    accepted = bool(np.isfinite(gain)) and gain > 0 and gain >= min_gain  # "beats": a tie keeps the champion
    width = max(len(label), len("candidate"))
    score = f"{task.score} ({task.score_metric.doc})"
    print(f"{'candidate':<{width}}  {task.describe(cand_scores)}\n{label:<{width}}  {task.describe(ref_scores)}\n"
          f"holdout score: {score}\ngain {gain:+.3f}{unit} (needs >= {min_gain:g})")
    result = {"model": name, "candidate": {"run_id": run_id, "trial_id": trial, "objective": objective,
                                           "holdout": cand_scores},
              "reference": {"label": label, "version": current.version if current else None, "holdout": ref_scores},
              "score": task.score, "unit": task.score_metric.unit, "gain": gain, "min_gain": min_gain,
              "holdout": data.description}
    decision = f"{'promoted' if accepted else 'refused'}: candidate {cand_scores[task.score]:.3f}{unit} vs {label} " \
               f"{ref_scores[task.score]:.3f}{unit} on {data.description}"
    if not accepted:
        result["decision"] = "refused"
        if not args.dry_run:
            client.set_tag(run_id, tags.PROMOTION, decision)
        print(f"refused: the candidate does not beat the {label} by {min_gain:g}{unit}; {name}@{ALIAS} unchanged")
        return result
    if args.dry_run:
        result["decision"] = "would promote"
        print(f"dry run: would register run {run_id} as a new version of {name} and move @{ALIAS}")
        return result
    version_tags = {tags.STUDY: study.name, tags.TRIAL_ID: trial, tags.RUN_ID: run_id,
                    tags.CONFIG: json.dumps(chosen.data.params, sort_keys=True),
                    tags.BASE_NAME: info["base"].get("name"), tags.BASE_SHA256: info["base"].get("sha256"),
                    tags.HOLDOUT: data.description, tags.CHAMPION_SCORE: f"{ref_scores[task.score]:.4f}",
                    tags.COMPARED_WITH: label, tags.DECISION: decision,
                    **{tags.HOLDOUT_SCORE + k: f"{v:.4f}" for k, v in cand_scores.items()}}
    if study.config["registry"]["merged"]:
        # MSST's merge_weights: a model with no LoRA at run time. Written (and checked against
        # the adapter) before registering, so a failed merge moves no alias
        merged = output_dir(study) / "merged" / f"{name}-{run_id[:12]}.safetensors"
        sha = export.write_merged(candidate, merged)
        version_tags.update({tags.MERGED: str(merged), tags.MERGED_SHA256: sha})
        result["merged"] = {"path": str(merged), "sha256": sha}
    # the page a version opens on says what promotion measured
    description = (f"Promoted by rankhouse from study {study.name}, trial {trial} (run {run_id}). Scored on "
                   f"{data.description} by {score}: candidate {task.describe(cand_scores)}; {label} "
                   f"{task.describe(ref_scores)}; gain {gain:+.3f}{unit} (needed >= {min_gain:g}).")
    version = register(client, name, run_id, version_tags, description)
    client.set_tag(run_id, tags.PROMOTION, f"{decision}; {name} version {version}")
    result.update(decision="promoted", version=version)
    print(f"promoted: {name} version {version} is @{ALIAS} (models:/{name}@{ALIAS})")
    return result


if __name__ == "__main__":
    run(main)
