"""Multi-objective search: ``objective: [{metric, mode}, ...]`` (platform/spaces.py), the searcher
that tells Optuna each trial's best epoch (platform/searcher.py), the Pareto front
(platform/pareto.py) and its plots (platform/report.py); end to end on real Ray, Optuna, MLflow."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from platform import pareto, report, spaces
from trainables import tags
from platform.searcher import BestEpochOptunaSearch
from trainables.errors import RankhouseError

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SOURCES = ["kick", "hihat", "bass", "other", "vocals"]
TWO = [{"metric": "valid/sdr", "mode": "max"}, {"metric": "trainable_params", "mode": "min"}]


def write(tmp_path, objective) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"study": "mo", "model": {"sources": SOURCES}, "objective": objective}))
    return path


def test_a_list_of_objectives_is_primary_first(tmp_path):
    study = spaces.load(write(tmp_path, TWO))
    assert spaces.objectives(study.config) == [("valid/sdr", "max"), ("trainable_params", "min")]
    assert study.config["objective"]["metric"] == "valid/sdr"  # ASHA, best and promotion use the primary
    single = spaces.load(write(tmp_path, {"metric": "valid/sdr/kick", "mode": "max"}))
    assert spaces.objectives(single.config) == [("valid/sdr/kick", "max")]
    three = spaces.load(write(tmp_path, TWO + [{"metric": "valid/sdr/bass"}]))
    assert spaces.objectives(three.config)[2] == ("valid/sdr/bass", "max")


@pytest.mark.parametrize("objective, message", [
    ([{"metric": "trainable_params", "mode": "min"}, TWO[0]],
     r"objective\[0\].metric: 'trainable_params'; expected one of .*may be further objectives, not the first"),
    ([TWO[0], {"metric": "trainable_params", "mode": "minimize"}], r"objective\[1\].mode: 'minimize'; expected max or min"),
    ([TWO[0], {"metric": "valid/sdr", "mode": "max"}], r"objective\[1\].metric: valid/sdr is already an objective"),
    ([TWO[0], {"metric": "adapter_size"}], r"objective\[1\].metric: 'adapter_size'; expected one of "),
    ([TWO[0], {"metric": "trainable_params", "goal": "min"}], r"objective\[1\].goal: unknown key; expected metric, mode"),
    ([], r"objective: expected a mapping \{metric, mode\} or a non-empty list of them"),
])
def test_bad_objectives_are_one_line_errors(tmp_path, objective, message):
    with pytest.raises(RankhouseError, match=message):
        spaces.load(write(tmp_path, objective))


def brute_force_front(points, modes):
    return {k for k, v in points.items()
            if not any(all((w_ >= v_) if m == "max" else (w_ <= v_) for w_, v_, m in zip(w, v, modes)) and w != v
                       for w in points.values())}


def test_the_front_is_exactly_the_non_dominated_points():
    rng = random.Random(0)
    for modes in (["max", "min"], ["min", "min"], ["max", "max", "min"]):
        for _ in range(50):
            # coarse values so ties and duplicates happen
            points = {i: tuple(rng.randint(0, 5) for _ in modes) for i in range(rng.randint(1, 12))}
            got = pareto.front(points, modes)
            assert set(got) == brute_force_front(points, modes)
            first = [points[k][0] for k in got]
            assert first == sorted(first, reverse=modes[0] == "max")  # best primary first
    assert pareto.front({"a": (1.0, float("nan")), "b": (0.5, 2.0)}, ["max", "min"]) == ["b"]


def searcher(tmp_path, metric, mode) -> BestEpochOptunaSearch:
    params = [spaces.Param(("lora", "rank"), "lora.rank", "choice", {"values": [2, 4, 8]}, {})]
    return BestEpochOptunaSearch(space=spaces.DefineByRun(params), metric=metric, mode=mode,
                                 sampler=optuna.samplers.RandomSampler(seed=0), study_name="mo",
                                 record=f"sqlite:///{tmp_path / 'optuna.db'}")


@pytest.mark.parametrize("multi", [False, True])
def test_optuna_is_told_the_best_epoch_not_the_last(tmp_path, multi):
    metric, mode = (["valid/sdr", "valid/loss"], ["max", "min"]) if multi else ("valid/sdr", "max")
    s = searcher(tmp_path, metric, mode)
    s.suggest("t0")
    epochs = [{"valid/sdr": 2.0, "valid/loss": 0.30, "training_iteration": 1},
              {"valid/sdr": 3.5, "valid/loss": 0.25, "training_iteration": 2},  # the best primary
              {"valid/sdr": 3.0, "valid/loss": 0.20, "training_iteration": 3}]
    for result in epochs:
        s.on_trial_result("t0", result)
    s.on_trial_complete("t0", result=epochs[-1])
    s.flush()  # the record is written on a thread of its own
    trial = optuna.load_study(study_name="mo", storage=f"sqlite:///{tmp_path / 'optuna.db'}").get_trials()[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.values == ([3.5, 0.25] if multi else [3.5])


def test_rank_grid_puts_depth_in_columns():
    rows, cols, cells = report.rank_grid({"encoder.0.conv": 8, "encoder.1.conv": 6, "encoder.0.rewrite": 8,
                                          "crosstransformer.layers.1.linear1": 16, "head": 2})
    assert rows == ["encoder.*.conv", "encoder.*.rewrite", "crosstransformer.layers.*.linear1", "head"]
    assert cols == ["0", "1", "-"]
    assert cells[("encoder.*.conv", "1")] == 6 and cells[("crosstransformer.layers.*.linear1", "1")] == 16
    assert cells[("head", "-")] == 2


def test_pareto_plot_of_a_summary(tmp_path):
    trials = [{"run_id": f"r{i}", "trial_id": f"t{i}", "status": "FINISHED",
               "objectives": {"valid/sdr": sdr, "trainable_params": n}}
              for i, (sdr, n) in enumerate([(3.0, 40_000), (2.0, 10_000), (1.5, 20_000), (3.2, 90_000)])]
    summary = {"study": "mo", "objective": TWO[0], "objectives": TWO, "base": {"metrics": {"valid/sdr": 0.5}},
               "trials": trials}
    points = {t["run_id"]: [t["objectives"][o["metric"]] for o in TWO] for t in trials}
    assert pareto.front(points, ["max", "min"]) == ["r3", "r0", "r1"]  # r2 is beaten by r1 on both
    summary["pareto"] = [trials[3], trials[0], trials[1]]
    path = report.pareto_plot(summary, tmp_path / "pareto.png")
    assert path.read_bytes().startswith(PNG)


@pytest.mark.slow
def test_a_multi_objective_search_returns_a_non_dominated_front(tmp_path):
    """Four real trials (tiny HT-Demucs, 2 epochs) maximising SDR and minimising trainable
    parameters: the summary's front is non-dominated, every other trial is dominated by it,
    Optuna's own front (told each trial's best epoch) is the same trials, and the parent run has
    the Pareto plot and the chosen trial's rank heatmap."""
    import torch

    from trainables import htdemucs, tracking

    kwargs = dict(audio_channels=2, channels=16, depth=4, nfft=4096, samplerate=22050, segment=2, t_layers=2,
                  bottom_channels=0)
    torch.manual_seed(0)
    base = tmp_path / "tiny.safetensors"
    htdemucs.save_checkpoint(htdemucs.new_model(htdemucs.EMBEDDED_SOURCES, kwargs), base, kwargs)
    doc = yaml.safe_load((ROOT / "search_spaces" / "techhouse.yaml").read_text())
    doc["objective"] = TWO
    doc["search"]["space"] = {"lora.rank": {"type": "choice", "values": [1, 2, 4, 8]},
                              "optim.lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3}}
    space = tmp_path / "techhouse_mo.yaml"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copytree(ROOT / "search_spaces" / "shared", tmp_path / "shared")  # its defaults: entry
    summary_file, work = tmp_path / "summary.json", tmp_path / "work"
    cmd = [sys.executable, "-m", "platform.tune", str(space), f"model.base={base}", "search.num_samples=4",
           "search.max_concurrent=2", "search.scheduler.type=fifo", "train.epochs=2", "train.steps_per_epoch=2",
           "train.batch_size=2", "data.segment=2.0", "train.valid_max_seconds=4.0", "data.embedded.songs=4",
           "data.embedded.seconds=6.0", "resources.cpus_per_worker=0.9", f"tracking.output={work}",
           "--json", str(summary_file)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "RANKHOUSE_HOME": str(tmp_path / "home")},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(summary_file.read_text())
    assert "Pareto front (" in proc.stdout
    done = [t for t in summary["trials"] if t["adapter"]]
    assert len(done) == 4 and summary["objectives"] == TWO
    modes = ["max", "min"]
    values = {t["run_id"]: (t["objectives"]["valid/sdr"], t["objectives"]["trainable_params"]) for t in done}
    front = [t["run_id"] for t in summary["pareto"]]
    assert front and set(front) == brute_force_front(values, modes)
    for a, b in itertools.permutations(front, 2):
        assert not pareto.dominates(values[a], values[b], modes)
    for other in set(values) - set(front):
        assert any(pareto.dominates(values[f], values[other], modes) for f in front)
    for t in done:  # SDR at the best epoch, the trial's own trainable-parameter count
        assert t["objectives"]["valid/sdr"] == pytest.approx(t["best"])
        assert t["objectives"]["trainable_params"] == t["trainable_params"] > 0
    assert summary["best"]["run_id"] in front  # the best SDR is always on the front

    ot = optuna.load_study(study_name=f"techhouse-{summary['parent_run_id']}", storage=f"sqlite:///{work / 'optuna.db'}")
    assert len(ot.directions) == 2
    told = {(t.params["lora.rank"], round(t.params["optim.lr"], 12)) for t in ot.best_trials}
    ours = {(t["config"]["lora.rank"], round(t["config"]["optim.lr"], 12)) for t in summary["pareto"]}
    assert told == ours

    client = tracking.client(summary["tracking_uri"])
    artifacts = {a.path for a in client.list_artifacts(summary["parent_run_id"], report.ARTIFACT_PATH)}
    assert {f"plots/{report.PARETO}.png", f"plots/{report.HEATMAP}.png"} <= artifacts
    assert client.get_run(summary["parent_run_id"]).data.metrics["pareto_size"] == len(front)
    for t in done:
        assert (client.get_run(t["run_id"]).data.tags.get(tags.PARETO) == "true") == (t["run_id"] in front)
    for name in (report.PARETO, report.HEATMAP):
        assert Path(summary["plots"][name]).read_bytes().startswith(PNG)
