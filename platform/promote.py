"""``python -m platform.promote STUDY [overrides] [--run RUN_ID] [--min-gain DB] [--dry-run] [--rollback] [--json OUT]``

Promote a study's best adapter to the MLflow Model Registry, behind a gate: the candidate (the
best finished trial of the study's latest search, or ``--run``) and the current ``champion``
(or, before the first promotion, the base model with no adapter) separate the same held-out
tracks, scored with museval's BSSEval v4 SDR (median over 1-s frames, then over tracks). The
candidate becomes a new version with the alias ``champion`` only if it gains at least
``--min-gain`` dB; either way both scores are printed, and a refusal exits non-zero.
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
import torch

from platform import export, models, spaces
from platform.cli import run
from platform.corpus import embedded_corpus
from platform.data import Progress
from platform.preflight import resolve_data
from platform.study_runs import latest_parent, output_dir, tracking_uri
from trainables import bsseval, bundle, objective, tags, tracking
from trainables.data import cache as stem_cache
from trainables.data.layout import normalize_sources, stems_of
from trainables.data.segments import validation_tracks
from trainables.errors import RankhouseError
from trainables.family import get_family
from trainables.separation import separate

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
    exp_id, parent = latest_parent(client, study, uri)
    finished = [r for r in tracking.children(client, exp_id, parent.info.run_id) if r.info.status == "FINISHED"]
    if not finished:
        raise RankhouseError(f"study {study.name}: the latest search (parent run {parent.info.run_id}) has no finished "
                             "trial; run the search again or pass --run RUN_ID")
    scored = [(r, best_value(client, r.info.run_id, metric, mode)) for r in finished]
    scored = [(r, v) for r, v in scored if v is not None]
    if not scored:
        raise RankhouseError(f"study {study.name}: no finished trial of parent run {parent.info.run_id} logged "
                             f"{metric} (the objective)")
    return objective.best(scored, mode, key=lambda rv: rv[1])


@dataclass
class Holdout:
    cache: stem_cache.StemCache
    description: str
    max_seconds: float | None


def holdout(study: spaces.Study, sources: dict, samplerate: int) -> Holdout:
    h = study.config["registry"]["holdout"]
    if h["max_seconds"] is not None and h["max_seconds"] <= 0:
        raise study.error("registry.holdout.max_seconds", f"{h['max_seconds']}; expected seconds > 0 or null")
    if h["root"] == "embedded":
        e = h["embedded"]
        root = embedded_corpus(e["preset"], e["songs"], e["seconds"], e["seed"], e["valid"])
        what = f"embedded {e['preset']} seed {e['seed']} ({h['split']})"
    elif h["root"] is None:
        root = Path(resolve_data(study)["data"]["root"])
        what = f"{root} ({h['split']}; the split the search selected on)"
        print(f"warning: {study.file}: registry.holdout.root is not set; promoting on the study's own "
              f"{h['split']} split, which the search selected trials on (optimistic scores)", file=sys.stderr)
    else:
        root = Path(h["root"]).expanduser().resolve()
        what = f"{root} ({h['split']})"
    if not (root / h["split"]).is_dir():
        raise study.error("registry.holdout", f"{root / h['split']}: no such folder of tracks")
    path = stem_cache.build(root, h["split"], stems_of(sources), samplerate, progress=Progress("cache holdout"))
    cache = stem_cache.StemCache(path)
    return Holdout(cache, f"{what}, {len(cache)} tracks, first {h['max_seconds']:g} s"
                   if h["max_seconds"] else f"{what}, {len(cache)} tracks", h["max_seconds"])


def separations(model, data: Holdout, sources: dict, samplerate: int, segment: float, label: str):
    """(references, estimates) per holdout track."""
    jobs = []
    show = Progress(f"separate {label}")
    tracks = list(validation_tracks(data.cache, sources, data.max_seconds, samplerate))
    for i, (_, mix, refs) in enumerate(tracks):
        est = separate(model, torch.from_numpy(mix), int(segment * samplerate)).numpy()
        jobs.append((refs.astype(np.float64), est.astype(np.float64)))
        show(i + 1, len(tracks))
    return jobs


def champion_version(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None


def history(client, name: str) -> list[str]:
    model_tags = client.get_registered_model(name).tags
    return [v for v in model_tags.get(tags.CHAMPION_HISTORY, "").split(",") if v]


def register(client, name: str, run_id: str, version_tags: dict) -> str:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="LoRA adapters promoted by rankhouse (alias: champion)")
    mv = client.create_model_version(name, source=f"runs:/{run_id}/adapter", run_id=run_id,
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


def fmt(scores: dict) -> str:
    return f"{scores['sdr']:.3f} dB (" + ", ".join(
        f"{k.removeprefix('sdr/')} {v:.2f}" for k, v in scores.items() if k.startswith("sdr/")) + ")"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.promote", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="search-space file, or the name of one in search_spaces/ (e.g. techhouse)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as given to platform.tune")
    p.add_argument("--run", help="promote this trial run instead of the latest search's best")
    p.add_argument("--min-gain", type=float, help="dB of holdout SDR over the champion (default: registry.min_gain)")
    p.add_argument("--dry-run", action="store_true", help="evaluate and decide, change nothing")
    p.add_argument("--rollback", action="store_true", help="move champion back to the previous champion version")
    p.add_argument("--workers", type=int, help="museval processes (default: one per CPU)")
    p.add_argument("--json", type=Path, help="write the decision here")
    args = p.parse_args(argv)

    study = spaces.load(find_space(args.study), args.overrides)
    name = study.config["registry"]["model_name"]
    if not name:
        raise study.error("registry.model_name", "not set; name the registered model to promote into")
    out = output_dir(study)
    uri = tracking_uri(study, out)
    client = tracking.client(uri)
    min_gain = study.config["registry"]["min_gain"] if args.min_gain is None else args.min_gain
    if min_gain < 0:
        raise RankhouseError(f"--min-gain {min_gain}: expected dB >= 0")
    with promotion_lock(out, name):
        result = rollback(client, name) if args.rollback else promote(client, study, name, uri, args, min_gain)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("decision", "promoted") in ("promoted", "would promote") else 1


def promote(client, study: spaces.Study, name: str, uri: str, args, min_gain: float) -> dict:
    chosen, objective = pick_candidate(client, study, uri, args.run)
    run_id = chosen.info.run_id
    trial = chosen.data.tags.get(tags.TRIAL_ID, "?")
    print(f"candidate: run {run_id} (trial {trial}), {study.config['objective']['metric']} = {objective:.3f}")
    with tempfile.TemporaryDirectory(prefix="rankhouse-promote-") as tmp:
        folder = models.download_run_folder(uri, run_id, "adapter", Path(tmp) / "candidate")
        candidate = bundle.load(folder)  # checks the files and the base identity before any compute
        info = candidate.manifest
        sources = normalize_sources(info["sources"])
        samplerate, segment = info["samplerate"], info["segment"]
        current = champion_version(client, name)
        if current is not None and current.run_id == run_id:
            raise RankhouseError(f"run {run_id} is already {name}@{ALIAS} (version {current.version}); nothing to do")
        if current is not None:
            champ_folder = models.download_run_folder(uri, *models.parse_runs_uri(current.source), Path(tmp) / "champion")
            champion = bundle.load(champ_folder)
            if list(champion.manifest["sources"]) != list(sources):
                raise RankhouseError(f"{name}: the champion (version {current.version}) separates "
                                     f"{', '.join(champion.manifest['sources'])}, the candidate {', '.join(sources)}; "
                                     "register it under another registry.model_name")
            reference, label = champion.model, f"champion v{current.version}"
        else:
            family = get_family(info["family"])
            base_model, _ = family.adapt_sources(candidate.base, list(sources), dict(info["model"].get("parents") or {}))
            reference, label = base_model.eval(), "base (no adapter)"
        data = holdout(study, sources, samplerate)
        print(f"holdout: {data.description}")
        jobs = separations(candidate.model, data, sources, samplerate, segment, "candidate") + \
            separations(reference, data, sources, samplerate, segment, label.split()[0])
        started = time.perf_counter()
        per_track, cpu_seconds = bsseval.score(jobs, samplerate, args.workers, Progress("museval"))
        wall = time.perf_counter() - started
    n = len(per_track) // 2
    names = list(sources)
    cand_scores, ref_scores = bsseval.aggregate(per_track[:n], names), bsseval.aggregate(per_track[n:], names)
    audio_seconds = sum(j[0].shape[-1] for j in jobs) / samplerate
    print(f"museval: {len(jobs)} tracks, {audio_seconds:.0f} s of audio, {cpu_seconds:.0f} s of CPU "
          f"({cpu_seconds / audio_seconds:.1f} s per second of audio), {wall:.0f} s wall")
    gain = cand_scores["sdr"] - ref_scores["sdr"]
    accepted = bool(np.isfinite(gain)) and gain > 0 and gain >= min_gain  # "beats": a tie keeps the champion
    width = max(len(label), len("candidate"))
    print(f"{'candidate':<{width}}  BSSEval v4 SDR {fmt(cand_scores)}\n{label:<{width}}  BSSEval v4 SDR {fmt(ref_scores)}\n"
          f"gain {gain:+.3f} dB (needs >= {min_gain:g})")
    result = {"model": name, "candidate": {"run_id": run_id, "trial_id": trial, "objective": objective,
                                           "holdout": cand_scores},
              "reference": {"label": label, "version": current.version if current else None, "holdout": ref_scores},
              "gain_db": gain, "min_gain_db": min_gain, "holdout": data.description,
              "museval": {"tracks": len(jobs), "audio_seconds": audio_seconds, "cpu_seconds": cpu_seconds,
                          "wall_seconds": wall}}
    decision = f"{'promoted' if accepted else 'refused'}: candidate {cand_scores['sdr']:.3f} dB vs {label} " \
               f"{ref_scores['sdr']:.3f} dB on {data.description}"
    if not accepted:
        result["decision"] = "refused"
        if not args.dry_run:
            client.set_tag(run_id, tags.PROMOTION, decision)
        print(f"refused: the candidate does not beat the {label} by {min_gain:g} dB; {name}@{ALIAS} unchanged")
        return result
    if args.dry_run:
        result["decision"] = "would promote"
        print(f"dry run: would register run {run_id} as a new version of {name} and move @{ALIAS}")
        return result
    version_tags = {tags.STUDY: study.name, tags.TRIAL_ID: trial, tags.RUN_ID: run_id,
                    tags.CONFIG: json.dumps(chosen.data.params, sort_keys=True),
                    tags.BASE_NAME: info["base"].get("name"), tags.BASE_SHA256: info["base"].get("sha256"),
                    tags.HOLDOUT: data.description, tags.CHAMPION_SCORE: f"{ref_scores['sdr']:.4f}",
                    tags.COMPARED_WITH: label, tags.DECISION: decision,
                    **{tags.HOLDOUT_SCORE + k: f"{v:.4f}" for k, v in cand_scores.items()}}
    if study.config["registry"]["merged"]:
        # MSST's merge_weights: a model with no LoRA at run time. Written (and checked against
        # the adapter) before registering, so a failed merge moves no alias
        merged = output_dir(study) / "merged" / f"{name}-{run_id[:12]}.safetensors"
        sha = export.write_merged(candidate, merged)
        version_tags.update({tags.MERGED: str(merged), tags.MERGED_SHA256: sha})
        result["merged"] = {"path": str(merged), "sha256": sha}
    version = register(client, name, run_id, version_tags)
    client.set_tag(run_id, tags.PROMOTION, f"{decision}; {name} version {version}")
    result.update(decision="promoted", version=version)
    print(f"promoted: {name} version {version} is @{ALIAS} (models:/{name}@{ALIAS})")
    return result


if __name__ == "__main__":
    run(main)
