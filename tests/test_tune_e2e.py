"""End to end: ``python -m platform.tune`` as a user runs it, on real local Ray, Optuna and MLflow.

A tiny search (2 trials, 2 epochs) over a freshly initialised small HT-Demucs base written by
the project's own checkpoint code, on a rendered corpus. It checks what a user relies on: the
parent and child runs with ``valid/sdr`` per epoch, and that each trial's adapter artifact
reloads into a fresh model and reproduces the score the trial logged.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainables.separation import evaluate_tracks

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=2, t_layers=2,
            bottom_channels=0)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory) -> Path:
    from trainables import htdemucs

    torch.manual_seed(0)
    model = htdemucs.new_model(htdemucs.EMBEDDED_SOURCES, TINY)
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    htdemucs.save_checkpoint(model, path, TINY)
    return path


@pytest.fixture(scope="module", params=["direct", "train"])
def search(request, tmp_path_factory, base_checkpoint):
    """The same tiny study through each executor: in the Tune trial, and as a Ray Train job."""
    work = tmp_path_factory.mktemp(f"study-{request.param}")
    summary = work / "summary.json"
    env = {**os.environ, "RANKHOUSE_HOME": str(work / "home")}
    # the Ray Train case goes through the console script: ``rankhouse tune`` is ``python -m platform.tune``
    tune = ([str(Path(sys.executable).parent / "rankhouse"), "tune"] if request.param == "train"
            else [sys.executable, "-m", "platform.tune"])
    cmd = [*tune, "search_spaces/techhouse.yaml",
           f"model.base={base_checkpoint}", "search.num_samples=2", "search.scheduler.type=fifo",
           "train.epochs=2", "train.steps_per_epoch=2", "train.batch_size=2", "data.segment=2.0",
           "train.valid_max_seconds=4.0", "data.embedded.songs=4", "data.embedded.seconds=6.0",
           f"resources.executor={request.param}", "resources.cpus_per_worker=0.9",
           f"tracking.output={work / 'out'}", "--json", str(summary)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(summary.read_text()), work


@pytest.mark.slow
def test_cli_prints_where_to_look(search):
    proc, summary, _ = search
    assert f"parent run: {summary['parent_run_id']}" in proc.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    # the link opens the study's runs in MLflow 3's model-training view, not its GenAI one
    url = (f"http://127.0.0.1:5000/#/experiments/{summary['experiment_id']}/runs?workflowType=machine_learning"
           f"&viewStateShareKey={summary['parent_run_id']}")
    assert summary["ui_url"] == url and proc.stdout.count(f"then open {url}") == 2
    from trainables import tracking

    experiment = tracking.client(summary["tracking_uri"]).get_experiment(summary["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert summary["best"] is not None and summary["best"]["run_id"] == summary["trials"][0]["run_id"]
    assert set(summary["base"]["metrics"]) >= {"valid/sdr", "valid/sdr/kick", "valid/sdr/vocals"}


@pytest.mark.slow
def test_the_printed_link_opens_on_the_trials_and_their_objective_in_a_browser(search, tmp_path):
    """``mlflow server`` on the study's store, and the link the search printed opened in headless
    Chromium: the rendered table lists the search's trial runs by name, best first, each with
    its ``valid/sdr``."""
    from servers import MlflowServer, rendered_text
    from trainables import tracking

    _, summary, _ = search
    mlflow = tracking.client(summary["tracking_uri"])
    runs = sorted((mlflow.get_run(t["run_id"]) for t in summary["trials"]),
                  key=lambda r: r.data.metrics["valid/sdr"], reverse=True)
    with MlflowServer(summary["tracking_uri"]) as server:
        text = rendered_text(summary["ui_url"].replace("http://127.0.0.1:5000", server.url), tmp_path)
    assert "Sort: valid/sdr" in text, text[:2000]
    header = text[text.index("Run Name"):text.index(runs[0].info.run_name)]
    assert {"valid/sdr", "lora.rank", "optim.lr", "trainable_params"} <= set(header.split()), header
    names = [r.info.run_name for r in runs]
    assert all(re.fullmatch(r"\w{8} r\d+ lr\S+", n) for n in names), names
    at = [text.find(n) for n in names]
    assert -1 not in at and at == sorted(at), (names, text[:3000])  # every trial, the best first
    for run in runs:
        assert repr(run.data.metrics["valid/sdr"]) in text, (run.data.metrics, text[:3000])
    assert f"{summary['study']}-study" not in text  # the table holds the trials, not the parent run


@pytest.mark.slow
def test_the_console_shows_each_trial_s_objective_once_per_epoch(search):
    """A line per trial event, the objective in each epoch's; Tune's status tables stay out."""
    proc, summary, _ = search
    out = proc.stdout
    for t in summary["trials"]:
        assert len(re.findall(rf"trial {t['trial_id']} started: rank=\d+ alpha=", out)) == 1
        epochs = re.findall(rf"trial {t['trial_id']} epoch (\d)/2: valid/sdr (-?[\d.]+) \(trial best", out)
        assert [int(e) for e, _ in epochs] == [1, 2]
        assert float(epochs[-1][1]) == pytest.approx(t["metrics"]["valid/sdr"], abs=1e-3)
        assert re.search(rf"trial {t['trial_id']} finished: best valid/sdr {t['best']:.3f}", out)
    assert "Trial status:" not in out and "Current best trial" not in out


@pytest.mark.slow
def test_quiet_prints_only_the_closing_table(base_checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "platform.tune", "search_spaces/techhouse.yaml", "--quiet",
           f"model.base={base_checkpoint}", "search.num_samples=1", "search.scheduler.type=fifo",
           "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=1", "data.segment=2.0",
           "train.valid_max_seconds=2.0", "data.embedded.songs=4", "data.embedded.seconds=6.0",
           "resources.cpus_per_worker=0.9", f"tracking.output={tmp_path / 'out'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "RANKHOUSE_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines[0].startswith("trial ") and "valid/sdr" in lines[0]  # the table's head comes first
    assert lines[-2].startswith("browse: mlflow ui") and lines[-1].strip().startswith("then open http://127.0.0.1")
    assert not [line for line in lines if line.startswith(("preflight:", "tracking:", "parent run:"))]
    assert len(lines) <= 11, proc.stdout  # table (head, rule, base, 1 trial, note), best, gains, plots, browse x2


@pytest.mark.slow
def test_parent_and_child_runs_with_sdr_per_epoch(search):
    from trainables import tracking

    _, summary, _ = search
    mlflow = tracking.client(summary["tracking_uri"])
    parent = mlflow.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED"
    # the parent run's description is the closing table: base first, then the trials best first
    note = parent.data.tags["mlflow.note.content"].splitlines()
    rows = [line.split(" | ")[0].removeprefix("| ") for line in note if line.startswith("| ")][1:]
    assert rows == ["base", *(t["trial_id"] for t in summary["trials"])]
    assert f"{summary['trials'][0]['best']:.3f}" in note[note.index(next(r for r in note if r.startswith("| base"))) + 1]
    children = list(tracking.children(mlflow, parent.info.experiment_id, parent.info.run_id))
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        # listed in the UI by trial, rank and learning rate
        assert re.fullmatch(rf"{run.data.tags['rankhouse.trial_id']} r{run.data.params['lora.rank']} "
                            rf"lr{float(run.data.params['optim.lr']):.2g}", run.info.run_name), run.info.run_name
        steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "valid/sdr")]
        assert steps == [1, 2]
        for source in ("kick", "hihat", "bass", "other", "vocals"):
            assert len(mlflow.get_metric_history(run.info.run_id, f"valid/sdr/{source}")) == 2
        params = run.data.params
        assert int(params["trainable_params"]) > 0
        # workers preload torch before Ray sets OMP_NUM_THREADS: the trial pins its own threads
        assert params["torch_threads"] == "1"
        assert params["base.sha256"] == summary["base"]["identity"]["sha256"]
        assert any(k.startswith("rank.") for k in params)  # the resolved per-module rank map


@pytest.mark.slow
def test_everything_lands_in_the_output_folder(search):
    _, summary, work = search
    out = work / "out"
    assert summary["tracking_uri"] == f"sqlite:///{out / 'mlflow.db'}"
    assert list((out / "artifacts").rglob("adapter_model.safetensors"))  # adapters beside the store
    assert (out / "optuna.db").is_file() and (out / "ray").is_dir()
    assert not (ROOT / "mlruns").exists()


@pytest.mark.slow
def test_adapters_reload_and_reproduce_the_logged_score(search, base_checkpoint):
    import mlflow

    from trainables import lora
    from trainables.data.cache import StemCache
    from trainables.data.layout import normalize_sources
    from trainables.htdemucs import HTDemucsFamily

    _, summary, work = search
    family = HTDemucsFamily()
    sources = normalize_sources(["kick", "hihat", "bass", "other", "vocals"])
    valid = StemCache(next((work / "home").rglob("valid-22050-*.arrow")))
    for trial in summary["trials"]:
        folder = mlflow.artifacts.download_artifacts(run_id=trial["run_id"], artifact_path="adapter",
                                                     tracking_uri=summary["tracking_uri"])
        assert sorted(os.listdir(folder)) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                             "rankhouse.json"]  # the bundle manifest beside the PEFT adapter
        outputs = []
        for _ in range(2):
            base = family.build_base({"base": str(base_checkpoint)})
            model, _ = family.adapt_sources(base, list(sources), {"kick": "drums", "hihat": "drums"})
            peft_model = lora.load(model.requires_grad_(False), Path(folder)).eval()
            x = torch.randn(1, 2, 2 * 22050, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():
                outputs.append(peft_model(x))
        assert torch.equal(outputs[0], outputs[1])
        scores = evaluate_tracks(peft_model, valid, sources, 22050, 2.0, torch.device("cpu"), max_seconds=4.0)
        assert scores["valid/sdr"] == pytest.approx(trial["best"], abs=1e-3)
