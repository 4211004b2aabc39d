"""One trial: a Ray Tune function trainable that runs ``trainables.loop``.

Two executors share the loop, the reporting and the MLflow logging (``_run_loop``):

- ``train``: a Ray Train ``TorchTrainer`` (Train V2: ``Tuner(TorchTrainer)`` no longer works,
  so the Tune trial function builds the trainer and ``TuneReportCallback`` forwards reports).
  The Train run is named after the trial id, so a retried trial finds its checkpoints. Needed
  for several workers per trial (DDP).
- ``direct``: the loop runs in the Tune trial process itself, reporting through
  ``ray.tune.report``. For a single-worker trial this skips the Train controller, a second
  worker process (torch, PEFT and demucs imported again) and the process group, which cost
  ~15-30 s per trial (``benchmarks/trial_overhead.py``).

``resources.executor: auto`` picks ``direct`` for one worker and ``train`` otherwise. This module
runs in Ray workers, so it lives in ``trainables`` (never ``platform``).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from trainables import checkpoint, objective, schema, tags, tracking
from trainables.errors import TrialFailed

# ``trainables.loop`` (PEFT, which imports transformers: ~5 s) and torch are imported where a
# trial trains, not here: this module is the trial process's entry point and a search's
# bookkeeping needs none of it (benchmarks/scale.py keeps 64 trial processes side by side)
if TYPE_CHECKING:
    import torch

    from trainables import loop

PREVIEW_PATH = "preview"  # the run's artifact folder of a task's preview


def pin_threads(resources: dict) -> None:
    """As many torch threads as the trial holds CPUs, set explicitly: Ray's OMP_NUM_THREADS only
    reaches torch if torch is imported after it is set, and concurrent trials with a thread per
    core each fight over the cores (make demo ran 2x slower when that happened)."""
    import torch

    torch.set_num_threads(max(1, round(float(resources["cpus_per_worker"]))))


def executor(resources: dict) -> str:
    chosen = resources.get("executor", "auto")
    if chosen == "auto":
        return "direct" if int(resources["workers_per_trial"]) == 1 else "train"
    return chosen


def trial_resources(resources: dict, trial_function_cpu: float) -> dict:
    """What the Tune trial function itself holds: the whole trial for ``direct``, a sliver for
    ``train`` (its workers hold their own; zero is refused by Ray)."""
    if executor(resources) == "direct":
        return {"cpu": float(resources["cpus_per_worker"]), "gpu": float(resources["gpus_per_worker"])}
    return {"cpu": trial_function_cpu}


def direct_device(resources: dict) -> torch.device:
    """A direct trial's device, with torch's threads pinned to the CPUs the trial holds."""
    import torch

    pin_threads(resources)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run_name(trial_id: str, cfg: dict) -> str:
    """What the MLflow UI lists a trial as: ``<trial id> r<rank> lr<lr>`` (``full`` without LoRA)."""
    lora_cfg = cfg.get("lora")
    rank = f"r{lora_cfg['rank']}" if lora_cfg else "full"
    return f"{trial_id} {rank} lr{cfg['optim']['lr']:.2g}"


def run_trial(sample: dict, study: dict) -> None:
    """Tune function trainable: one trial. ``sample`` is the searcher's, nested in the config
    sections it belongs in (``platform.spaces.SampleToConfig``); the trial's config is the
    study's fixed one with the sample laid over it."""
    import ray.train
    import ray.tune

    ctx = ray.tune.get_context()
    cfg = schema.overlay(study["config"], sample)
    t = study["tracking"]
    mlflow = tracking.client(t["uri"])
    run_id, found = tracking.child_run(mlflow, t["experiment_id"], t["parent_id"], study["name"],
                                       ctx.get_trial_id(), run_name(ctx.get_trial_id(), cfg))
    if found == "FINISHED":
        # restored by --resume after the driver died between the trial's end and Tune saving it:
        # the trial is complete (MLflow has every epoch and its adapter); nothing is trained again
        return
    tracking.log_params(mlflow, run_id, {**tracking.flatten({k: v for k, v in cfg.items() if k != "data"}),
                                         **{f"sampled.{k}": v for k, v in tracking.flatten(sample).items()}})
    # a run found again (a retry or a resumed study) may hold epochs already: the loop reads them.
    # Ray Train retries its workers with this same config, so only a direct trial's run is known new
    direct = executor(cfg["resources"]) == "direct"
    loop_config = {"cfg": cfg, "uri": t["uri"], "run_id": run_id, "train_fn": study.get("train_fn"),
                   "new_run": found is None and direct,
                   # a Ray Train worker's report is not where Tune ends the trial
                   "close_when_ended": direct and study.get("close_when_ended", False)}
    try:
        if direct:
            # a training function other than the loop (a benchmark's) gets no device: its trial
            # process never imports torch
            device = None if study.get("train_fn") else direct_device(cfg["resources"])
            _run_loop(loop_config, ray.tune.report, ray.tune.get_checkpoint(), ray.tune.Checkpoint, 0, device)
        else:
            _fit_train(loop_config, cfg, study, ctx.get_trial_id())
    except (ray.train.TrainingFailedError, TrialFailed) as exc:
        # the training itself failed. Other exceptions come from Tune tearing the trial down
        # (an early stop): the driver closes those runs from what they logged.
        tracking.fail_run(mlflow, run_id, exc)
        raise
    tracking.end_run(mlflow, run_id, complete=True)


def _fit_train(loop_config: dict, cfg: dict, study: dict, trial_id: str) -> None:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    r = cfg["resources"]
    gpus = float(r["gpus_per_worker"])
    trainer = TorchTrainer(
        train_loop_per_worker=worker_main,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=int(r["workers_per_trial"]), use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": float(r["cpus_per_worker"]), "GPU": gpus}),
        run_config=RunConfig(
            name=f"{study['name']}-{trial_id}",
            storage_path=study["storage_path"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=int(r["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()


def worker_main(config: dict) -> None:
    """``train_loop_per_worker`` of the ``train`` executor."""
    import ray.train
    import ray.train.torch

    pin_threads(config["cfg"]["resources"])
    ctx = ray.train.get_context()
    prepare = ray.train.torch.prepare_model if ctx.get_world_size() > 1 else None
    _run_loop(config, ray.train.report, ray.train.get_checkpoint(), ray.train.Checkpoint,
              ctx.get_world_rank(), ray.train.torch.get_device(), prepare)


def log_preview(mlflow, run_id: str, setup: loop.Setup | None, metrics: dict, device: torch.device) -> None:
    """Log the task's preview of the best epoch (e.g. an audio excerpt and a chart) under
    ``preview/``, replacing an earlier epoch's. Listening material is a nicety: if it fails, the
    run gets a warning tag and the trial goes on."""
    try:
        if setup is None or setup.valid is None:
            raise RuntimeError("the loop reported before its setup and validation data were known")
        with tempfile.TemporaryDirectory() as tmp:
            if not setup.task.preview(setup.model, setup.valid, setup.cfg, setup.base, metrics, Path(tmp), device):
                return
            mlflow.log_artifacts(run_id, tmp, PREVIEW_PATH)
        mlflow.set_tag(run_id, tags.PREVIEW_EPOCH, str(metrics["epoch"]))
    except Exception as exc:  # any failure here must not cost the trial
        mlflow.set_tag(run_id, tags.PREVIEW_WARNING,
                       f"epoch {metrics.get('epoch')}: {type(exc).__name__}: {' '.join(str(exc).split())}"[:4000])


def note_restart(mlflow, run_id: str, epoch: int) -> None:
    """Tags of a retried trial. Its MLflow history then holds the epochs the lost attempt logged
    after its last checkpoint, and the same epochs again from the retry: steps stay in order and
    ``tracking.epochs`` keeps the retry's value of each."""
    restarts = int(mlflow.get_run(run_id).data.tags.get(tags.RESTARTS, "0")) + 1
    mlflow.set_tag(run_id, tags.RESTARTS, str(restarts))
    mlflow.set_tag(run_id, tags.RESUMED_FROM_EPOCH, str(epoch))


def _run_loop(config: dict, ray_report: Callable, resume, checkpoint_cls, rank: int, device: torch.device,
              prepare: Callable | None = None) -> None:
    """The loop with Ray reporting and (rank 0 only) MLflow logging and checkpoints, for either executor."""
    cfg, run_id = config["cfg"], config["run_id"]
    rank0 = rank == 0
    mlflow = tracking.client(config["uri"]) if rank0 else None
    metric, mode = cfg["objective"]["metric"], cfg["objective"]["mode"]
    # a resumed trial keeps comparing against the best epoch it logged before
    logged = list(tracking.epochs(mlflow, run_id, metric).values()) if rank0 and not config.get("new_run") else []
    best = {"value": objective.best(logged, mode)}
    setups: list[loop.Setup] = []  # kept by ``describe``: the preview needs the model and the valid split
    costs: dict[str, int] = {}  # trainable_params, adapter_bytes: filled by ``describe``
    # ``loop.train`` unless the search passed another function of the same signature
    # (benchmarks/scheduling.py measures the platform's bookkeeping around a trivial one, which
    # must not pay for the loop's imports: PEFT and transformers, ~5 s of CPU per trial process)
    train = config.get("train_fn")
    if train is None:
        from trainables import loop

        train = loop.train

    # An epoch's metrics go to MLflow on a writer thread, off the epoch's critical path
    # (benchmarks/scheduling.py). At most one write is in flight: before an epoch's checkpoint
    # reaches Tune, the earlier epochs' metrics are in the store, and this epoch's are in the
    # checkpoint (its STATE), which a retry resumed from it logs again if they never landed.
    in_flight: list = []

    def settle() -> None:
        while in_flight:
            in_flight.pop(0).result()

    def log_epoch(metrics: dict, folder: Path, wait: bool) -> None:
        value = metrics.get(metric)
        better = objective.better(value, best["value"], mode)
        if better:  # the adapter at the best epoch is the trial's artifact, logged before the tag names it
            best["value"] = value
            mlflow.log_artifacts(run_id, str(folder / checkpoint.ADAPTER), "adapter")
        settle()
        write = tracking.log_metrics(mlflow, run_id, metrics, step=int(metrics["epoch"]), wait=wait,
                                     run_tags={tags.BEST_EPOCH: metrics["epoch"]} if better else None)
        if write is not None:
            in_flight.append(write)
        if better and setups:  # a training function that describes no model has nothing to listen to
            log_preview(mlflow, run_id, setups[-1], metrics, device)

    def report(metrics: dict, folder: Path) -> None:
        if rank0:
            log_epoch(metrics, folder, wait=False)
        try:
            # what the adapter costs rides along every report: a multi-objective search may minimise it
            ray_report({**metrics, **costs}, checkpoint=checkpoint_cls.from_directory(str(folder)) if rank0 else None)
        except SystemExit:
            # Tune ended the trial at this report (its scheduler stopped it, or this was the last
            # epoch): Ray's report exits the trial's thread, and Tune waits for it (up to
            # TUNE_FUNCTION_THREAD_TIMEOUT_S) before the process runs another trial. The run is
            # closed here, with its epochs in the store; the driver closes what this misses, so a
            # store that fails here must not turn Tune's stop into the trial's error.
            if rank0 and config.get("close_when_ended"):
                with contextlib.suppress(Exception):
                    settle()
                    tracking.end_run(mlflow, run_id, complete=int(metrics["epoch"]) >= int(cfg["train"]["epochs"]))
            raise

    def describe(setup: loop.Setup) -> None:
        setups.append(setup)
        if not rank0:
            return
        import ray.util
        import torch

        from trainables import bundle, lora

        info = {"trainable_params": lora.trainable_parameters(setup.model), "base.name": setup.base.identity["name"],
                "base.sha256": setup.base.identity["sha256"], "modules_to_save": ",".join(setup.modules_to_save),
                "lora.adapted_modules": len(setup.ranks),
                "torch_threads": torch.get_num_threads()}
        with tempfile.TemporaryDirectory() as tmp:  # the adapter's size on disk, as it will be logged
            info["adapter_bytes"] = (lora.save(setup.model, Path(tmp)) / "adapter_model.safetensors").stat().st_size
        costs.update(trainable_params=info["trainable_params"], adapter_bytes=info["adapter_bytes"])
        # which process trains (tags: a retried trial runs in another process); for operators
        # and for the fault-tolerance test that kills it
        tracking.log_params(mlflow, run_id, {**info, **{f"rank.{m}": r for m, r in setup.ranks.items()}},
                            run_tags={tags.PID: os.getpid(), tags.NODE: ray.util.get_node_ip_address()})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "ranks.json").write_text(json.dumps(setup.ranks, indent=1))
            mlflow.log_artifact(run_id, str(Path(tmp) / "ranks.json"))
            # the adapter artifact is a bundle: the adapter (logged at the best epoch) and what it needs
            (Path(tmp) / bundle.MANIFEST).write_text(json.dumps(bundle.manifest(setup), indent=1))
            mlflow.log_artifact(run_id, str(Path(tmp) / bundle.MANIFEST), checkpoint.ADAPTER)

    if resume is None:
        if rank0 and logged:  # a retried trial whose first attempt died before any checkpoint
            note_restart(mlflow, run_id, 0)
        train(cfg, report, device=device, prepare_model=prepare, on_setup=describe, rank=rank)
    else:
        with resume.as_directory() as folder:
            state = json.loads((Path(folder) / checkpoint.STATE).read_text())
            if rank0:
                note_restart(mlflow, run_id, state["epoch"])
                resumed = state.get("metrics")
                # the last attempt died with this epoch's write in flight: logged as it reported it
                if resumed and int(resumed["epoch"]) not in tracking.epochs(mlflow, run_id, metric):
                    log_epoch(resumed, Path(folder), wait=True)
            train(cfg, report, resume_from=Path(folder), device=device, prepare_model=prepare,
                  on_setup=describe, rank=rank)
    # every epoch in the store before the run is marked finished. A trial that raised (Tune's
    # stop, a failure) does not wait: its write goes on in this process's MLflow thread, and the
    # driver logs a last report still missing when it closes the run (platform.tune)
    settle()
