"""End to end for the second family: ``python -m platform.tune`` then ``python -m platform.promote``
on the embedded BS-RoFormer base, written as an MSST user writes the adapter (MSST's ``lora:``
block, ``merge_weights: True``), on real Ray, Optuna, MLflow and museval.

It checks what the issue promises: per-source SDR of the five tech-house stems in MLflow, an
adapter bundle that reloads and reproduces its logged score, a promotion that beats the base,
and the merged model MSST's flag asks for, separating like the adapter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainables.separation import evaluate_tracks

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["kick", "hihat", "bass", "other", "vocals"]
SPACE = """
study: roformer-e2e
model: {family: bs_roformer, base: embedded, sources: [kick, hihat, bass, other, vocals],
        parents: {kick: drums, hihat: drums}}
data: {root: embedded, embedded: {preset: techhouse, songs: 4, seconds: 6.0, seed: 0}, segment: 3.0}
train: {epochs: 2, steps_per_epoch: 8, batch_size: 2, seed: 0, valid_max_seconds: 4.0}
lora:
  r: 4
  lora_alpha: 8
  lora_dropout: 0.0
  target_modules: [to_qkv, to_out.0]
  merge_weights: True
  fan_in_fan_out: False
  enable_lora: [True]
optim: {lr: 3.0e-3, schedule: constant}
search:
  num_samples: 2
  max_concurrent: 1
  scheduler: {type: fifo}
  space:
    lora.layer_ranks."layers.*.to_out.*": {type: choice, values: [0, 4]}
resources: {cpus_per_worker: 0.9}
tracking: {output: OUT}
registry:
  model_name: roformer-e2e
  holdout:
    root: embedded
    embedded: {preset: techhouse, songs: 3, seconds: 6.0, seed: 1000, valid: 2}
    max_seconds: 3.0
"""
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("roformer")
    space = work / "roformer.yaml"
    space.write_text(SPACE.replace("OUT", str(work / "out")))
    env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", module, str(space), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=1500)

    tune = run("platform.tune", "--json", str(work / "summary.json"))
    assert tune.returncode == 0, tune.stdout[-3000:] + tune.stderr[-3000:]
    promote = run("platform.promote", "--json", str(work / "promote.json"))
    return {"work": work, "summary": json.loads((work / "summary.json").read_text()), "promote": promote,
            "promotion": json.loads((work / "promote.json").read_text()) if (work / "promote.json").is_file() else None}


def test_trials_log_sdr_per_source_and_their_rank_maps(study):
    from trainables import tracking

    summary = study["summary"]
    client = tracking.client(summary["tracking_uri"])
    parent = client.get_run(summary["parent_run_id"])
    children = list(tracking.children(client, parent.info.experiment_id, parent.info.run_id))
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        for source in SOURCES:
            assert [m.step for m in client.get_metric_history(run.info.run_id, f"valid/sdr/{source}")] == [1, 2]
        ranks = {k: v for k, v in run.data.params.items() if k.startswith("rank.")}
        # MSST's target_modules [to_qkv, to_out.0]: every time and frequency block's attention
        assert ranks and all(k.endswith(("to_qkv", "to_out.0")) for k in ranks)
        assert run.data.params["lora.alpha"] == "8.0" and run.data.params["lora.scaling"] == "standard"
    # the two sampled configurations differ in whether the attention outputs are adapted
    counts = sorted(sum(k.startswith("rank.") for k in r.data.params) for r in children)
    assert counts[0] < counts[1]


def test_the_adapter_bundle_reloads_and_reproduces_its_score(study):
    import mlflow

    from trainables import bundle, tracking
    from trainables.data.cache import StemCache
    from trainables.data.layout import normalize_sources

    summary, work = study["summary"], study["work"]
    # the study's own corpus (seed 0), not promotion's holdout, whose cache has the same rate
    corpus = next((work / "home" / "corpora").glob("techhouse-seed0-*"))
    valid = StemCache(next(corpus.rglob("valid-22050-*.arrow")))
    best = summary["trials"][0]
    folder = mlflow.artifacts.download_artifacts(run_id=best["run_id"], artifact_path="adapter",
                                                 tracking_uri=summary["tracking_uri"])
    # the size each trial logs is its adapter file's (issue 5: every trial logs trainable params and bytes)
    run = tracking.client(summary["tracking_uri"]).get_run(best["run_id"])
    assert int(run.data.params["adapter_bytes"]) == (Path(folder) / "adapter_model.safetensors").stat().st_size
    assert int(run.data.params["trainable_params"]) == loaded_params(Path(folder))
    loaded = bundle.load(Path(folder))
    assert loaded.manifest["family"] == "bs_roformer" and loaded.model.sources == SOURCES
    scores = evaluate_tracks(loaded.model, valid, normalize_sources(SOURCES), 22050, 3.0, torch.device("cpu"),
                           max_seconds=4.0)
    assert scores["valid/sdr"] == pytest.approx(best["best"], abs=1e-3)


def test_promotion_beats_the_base_and_writes_the_merged_model_msst_asked_for(study):
    from safetensors.torch import load_file

    from trainables import bundle, tracking
    from trainables.family import get_family

    proc, result = study["promote"], study["promotion"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["decision"] == "promoted" and result["gain"] > 0
    merged = Path(result["merged"]["path"])
    assert merged.is_file() and merged.suffix == ".safetensors"
    client = tracking.client(study["summary"]["tracking_uri"])
    version = client.get_model_version("roformer-e2e", result["version"])
    assert version.tags["rankhouse.merged"] == str(merged)
    assert version.tags["rankhouse.merged_sha256"] == result["merged"]["sha256"]
    # a plain model: no LoRA weights, loadable as a base of its own, separating as the adapter does
    assert not [k for k in load_file(str(merged)) if "lora_" in k]
    plain = get_family("bs_roformer").build_base({"base": str(merged)})
    assert plain.sources == SOURCES
    import mlflow

    folder = mlflow.artifacts.download_artifacts(run_id=result["candidate"]["run_id"], artifact_path="adapter",
                                                 tracking_uri=study["summary"]["tracking_uri"])
    adapter = bundle.load(Path(folder)).model
    x = 0.1 * torch.randn(1, 2, 22050, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain.model(x), adapter(x), atol=1e-4)


def loaded_params(folder: Path) -> int:
    """Parameters in a saved adapter file: the LoRA matrices and the fully trained heads."""
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(folder / "adapter_model.safetensors")).values())


def test_the_champion_exports_as_an_msst_checkpoint_that_reloads_and_separates_the_same(study):
    """``platform.export --format msst``: MSST's key names in a plain state dict and the MSST
    YAML that builds it, read back through the family as an MSST user's checkpoint would be."""
    import mlflow
    import yaml

    from trainables import bundle
    from trainables.family import get_family

    uri, work = study["summary"]["tracking_uri"], study["work"]
    out = work / "msst" / "champion.ckpt"
    proc = subprocess.run([sys.executable, "-m", "platform.export", "--model", "models:/roformer-e2e@champion",
                           "--tracking-uri", uri, "--merged", str(out), "--format", "msst"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = out.with_suffix(".yaml")
    assert out.is_file() and config.is_file() and "its MSST config" in proc.stdout
    state = torch.load(str(out), map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and not [k for k in state if "lora_" in k or "base_model" in k]
    raw = yaml.load(config.read_text(), Loader=yaml.FullLoader)  # as MSST reads its configs
    assert isinstance(raw["model"]["freqs_per_bands"], tuple) and raw["model"]["num_stems"] == len(SOURCES)
    assert raw["training"]["instruments"] == SOURCES and raw["audio"]["sample_rate"] == 22050
    plain = get_family("bs_roformer").build_base({"base": str(out), "config": str(config)})
    assert plain.sources == SOURCES
    folder = mlflow.artifacts.download_artifacts(run_id=study["promotion"]["candidate"]["run_id"],
                                                 artifact_path="adapter", tracking_uri=uri)
    adapter = bundle.load(Path(folder)).model
    x = 0.1 * torch.randn(1, 2, 22050, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(plain.model.eval()(x), adapter(x), atol=1e-4)


def test_export_refuses_a_file_name_of_the_other_format(study, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "platform.export", "--model", "models:/roformer-e2e@champion",
                           "--tracking-uri", study["summary"]["tracking_uri"], "--merged",
                           str(tmp_path / "champion.safetensors"), "--format", "msst"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--format msst writes .ckpt or .pth or .pt files" in proc.stderr
    assert not list(tmp_path.iterdir())
