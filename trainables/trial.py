"""One trial: a Ray Tune function trainable that runs ``trainables.loop`` as a Ray Train job.

Ray 2.60 runs Train V2, where ``Tuner(TorchTrainer)`` no longer works: the Tune trial function
builds a ``TorchTrainer`` itself and Train reports back to Tune through ``TuneReportCallback``.
The Train run is named after the trial id, so a retried trial finds its checkpoints. This
module runs in Ray workers, so it lives in ``trainables`` (never ``platform``).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from trainables import checkpoint, loop, tracking


def merge(config: dict, sampled: dict, paths: dict[str, list[str]]) -> dict:
    import copy

    out = copy.deepcopy(config)
    for key, value in sampled.items():
        node = out
        path = paths[key]
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def run_trial(sampled: dict, study: dict) -> None:
    """Tune function trainable: one Train run for the sampled configuration."""
    import ray.train
    import ray.tune
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    ctx = ray.tune.get_context()
    cfg = merge(study["config"], sampled, study["paths"])
    t = study["tracking"]
    mlflow = tracking.client(t["uri"])
    run_id = tracking.child_run(mlflow, t["experiment_id"], t["parent_id"], study["name"], ctx.get_trial_id(),
                                ctx.get_trial_name())
    tracking.log_params(mlflow, run_id, {**tracking.flatten({k: v for k, v in cfg.items() if k != "data"}),
                                         **{f"sampled.{k}": v for k, v in sampled.items()}})
    r = cfg["resources"]
    gpus = float(r["gpus_per_worker"])
    trainer = TorchTrainer(
        train_loop_per_worker=worker_main,
        train_loop_config={"cfg": cfg, "uri": t["uri"], "run_id": run_id},
        scaling_config=ScalingConfig(num_workers=int(r["workers_per_trial"]), use_gpu=gpus > 0,
                                     resources_per_worker={"CPU": float(r["cpus_per_worker"]), "GPU": gpus}),
        run_config=RunConfig(
            name=f"{study['name']}-{ctx.get_trial_id()}",
            storage_path=study["storage_path"],
            callbacks=[TuneReportCallback()],
            failure_config=FailureConfig(max_failures=int(r["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as exc:
        # the training itself failed. Other exceptions come from Tune tearing the trial down
        # (an early stop): the driver closes those runs from what they logged.
        mlflow.set_tag(run_id, "rankhouse.failure", " ".join(str(exc).split())[:4000])
        mlflow.set_terminated(run_id, status="FAILED")
        raise
    mlflow.set_terminated(run_id, status="FINISHED")


def worker_main(config: dict) -> None:
    """``train_loop_per_worker``: the shared loop, reporting to Ray Train; rank 0 logs to MLflow."""
    import ray.train
    import ray.train.torch

    cfg, run_id = config["cfg"], config["run_id"]
    ctx = ray.train.get_context()
    rank0 = ctx.get_world_rank() == 0
    mlflow = tracking.client(config["uri"]) if rank0 else None
    best = {"value": None}
    metric, mode = cfg["objective"]["metric"], cfg["objective"]["mode"]

    def report(metrics: dict, folder: Path) -> None:
        if rank0:
            tracking.log_metrics(mlflow, run_id, metrics, step=int(metrics["epoch"]))
            value = metrics.get(metric)
            better = value is not None and math.isfinite(value) and (
                best["value"] is None or (value > best["value"] if mode == "max" else value < best["value"]))
            if better:  # the adapter at the best epoch is the trial's artifact
                best["value"] = value
                mlflow.log_artifacts(run_id, str(folder / checkpoint.ADAPTER), "adapter")
                mlflow.set_tag(run_id, "rankhouse.best_epoch", str(metrics["epoch"]))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

    def describe(setup: loop.Setup) -> None:
        if not rank0:
            return
        from trainables import lora

        info = {"trainable_params": lora.trainable_parameters(setup.model), "base.name": setup.base.identity["name"],
                "base.sha256": setup.base.identity["sha256"], "modules_to_save": ",".join(setup.modules_to_save),
                "lora.adapted_modules": len(setup.ranks)}
        tracking.log_params(mlflow, run_id, {**info, **{f"rank.{m}": r for m, r in setup.ranks.items()}})
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "ranks.json").write_text(json.dumps(setup.ranks, indent=1))
            mlflow.log_artifact(run_id, str(Path(tmp) / "ranks.json"))

    resume = ray.train.get_checkpoint()
    prepare = ray.train.torch.prepare_model if ctx.get_world_size() > 1 else None
    if resume is None:
        loop.train(cfg, report, device=ray.train.torch.get_device(), prepare_model=prepare, on_setup=describe)
    else:
        with resume.as_directory() as folder:
            loop.train(cfg, report, resume_from=Path(folder), device=ray.train.torch.get_device(),
                       prepare_model=prepare, on_setup=describe)
