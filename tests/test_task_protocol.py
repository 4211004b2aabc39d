"""A model that does not separate anything, searched and promoted with no change to rankhouse.

The task and the family live in this module only, as a user's own would in their package:
``MoodTask`` classifies 16-dim feature vectors into moods (its dataset: ``train/`` and
``valid/`` folders holding ``data.npz``), ``MLPFamily`` is a tiny MLP whose base was fitted to
other labels. A real search (``python -m platform.tune``, Ray, Optuna, MLflow) optimises the
task's own metric, ``valid/accuracy``, and ``python -m platform.promote`` gates on the task's
holdout score, in its own unit (accuracy points). Ray's workers import this module by its name
(``model.family: test_task_protocol:MLPFamily``), found on PYTHONPATH.

Module-level imports stay light (no ``platform``): Ray workers import this module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trainables.checkpoint import sha256
from trainables.errors import RankhouseError
from trainables.family import Base, Family
from trainables.schema import Key
from trainables.task import Metric, Task

ROOT = Path(__file__).resolve().parents[1]
FEATURES, HIDDEN = 16, 32
MOODS = ["calm", "driving", "dark", "euphoric"]


class Split:
    """An opened split: feature vectors and their mood labels."""

    def __init__(self, folder: Path):
        with np.load(folder / "data.npz") as z:
            self.x, self.y = z["x"].astype(np.float32), z["y"].astype(np.int64)

    def __len__(self) -> int:
        return len(self.y)


class Draws:
    """Random training batches, with a checkpointable random state."""

    def __init__(self, split: Split, seed: int):
        self.split, self.rng = split, np.random.default_rng(seed)

    def sample(self, batch_size: int) -> tuple:
        i = self.rng.integers(0, len(self.split), batch_size)
        return self.split.x[i], self.split.y[i]

    def state(self):
        return self.rng.bit_generator.state

    def set_state(self, state) -> None:
        self.rng.bit_generator.state = state


def accuracy(model: nn.Module, split: Split, device="cpu") -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(split.x).to(device)).cpu()
    y = torch.from_numpy(split.y)
    return float(nn.functional.cross_entropy(logits, y)), 100.0 * float((logits.argmax(1) == y).float().mean())


class MoodTask(Task):
    name = "mood"
    score = "accuracy"
    score_label = "holdout accuracy"
    score_metric = Metric("max", "%", "share of holdout vectors whose mood is right")
    default_objective = "valid/accuracy"
    options = {"data": {"moods": Key(MOODS, "the label vocabulary, in label order", type=list)}}

    def metrics(self, cfg: dict) -> dict[str, Metric]:
        return {"train/loss": Metric("min", "", "cross-entropy, training batches"),
                "valid/loss": Metric("min", "", "cross-entropy, valid split"),
                "valid/accuracy": Metric("max", "%", "share of valid vectors whose mood is right")}

    def check(self, cfg: dict, progress=None) -> None:
        for split in ("train", "valid"):
            path = Path(cfg["data"]["root"]) / split / "data.npz"
            if not path.is_file():
                raise RankhouseError(f"{path}: missing; write x (N, {FEATURES}) and y (N,) with numpy.savez")
            y = Split(path.parent).y
            if y.min() < 0 or y.max() >= len(cfg["data"]["moods"]):
                raise RankhouseError(f"{path}: y: labels outside 0..{len(cfg['data']['moods']) - 1} (data.moods)")

    def open(self, cfg: dict, base, split: str, progress=None) -> Split:
        return Split(Path(cfg["data"]["root"]) / split)

    def batches(self, data: Split, cfg: dict, base, seed: int) -> Draws:
        return Draws(data, seed)

    def loss(self, model: nn.Module, batch: tuple, cfg: dict) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module, data: Split, cfg: dict, base, device) -> dict:
        loss, acc = accuracy(model, data, device)
        return {"valid/loss": loss, "valid/accuracy": acc}

    def manifest(self, cfg: dict, base) -> dict:
        return {"moods": list(cfg["data"]["moods"])}

    def outputs(self, info: dict) -> list[str]:
        return info["moods"]

    def open_holdout(self, info: dict, root: Path, split: str, progress=None) -> Split:
        return Split(Path(root) / split)

    def score_holdout(self, models, data, info, max_seconds, workers, progress=None) -> dict:
        return {label: {"accuracy": accuracy(model, data)[1]} for label, model in models.items()}


def mlp(hidden: int = HIDDEN) -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, len(MOODS)))


class MLPFamily(Family):
    name = "mood_mlp"
    task = MoodTask()
    options = {"model": {"hidden": Key(HIDDEN, "the MLP's hidden width (the base's)", rule=lambda v: v >= 1,
                                       expect="an integer >= 1")}}

    def build_base(self, cfg: dict) -> Base:
        path = self.resolve_base(cfg["base"])
        if not isinstance(path, Path):
            raise RankhouseError(f"model.base: {cfg['base']!r}; this family loads a .safetensors file")
        model = mlp(cfg["hidden"])
        model.load_state_dict(load_file(str(path)))
        return Base(model=model.eval(), identity={"name": path.name, "sha256": sha256(path)})


# --- data: moods are a linear function of the features; the base learnt another one ------------

def labels(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x @ w).argmax(axis=1)


def write_split(folder: Path, n: int, w: np.ndarray, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)
    folder.mkdir(parents=True)
    np.savez(folder / "data.npz", x=x, y=labels(x, w))


def fitted_base(path: Path, w: np.ndarray) -> None:
    """A base that knows features -> *other* moods (labels from ``w``): a pretrained model whose
    head is wrong for the task, as a base for another tagging vocabulary would be."""
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(2048, FEATURES, generator=torch.Generator().manual_seed(1))
    y = torch.from_numpy(labels(x.numpy(), w))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


SPACE = """
study: moods
model: {{family: "test_task_protocol:MLPFamily", base: {base}}}
data: {{root: {data}}}
train: {{epochs: 3, steps_per_epoch: 30, batch_size: 32, seed: 0}}
lora: {{rank: 4, alpha: 8.0}}
optim: {{schedule: constant, grad_clip: 0.0}}
search:
  num_samples: 2
  max_concurrent: 1
  scheduler: {{type: fifo}}
  space:
    optim.lr: {{type: choice, values: [0.003, 0.01]}}
resources: {{cpus_per_worker: 0.9}}
tracking: {{output: {out}}}
registry:
  model_name: moods-mlp
  min_gain: 5.0
  holdout: {{root: {holdout}, split: test}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("moods")
    rng = np.random.default_rng(7)
    task_w, base_w = rng.standard_normal((FEATURES, len(MOODS))), rng.standard_normal((FEATURES, len(MOODS)))
    write_split(work / "data" / "train", 2000, task_w, 1)
    write_split(work / "data" / "valid", 400, task_w, 2)
    write_split(work / "holdout" / "test", 400, task_w, 3)
    fitted_base(work / "base.safetensors", base_w)
    space = work / "moods.yaml"
    space.write_text(SPACE.format(base=work / "base.safetensors", data=work / "data", out=work / "out",
                                  holdout=work / "holdout"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    return work, space, env


def run(env: dict, module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_the_space_is_checked_against_the_task_before_anything_runs(study):
    from platform import spaces

    work, space, env = study
    loaded = spaces.load(space)
    assert loaded.task.name == "mood"
    assert loaded.config["objective"] == {"metric": "valid/accuracy", "mode": "max", "also": None}
    assert loaded.config["data"]["moods"] == MOODS  # the task's own option, with its default
    assert loaded.config["model"]["hidden"] == HIDDEN  # and the family's
    with pytest.raises(RankhouseError, match=r"model.hidden: 0; expected an integer >= 1"):
        spaces.load(space, ["+model.hidden=0"])
    with pytest.raises(RankhouseError, match=r"objective.metric: 'valid/sdr'; expected one of train/loss, "
                                             r"valid/accuracy, valid/loss \(the mood task's metrics\)"):
        spaces.load(space, ["+objective.metric=valid/sdr"])
    with pytest.raises(RankhouseError, match=r"data.moods: expected a list, got 'calm'"):
        spaces.load(space, ["+data.moods=calm"])
    with pytest.raises(RankhouseError, match=r"data.segment: unknown key"):  # separation's keys are not the task's
        spaces.load(space, ["+data.segment=3.0"])
    missing = work / "missing.yaml"
    missing.write_text(space.read_text().replace("test_task_protocol:MLPFamily", "test_task_protocol:Nope"))
    with pytest.raises(RankhouseError, match=r"model.family: test_task_protocol:Nope: test_task_protocol has no Nope"):
        spaces.load(missing)


def test_platform_data_check_checks_a_study_by_its_task(study, tmp_path):
    import shutil

    work, space, env = study
    good = run(env, "platform.data", "check", space)
    assert good.returncode == 0 and "no errors (mood data of study moods)" in good.stdout, good.stderr
    broken = tmp_path / "data"
    shutil.copytree(work / "data", broken)
    (broken / "valid" / "data.npz").unlink()
    bad = run(env, "platform.data", "check", space, f"data.root={broken}")
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"rankhouse: error: {broken / 'valid' / 'data.npz'}: missing; write x (N, 16) and y " \
                                 "(N,) with numpy.savez"


@pytest.mark.slow
def test_a_search_of_a_task_of_ones_own_reaches_mlflow_and_is_promoted_on_its_holdout_metric(study):
    import mlflow

    work, space, env = study
    proc = run(env, "platform.tune", space, "--json", work / "summary.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["objective"] == {"metric": "valid/accuracy", "mode": "max"}
    base = summary["base"]["metrics"]["valid/accuracy"]
    assert len(summary["trials"]) == 2 and all(t["status"] == "FINISHED" for t in summary["trials"])
    best = summary["best"]
    # the adapter learnt the task: far above the base, whose head was fitted to other labels
    assert best["best"] > base + 20, (base, best["best"])
    client = mlflow.MlflowClient(summary["tracking_uri"])
    history = client.get_metric_history(best["run_id"], "valid/accuracy")
    assert [m.step for m in history] == [1, 2, 3] and max(m.value for m in history) == pytest.approx(best["best"])
    files = {f.path for f in client.list_artifacts(best["run_id"], "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/rankhouse.json"} <= files

    proc = run(env, "platform.promote", space, "--json", work / "promote.json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    decision = json.loads((work / "promote.json").read_text())
    assert decision["decision"] == "promoted" and decision["reference"]["label"] == "base (no adapter)"
    assert decision["score"] == "accuracy" and decision["unit"] == "%"
    cand, ref = decision["candidate"]["holdout"]["accuracy"], decision["reference"]["holdout"]["accuracy"]
    assert decision["gain"] == pytest.approx(cand - ref) and decision["gain"] >= 5.0
    assert "holdout accuracy" in proc.stdout and "needs >= 5" in proc.stdout
    version = client.get_model_version_by_alias("moods-mlp", "champion")
    assert version.run_id == best["run_id"]
    # a second promotion of the same run is refused: nothing to do
    again = run(env, "platform.promote", space)
    assert again.returncode == 2 and "already moods-mlp@champion" in again.stderr
