"""End to end: search -> promote (gated on museval SDR) -> separate / export, as a user runs them,
and what the MLflow UI shows of it, read through a real ``mlflow server``'s REST API.

Three searches of one study from the embedded base on a small rendered corpus, each a single
trial trained for a different number of steps (more steps: a better adapter), promoted in turn:

- search 1 (2 x 12 steps) beats the base model and becomes version 1, ``champion``;
- search 2 (1 x 4 steps) is worse than the champion: refused, both scores printed, alias kept;
- search 3 (4 x 12 steps) beats version 1 and becomes version 2; ``--rollback`` restores 1.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
MODEL = "promo-htdemucs"
SPACE = """
study: promo
model: {family: htdemucs, base: embedded, sources: [kick, hihat, bass, other, vocals],
        parents: {kick: drums, hihat: drums}}
data: {root: embedded, embedded: {preset: techhouse, songs: 4, seconds: 6.0, seed: 0}, segment: 3.0}
train: {epochs: 1, steps_per_epoch: 4, batch_size: 2, seed: 0, valid_max_seconds: 4.0}
lora: {rank: 4, alpha: 8.0}
optim: {lr: 3.0e-3, schedule: constant}
search:
  num_samples: 1
  max_concurrent: 1
  scheduler: {type: fifo}
  space:
    lora.rank: {type: choice, values: [4]}
resources: {cpus_per_worker: 0.9}
tracking: {output: OUT}
registry:
  model_name: promo-htdemucs
  holdout:
    root: embedded
    embedded: {preset: techhouse, songs: 3, seconds: 6.0, seed: 1000, valid: 2}
    max_seconds: 3.0
"""
pytestmark = pytest.mark.slow


class Study:
    def __init__(self, work: Path, space: str = SPACE):
        self.work, self.out = work, work / "out"
        self.space = work / "promo.yaml"
        self.space.write_text(space.replace("OUT", str(self.out)))
        self.env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}
        self.uri = f"sqlite:///{self.out / 'mlflow.db'}"

    def run(self, module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=1200)

    def tune(self, name: str, *overrides: str) -> dict:
        summary = self.work / f"{name}.json"
        proc = self.run("platform.tune", str(self.space), *overrides, "--json", str(summary))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(summary.read_text())

    def promote(self, name: str, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
        out = self.work / f"promote-{name}.json"
        proc = self.run("platform.promote", str(self.space), *args, "--json", str(out))
        return proc, json.loads(out.read_text()) if out.is_file() else None

    def client(self):
        from trainables import tracking

        return tracking.client(self.uri)

    def holdout_track(self) -> Path:
        valid = next((self.work / "home" / "corpora").glob("techhouse-seed1000-*")) / "valid"
        return sorted(valid.iterdir())[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    s = Study(tmp_path_factory.mktemp("promote"))
    steps = {}
    steps["s1"] = s.tune("s1", "train.epochs=2", "train.steps_per_epoch=12")
    steps["p1"] = s.promote("p1")
    steps["s2"] = s.tune("s2")
    steps["p2"] = s.promote("p2")
    steps["s3"] = s.tune("s3", "train.epochs=4", "train.steps_per_epoch=12")
    steps["p3"] = s.promote("p3")
    return {"study": s, **steps}


def test_a_study_that_keeps_the_base_sources_is_promoted_over_the_unadapted_base(tmp_path):
    """4 stems -> the same 4 stems: the reference must be the base without the adapter. (When the
    family returned the base model itself, the adapter was injected into the reference too:
    a gain of exactly 0, and such a study could never be promoted.)"""
    four = SPACE.replace("sources: [kick, hihat, bass, other, vocals],\n        parents: {kick: drums, hihat: drums}}",
                         "sources: [drums, bass, other, vocals]}")
    four = four.replace("data: {root: embedded,", "data: {stems: {drums: [kick, hihat]}, root: embedded,")
    four = four.replace("model_name: promo-htdemucs", "model_name: promo-four")
    assert "drums, bass, other, vocals" in four and "promo-four" in four and "stems: {drums: [kick, hihat]}" in four
    s = Study(tmp_path, four)
    s.tune("s1", "train.epochs=2", "train.steps_per_epoch=12")
    proc, decision = s.promote("p1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert decision["decision"] == "promoted" and decision["reference"]["label"] == "base (no adapter)"
    assert decision["gain"] > 0.05, decision
    assert decision["candidate"]["holdout"]["sdr"] != decision["reference"]["holdout"]["sdr"]


def champion(s: Study) -> str:
    return str(s.client().get_model_version_by_alias(MODEL, "champion").version)


def test_first_promotion_beats_the_base_and_registers_version_1(study):
    proc, decision = study["p1"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert decision["decision"] == "promoted" and decision["version"] == "1"
    assert decision["reference"]["label"] == "base (no adapter)"
    assert decision["gain"] > 0
    assert decision["candidate"]["run_id"] == study["s1"]["best"]["run_id"]
    # BSSEval per source on the holdout, and museval's cost, are reported
    assert set(decision["candidate"]["holdout"]) == {"sdr", *(f"sdr/{s}" for s in
                                                           ("kick", "hihat", "bass", "other", "vocals"))}
    assert decision["score"] == "sdr" and decision["unit"] == "dB"
    assert float(re.search(r"museval: \d+ tracks, \d+ s of audio, (\d+) s of CPU", proc.stdout).group(1)) >= 0
    version = study["study"].client().get_model_version(MODEL, "1")
    assert version.tags["rankhouse.study"] == "promo"
    assert version.tags["rankhouse.base.sha256"] == study["s1"]["base"]["identity"]["sha256"]
    assert float(version.tags["rankhouse.holdout_sdr"]) == pytest.approx(decision["candidate"]["holdout"]["sdr"],
                                                                         abs=1e-3)
    assert version.tags["rankhouse.decision"].startswith("promoted")
    # the version's description says what promotion measured, in words and numbers
    assert version.description.startswith(f"Promoted by rankhouse from study promo, trial {decision['candidate']['trial_id']}")
    assert f"gain {decision['gain']:+.3f} dB (needed >= 0)" in version.description
    assert decision["holdout"] in version.description and "base (no adapter)" in version.description


def test_a_worse_study_is_refused_with_both_scores_and_the_alias_kept(study):
    proc, decision = study["p2"]
    assert proc.returncode == 1
    assert decision["decision"] == "refused" and decision["gain"] < 0
    assert decision["reference"]["label"] == "champion v1"
    assert re.search(r"candidate\s+BSSEval v4 SDR -?\d", proc.stdout)
    assert re.search(r"champion v1\s+BSSEval v4 SDR -?\d", proc.stdout)
    assert "unchanged" in proc.stdout
    run = study["study"].client().get_run(study["s2"]["best"]["run_id"])
    assert run.data.tags["rankhouse.promotion"].startswith("refused")


def test_a_better_study_becomes_version_2(study):
    proc, decision = study["p3"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert decision["decision"] == "promoted" and decision["version"] == "2"
    assert decision["reference"]["label"] == "champion v1"
    assert champion(study["study"]) == "2"


def test_separate_writes_every_source_near_the_promoted_score(study, tmp_path):
    s = study["study"]
    track = s.holdout_track()
    proc = s.run("platform.separate", str(track / "mixture.wav"), "--model", f"models:/{MODEL}@champion",
                 "--tracking-uri", s.uri, "-o", str(tmp_path), "--reference", str(track))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rate = sf.info(str(track / "mixture.wav")).samplerate
    for source in ("kick", "hihat", "bass", "other", "vocals"):
        info = sf.info(str(tmp_path / "mixture" / f"{source}.wav"))
        assert (info.samplerate, info.channels) == (rate, 2)
        assert info.frames == sf.info(str(track / "mixture.wav")).frames
    # the printed scores are the written files' against the track's stems...
    from trainables.metrics import nsdr

    sources = ["kick", "hihat", "bass", "other", "vocals"]
    printed = re.search(r"nSDR vs .*: mean (-?[\d.]+) dB \((.*)\)", proc.stdout)
    printed = dict((name, float(v)) for name, v in (item.rsplit(" ", 1) for item in printed.group(2).split(", ")))
    refs = np.stack([sf.read(str(track / f"{s}.wav"), always_2d=True)[0].T for s in sources])
    estimates = np.stack([sf.read(str(tmp_path / "mixture" / f"{s}.wav"), always_2d=True)[0].T for s in sources])
    scores = nsdr(refs, estimates)
    assert [printed[s] for s in sources] == pytest.approx(scores.tolist(), abs=0.006)
    # ...and every source is better than what a model that cannot listen gives: the mixture itself
    mixture = sf.read(str(track / "mixture.wav"), always_2d=True)[0].T
    copies = nsdr(refs, np.broadcast_to(mixture, refs.shape))
    assert (scores > copies + 1.0).all(), dict(zip(sources, zip(scores, copies)))


def test_separate_takes_any_rate_and_channel_count(study, tmp_path):
    s = study["study"]
    mix, rate = sf.read(str(s.holdout_track() / "mixture.wav"), dtype="float32")
    from trainables.data.audio import resample

    mono = resample(mix.mean(axis=1, keepdims=True).T, rate, 32000)[0]
    sf.write(str(tmp_path / "song.flac"), mono, 32000)
    proc = s.run("platform.separate", str(tmp_path / "song.flac"), "--model", f"models:/{MODEL}/1",
                 "--tracking-uri", s.uri, "-o", str(tmp_path / "stems"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    stems = sorted((tmp_path / "stems" / "song").iterdir())
    assert [p.name for p in stems] == sorted(f"{x}.wav" for x in ("kick", "hihat", "bass", "other", "vocals"))
    estimates = [sf.read(str(p), dtype="float32") for p in stems]
    assert all(r == 32000 and a.ndim == 1 and len(a) == len(mono) for a, r in estimates)
    # the estimates add up to (roughly) the mixture: separation, not noise
    residual = np.sum([a for a, _ in estimates], axis=0) - mono
    assert np.sqrt(np.mean(residual ** 2)) < 0.5 * np.sqrt(np.mean(mono ** 2))


def test_export_merges_to_the_same_outputs(study, tmp_path):
    import torch

    from platform import models
    from trainables import bundle, htdemucs

    s = study["study"]
    out = tmp_path / "merged.safetensors"
    proc = s.run("platform.export", "--model", f"models:/{MODEL}@champion", "--tracking-uri", s.uri,
                 "--merged", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder, _ = models.fetch(f"models:/{MODEL}@champion", tmp_path / "adapter", s.uri)
    loaded = bundle.load(folder)
    merged, _ = htdemucs.load_safetensors(out)
    x = torch.randn(1, 2, 2 * loaded.manifest["samplerate"], generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        assert float((merged.eval()(x) - loaded.model(x)).abs().max()) <= 1e-4
    # an adapter is refused on another base: the merged weights are not the base it was trained on
    proc = s.run("platform.separate", str(s.holdout_track() / "mixture.wav"), "--model", f"models:/{MODEL}@champion",
                 "--tracking-uri", s.uri, "-o", str(tmp_path / "x"), "--base", str(out))
    assert proc.returncode == 2 and "sha256" in proc.stderr and not (tmp_path / "x").exists()


def test_corrupt_adapter_is_refused_and_nothing_registered(study):
    s = study["study"]
    run_id = study["s2"]["best"]["run_id"]
    art = Path(s.client().get_run(run_id).info.artifact_uri.removeprefix("file://")) / "adapter"
    weights = art / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    versions = len(s.client().search_model_versions(f"name = '{MODEL}'"))
    proc, _ = s.promote("corrupt", "--run", run_id)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("rankhouse: error:") and "corrupt adapter weights" in last
    assert len(s.client().search_model_versions(f"name = '{MODEL}'")) == versions


def test_a_second_promotion_of_the_same_model_is_refused_while_one_runs(study):
    s = study["study"]
    with open(s.out / f".promote-{MODEL}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc, _ = s.promote("locked", "--dry-run")
    assert proc.returncode == 2 and "another promotion" in proc.stderr


def test_mlflow_server_shows_trials_audio_plots_and_champion(study):
    """What the MLflow UI compares, read through a real tracking server's REST API."""
    from servers import MlflowServer

    s = study["study"]

    def get(endpoint: str, **query) -> dict:
        with urllib.request.urlopen(f"{base}/{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as r:
            return json.load(r)

    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{base}/{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)

    with MlflowServer(s.uri, s.env) as server:
        base = f"{server.url}/api/2.0/mlflow"
        exp = get("experiments/get-by-name", experiment_name="promo")["experiment"]
        parent_id = study["s3"]["parent_run_id"]
        parent = get("runs/get", run_id=parent_id)["run"]
        assert parent["info"]["status"] == "FINISHED"
        plots = {f["path"] for f in get("artifacts/list", run_id=parent_id, path="plots")["files"]}
        assert {"plots/optimization_history.png", "plots/objective_vs_trainable_params.png"} <= plots
        children = post("runs/search", {"experiment_ids": [exp["experiment_id"]],
                                        "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'"})["runs"]
        assert len(children) == 1
        child = children[0]["info"]["run_id"]
        history = get("metrics/get-history", run_id=child, metric_key="valid/sdr")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2, 3, 4]
        params = {p["key"] for p in children[0]["data"]["params"]}
        assert {"lora.rank", "lora.alpha", "optim.lr", "trainable_params"} <= params
        preview = {f["path"] for f in get("artifacts/list", run_id=child, path="preview")["files"]}
        assert {f"preview/{x}.wav" for x in ("mixture", "kick", "hihat", "bass", "other", "vocals")} <= preview
        assert "preview/sdr_per_source.png" in preview
        alias = get("registered-models/alias", name=MODEL, alias="champion")["model_version"]
        assert alias["version"] == "2" and alias["run_id"] == child


def test_rollback_restores_the_previous_champion_once(study):
    s = study["study"]
    proc, result = s.promote("rollback", "--rollback")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result == {"model": MODEL, "rolled_back": "2", "champion": "1"}
    assert champion(s) == "1"
    proc, _ = s.promote("rollback-again", "--rollback")
    assert proc.returncode == 2 and "no previous champion" in proc.stderr
    assert champion(s) == "1"


def test_a_later_search_without_a_finished_trial_does_not_shadow_the_last_real_one(study, capsys):
    """A search that crashed before finishing any trial leaves a FAILED parent run: promote's
    candidate is still the latest search that finished trials, and it says what it skipped."""
    from platform import promote, spaces
    from trainables import tags

    s = study["study"]
    client = s.client()
    exp = client.get_experiment_by_name("promo")
    empty = client.create_run(exp.experiment_id, tags={tags.STUDY: "promo"})
    client.set_terminated(empty.info.run_id, status="FAILED")
    chosen, value = promote.pick_candidate(client, spaces.load(s.space), s.uri, None)
    assert chosen.info.run_id == study["s3"]["best"]["run_id"]
    assert value == pytest.approx(study["s3"]["best"]["best"])
    assert f"note: skipped search {empty.info.run_id} (FAILED): no finished trial" in capsys.readouterr().out
