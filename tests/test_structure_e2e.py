"""End to end for the structure family: ``platform.tune`` on the embedded structure base
(real Ray, Optuna, MLflow, mir_eval), ``platform.promote`` gating on the holdout boundary
F-measure, and ``platform.analyze`` on a 2-minute MP3 at another rate, in stereo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from e2e import search_and_promote

SPACE = """
study: structure-e2e
model: {family: structure, base: embedded}
data: {root: embedded, embedded: {preset: techhouse, songs: 6, seconds: [30.0, 40.0], seed: 0, valid: 2},
       duration: 20.0}
train: {epochs: 2, steps_per_epoch: 6, batch_size: 4, seed: 0, valid_max_seconds: null}
lora: {rank_mode: custom, rank: 4, alpha: 8.0}
optim: {lr: 3.0e-3, schedule: constant}
search:
  num_samples: 2
  max_concurrent: 1
  scheduler: {type: fifo}
  space:
    lora.layer_ranks."backbone.tcn.*": {type: choice, values: [0, 4]}
    train.weights.boundary: {type: uniform, low: 0.5, high: 2.0}
resources: {cpus_per_worker: 0.9}
tracking: {output: OUT}
registry:
  model_name: structure-e2e
  holdout:
    root: embedded
    embedded: {preset: techhouse, songs: 3, seconds: [30.0, 40.0], seed: 1000, valid: 2}
    max_seconds: null
"""
pytestmark = pytest.mark.slow
METRICS = ["valid/loss", "valid/boundary_f05", "valid/boundary_f3", "valid/beat_f", "valid/downbeat_f",
           "valid/label_acc", "valid/energy_corr"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return search_and_promote(tmp_path_factory.mktemp("structure"), "structure", SPACE)


def test_trials_log_every_structure_metric_per_epoch_and_a_preview(study):
    from trainables import tracking

    summary = study["summary"]
    client = tracking.client(summary["tracking_uri"])
    assert {"template", "majority"} <= set(summary["baselines"])
    assert summary["baselines"]["majority"]["valid/boundary_f05"] == 0.0
    assert "baseline template: valid/boundary_f05 = " in study["tune"].stdout
    for trial in summary["trials"]:
        run = client.get_run(trial["run_id"])
        for metric in METRICS:
            history = client.get_metric_history(trial["run_id"], metric)
            assert len(history) == trial["epochs"] == 2, metric
        arts = [a.path for a in client.list_artifacts(trial["run_id"], "preview")]
        assert "preview/structure.png" in arts
        assert run.data.params["train.weights.boundary"]


def test_promotion_gates_on_the_holdout_boundary_f_measure(study):
    out = study["promote"].stdout + study["promote"].stderr
    assert "boundary F@0.5s" in out, out[-2000:]
    if study["promote"].returncode == 0:
        promotion = json.loads((study["work"] / "promote.json").read_text())
        cand, ref = promotion["candidate"]["holdout"], promotion["reference"]["holdout"]
        assert cand["boundary_f05"] > ref["boundary_f05"] and 0 <= cand["boundary_f3"] <= 1
    else:
        assert "gain" in out and study["promote"].returncode != 0


def test_analyze_writes_the_three_outputs_for_a_two_minute_mp3(study):
    from trainables.structure import corpus

    work = study["work"]
    pcm, notes = corpus.render_structure_song("techhouse", 77, (118.0, 120.0), corpus.synth.find_soundfont())
    stereo = np.stack([pcm, pcm], axis=1).astype(np.float32) / 32768.0
    from trainables.data.audio import resample

    at_44k = resample(stereo.T, corpus.SAMPLERATE, 44100).T
    mp3 = work / "song two.mp3"
    sf.write(mp3, at_44k, 44100, format="MP3")
    truth = work / "truth.yaml"
    notes["audio"]["file"] = mp3.name
    truth.write_text(yaml.safe_dump(notes))
    best = study["summary"]["best"]["adapter"]
    proc = study["run"]("platform.analyze", str(mp3), "--model", best, "--tracking-uri",
                        study["summary"]["tracking_uri"], "-o", str(work / "analysis"), "--reference", str(truth))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = work / "analysis"
    assert sorted(p.name for p in out.iterdir()) == ["song two.beats.txt", "song two.png", "song two.yaml"]
    ann = yaml.safe_load((out / "song two.yaml").read_text())
    assert ann["audio"]["file"] == "song two.mp3" and abs(ann["audio"]["duration"] - sf.info(mp3).duration) < 0.2
    assert ann["structure"][0]["time"] == 0.0 and all(
        set(s) == {"bar", "label", "time", "confidence"} for s in ann["structure"])
    beats = [line.split("\t") for line in (out / "song two.beats.txt").read_text().splitlines()]
    assert len(beats) > 100 and all(float(a) < float(b) for (a, _), (b, _) in zip(beats, beats[1:]))
    assert (out / "song two.png").read_bytes()[:4] == b"\x89PNG"
    assert "boundary F@0.5s" in proc.stdout


def test_analyze_refuses_bad_input_in_one_line(study, tmp_path):
    (tmp_path / "junk.mp3").write_bytes(b"not audio" * 50)
    proc = study["run"]("platform.analyze", str(tmp_path / "missing.wav"), "--model", "runs:/nope/adapter",
                        "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"rankhouse: error: {tmp_path / 'missing.wav'}: no such file"]
    assert not (tmp_path / "o").exists()
