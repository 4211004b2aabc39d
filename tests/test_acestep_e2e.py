"""End to end for the ACE-Step family: ``platform.tune`` on the embedded text-to-music base
(real Ray, Optuna, MLflow, diffusers' ACE-Step transformer, the converter behind the embedded
data), ``platform.promote`` gating on the holdout flow-matching loss, and ``platform.generate``
from the search's best adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from e2e import search_and_promote

SPACE = """
study: acestep-e2e
model: {family: acestep, base: embedded}
data: {root: embedded, embedded: {preset: techhouse, songs: 6, seconds: 8.0, seed: 0}, valid: 0.34, seconds: 3.0}
train: {epochs: 2, steps_per_epoch: 6, batch_size: 4, seed: 0}
lora: {rank_mode: custom, rank: 4, alpha: 8.0,
       targets: [transformer.layers.*.to_q, transformer.layers.*.to_v, transformer.layers.*.mlp.*]}
optim: {lr: 3.0e-3, schedule: constant}
objective: {metric: valid/fm_loss, mode: min}
search:
  num_samples: 2
  max_concurrent: 1
  scheduler: {type: fifo}
  space:
    lora.layer_ranks."transformer.layers.*.mlp.*": {type: choice, values: [0, 4]}
    optim.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}
resources: {cpus_per_worker: 0.9}
tracking: {output: OUT}
registry:
  model_name: acestep-e2e
  holdout:
    root: embedded
    embedded: {preset: techhouse, songs: 3, seconds: 8.0, seed: 1000}
"""
pytestmark = pytest.mark.slow
METRICS = ["train/loss", "valid/loss", "valid/fm_loss", "valid/cond_gain"]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    return search_and_promote(tmp_path_factory.mktemp("acestep"), "acestep", SPACE)


def test_trials_log_the_flow_matching_metrics_per_epoch_and_two_generated_clips(study):
    from trainables import tracking

    summary = study["summary"]
    client = tracking.client(summary["tracking_uri"])
    zero = summary["baselines"]["zero"]
    assert zero["valid/cond_gain"] == 0.0 and zero["valid/fm_loss"] > 0
    assert "baseline zero: valid/fm_loss = " in study["tune"].stdout
    for trial in summary["trials"]:
        for metric in METRICS:
            assert len(client.get_metric_history(trial["run_id"], metric)) == trial["epochs"] == 2, metric
        # the best epoch's preview: two clips for fixed prompts, as WAV, with their mel images
        arts = {a.path for a in client.list_artifacts(trial["run_id"], "preview")}
        assert {f"preview/clip_{i}.{ext}" for i in (0, 1) for ext in ("wav", "png")} <= arts
        best = min(h.value for h in client.get_metric_history(trial["run_id"], "valid/fm_loss"))
        assert best < zero["valid/fm_loss"]  # the base already denoises; no trial falls to the baseline


def test_promotion_gates_on_the_holdout_flow_matching_loss(study):
    out = study["promote"].stdout + study["promote"].stderr
    assert "flow-matching loss" in out, out[-2000:]
    if study["promote"].returncode == 0:
        promotion = json.loads((study["work"] / "promote.json").read_text())
        cand, ref = promotion["candidate"]["holdout"], promotion["reference"]["holdout"]
        assert cand["fm_loss"] < ref["fm_loss"] and "cond_gain" in cand
    else:
        assert "gain" in out and study["promote"].returncode != 0


def test_generate_from_the_best_adapter_gives_the_same_bytes_for_the_same_seed(study):
    work, best = study["work"], study["summary"]["best"]["adapter"]

    def generate(name: str, seed: int) -> Path:
        out = work / name
        proc = study["run"]("platform.generate", "--model", best, "--tracking-uri", study["summary"]["tracking_uri"],
                            "--prompt", "tech house, 126 bpm, kick, hihat", "--seconds", "3", "--seed", str(seed),
                            "--steps", "4", "-o", str(out))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out

    a, b, c = generate("a.wav", 0), generate("b.wav", 0), generate("c.wav", 1)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert sf.info(str(a)).duration == pytest.approx(3.0, abs=0.05)


def test_export_merges_the_best_adapter_into_a_base_that_generates(study):
    work, best = study["work"], study["summary"]["best"]["adapter"]
    out = work / "merged.safetensors"
    proc = study["run"]("platform.export", "--model", best, "--tracking-uri", study["summary"]["tracking_uri"],
                        "--merged", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max |merged - adapter|" in proc.stdout and "test input" in proc.stdout
    proc = study["run"]("platform.generate", "--model", str(out), "--prompt", "tech house, kick", "--seconds", "2",
                        "--steps", "2", "-o", str(work / "merged.wav"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sf.info(str(work / "merged.wav")).duration == pytest.approx(2.0, abs=0.05)
