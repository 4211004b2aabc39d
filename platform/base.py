"""``python -m platform.base [--family NAME]``: train a family's embedded base (HT-Demucs by
default) to a plateau and write it, with its model card, to ``trainables/assets/``.

Why a plateau: an undertrained base gains from *any* further training, so an adapter's gain
over it would prove nothing. The base trains fully (no LoRA) on the task's embedded corpus of
the ``generic`` preset (a domain different from the tech-house target; ``Task.base_study``
says what the run reads) until the task's default objective (separation: valid nSDR) has not
improved by ``--min-delta`` for ``--patience`` epochs; the best epoch is kept. If
``--max-minutes`` runs out first, the card says so. ``--resume`` continues an earlier run from
its best weights (typically at a lower ``--lr``, the usual step-down once a constant rate stops
paying), keeping one curve and one plateau count across both stages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from platform.cli import run
from platform.data import Progress
from trainables import checkpoint, loop, schema
from trainables.errors import RankhouseError
from trainables.family import FAMILIES, Family, get_family


def study(family: Family, preset: str, args) -> dict:
    """The base run's config on the embedded ``preset`` corpus (its data made, its paths
    resolved, the task's derived settings filled in): the task's ``base_study`` under the run's
    training settings."""
    task = family.task
    cfg = schema.overlay({
        "model": {"family": family.name, "base": "scratch"},
        "lora": None,
        "optim": {"lr": args.lr, "schedule": "constant", "grad_clip": 5.0},
        "train": {"epochs": 10_000, "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
                  "seed": args.seed},
    }, task.base_study(preset))
    if args.valid_seconds is not None:
        cfg["train"]["valid_max_seconds"] = args.valid_seconds or None
    if preset == "generic":
        cfg["data"]["embedded"].update({k: v for k, v in (("songs", args.songs), ("seed", args.data_seed))
                                        if v is not None})
    cfg = loop.complete(cfg)
    cfg["data"]["root"] = str(task.embedded(cfg["data"]["embedded"], Progress))
    task.resolve(cfg)
    return cfg


def score(family: Family, model_path: Path, cfg: dict) -> dict:
    """Every metric of a base checkpoint on whole valid items of ``cfg``'s corpus."""
    base = family.build_base({**cfg["model"], "base": str(model_path)})
    base.model.eval().requires_grad_(False)
    cfg = schema.overlay(cfg, {"train": {"valid_max_seconds": None}})
    valid = family.task.open(cfg, base, "valid", Progress)
    return family.task.evaluate(base.model, valid, cfg, base, torch.device("cpu"))


def cards(out: Path) -> tuple[Path, Path]:
    """The model card beside an asset: ``X.safetensors`` -> ``X.json`` and ``X.md``."""
    return out.with_suffix(".json"), out.with_suffix(".md")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m platform.base", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=sorted(FAMILIES), default="htdemucs")
    p.add_argument("--songs", type=int, default=None, help="generic songs rendered (default: the task's)")
    p.add_argument("--data-seed", type=int, default=None, help="the generic corpus' seed (default: the task's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--valid-seconds", type=float, default=None,
                   help="validate on this much of each valid item, 0: all (default: the task's)")
    p.add_argument("--patience", type=int, default=8, help="epochs without improvement that make a plateau")
    p.add_argument("--min-delta", type=float, default=0.05,
                   help="what counts as an improvement, in the objective's unit (separation: dB)")
    p.add_argument("--max-minutes", type=float, default=105.0)
    p.add_argument("--work", type=Path, default=Path("runs/base"))
    p.add_argument("--out", type=Path, default=None, help="default: the family's embedded asset")
    p.add_argument("--resume", action="store_true",
                   help="continue --work's run from its best weights and curve (use a new --seed and a lower --lr)")
    p.add_argument("--init", type=Path,
                   help="start from these weights (a base checkpoint of this architecture) instead of a new model")
    p.add_argument("--finalize", action="store_true",
                   help="write the asset and card from --work's best checkpoint and curve of an interrupted run")
    args = p.parse_args(argv)
    family = get_family(args.family)
    args.out = args.out or family.embedded
    if args.out is None:
        raise RankhouseError(f"--family {args.family}: the family has no embedded asset; pass --out PATH.safetensors")
    if args.init and args.resume:
        raise RankhouseError("--init and --resume: a resumed run starts from its own best weights; pass one of them")
    if args.init and not args.init.is_file():
        raise RankhouseError(f"--init {args.init}: no such file")

    cfg = study(family, "generic", args)
    metric, sign = family.task.default_objective, objective_sign(family, cfg)
    best_path = args.work / "best.safetensors"
    train_argv = [a for a in argv if a != "--finalize"]
    if args.finalize:
        if not best_path.is_file() or not (args.work / "curve.json").is_file():
            raise RankhouseError(f"{args.work}: no best.safetensors/curve.json of a base run to finalize")
        curve = json.loads((args.work / "curve.json").read_text())
        minutes = curve[-1]["minutes"] if curve else 0.0
        why = f"interrupted by hand after {minutes:g} min (this session's time), before a plateau"
        return finalize(family, args, train_argv, cfg, curve, why, minutes)
    args.work.mkdir(parents=True, exist_ok=True)
    curve, best, offset = resume_state(args, sign) if args.resume else ([], {"value": -float("inf"), "epoch": 0}, {})
    started = time.time() - 60 * offset.get("minutes", 0.0)
    stop_reason = {"why": "plateau"}

    def load_best(setup) -> None:
        if args.resume:
            setup.model.load_state_dict(load_file(str(best_path)))
        elif args.init:
            setup.model.load_state_dict(initial_weights(args.init))

    def report(metrics: dict, folder: Path) -> bool:
        minutes = (time.time() - started) / 60
        metrics = {**metrics, "epoch": metrics["epoch"] + offset.get("epoch", 0),
                   "step": metrics["step"] + offset.get("step", 0)}
        value = metrics[metric]
        curve.append({"epoch": metrics["epoch"], "step": metrics["step"], "minutes": round(minutes, 2),
                      "lr": args.lr, "train_loss": round(metrics["train/loss"], 5), "valid": round(value, 4)})
        # Keras' min_delta rule: the bar moves only on a counted improvement, so a steady creep
        # of less than min_delta per epoch still counts once it adds up to min_delta
        # (on sign * value: a minimised objective's fall counts as a rise)
        improved = sign * value > best.get("bar", -float("inf")) + args.min_delta
        if sign * value > best["value"]:
            shutil.copy(folder / checkpoint.MODEL, best_path)
            best.update(value=sign * value, epoch=metrics["epoch"], step=metrics["step"])
        if improved:
            best.update(improved_epoch=metrics["epoch"], bar=sign * value)
        print(f"epoch {metrics['epoch']:4d} step {metrics['step']:6d} {minutes:6.1f} min  "
              f"train/loss {metrics['train/loss']:.4f}  {metric} {value:.4f}  "
              f"(best {sign * best['value']:.4f} @ {best['epoch']})", flush=True)
        (args.work / "curve.json").write_text(json.dumps(curve))
        if metrics["epoch"] - best.get("improved_epoch", 0) >= args.patience:
            return True
        if minutes >= args.max_minutes:
            stop_reason["why"] = f"time budget ({args.max_minutes:g} min) before a plateau"
            return True
        return False

    loop.train(cfg, report, on_setup=load_best)
    return finalize(family, args, train_argv, cfg, curve, stop_reason["why"], (time.time() - started) / 60)


def initial_weights(path: Path) -> dict:
    """``--init``'s weights. A BS-RoFormer base written for the ``bs-roformer`` package's modules
    (before rankhouse computed what MSST computes) is mapped onto MSST's keys: blocks leave their
    hyper-connection wrapper (``.branch.``) and the value-residual gates, which MSST lacks, are
    dropped. Its function changes, so such weights are only a starting point."""
    state = load_file(str(path))
    return {k.replace(".branch.", "."): v for k, v in state.items() if ".to_value_residual_mix." not in k}


def objective_sign(family: Family, cfg: dict) -> float:
    """+1 when the task's default objective rises as the model improves, -1 when it falls."""
    return 1.0 if family.task.metrics(cfg)[family.task.default_objective].mode == "max" else -1.0


def resume_state(args, sign: float) -> tuple[list[dict], dict, dict]:
    """The curve, best epoch and epoch/step/minute offsets of the run in ``--work``."""
    best_path, curve_path = args.work / "best.safetensors", args.work / "curve.json"
    if not best_path.is_file() or not curve_path.is_file():
        raise RankhouseError(f"{args.work}: no best.safetensors/curve.json of a base run to resume")
    curve = json.loads(curve_path.read_text())
    if not curve:
        raise RankhouseError(f"{curve_path}: empty curve; start a fresh run without --resume")
    # curves written before the lr column: the card of the asset built from them has the rate
    card_json = cards(args.out)[0]
    old_lr = json.loads(card_json.read_text())["training"].get("lr") if card_json.is_file() else None
    for c in curve:
        c.setdefault("lr", old_lr)
        if "valid_sdr" in c:  # curves written before the base trainer served every task
            c["valid"] = c.pop("valid_sdr")
    top = max(curve, key=lambda c: sign * c["valid"])
    improved, bar = top["epoch"], -float("inf")  # replay the plateau rule of ``report`` over the curve
    for c in curve:
        if sign * c["valid"] > bar + args.min_delta:
            improved, bar = c["epoch"], sign * c["valid"]
    best = {"value": sign * top["valid"], "epoch": top["epoch"], "step": top["step"], "improved_epoch": improved,
            "bar": bar}
    last = curve[-1]
    print(f"resuming {args.work}: {len(curve)} epochs, best {top['valid']:.3f} @ {top['epoch']}; "
          f"training from the best weights at lr {args.lr:g}", flush=True)
    return curve, best, {"epoch": last["epoch"], "step": last["step"], "minutes": last["minutes"]}


def finalize(family: Family, args, train_argv: list[str], cfg: dict, curve: list[dict], stopped_by: str,
             minutes: float) -> int:
    """Write the best checkpoint as the asset (architecture in its metadata) and its model card."""
    best_path = args.work / "best.safetensors"
    sign = objective_sign(family, cfg)
    best = max(curve, key=lambda c: sign * c["valid"]) if curve else {"epoch": None, "step": None}
    base = family.build_base(cfg["model"])
    model = base.model
    model.load_state_dict(load_file(str(best_path)))
    sha = family.save_model(model, args.out, base)
    print("scoring the base on whole valid items (generic and tech-house)...", flush=True)
    generic = score(family, args.out, cfg)
    techhouse = score(family, args.out, study(family, "techhouse", args))
    data = {k: v for k, v in cfg["data"].items() if k not in ("root", "cache", "cache_dir")}
    card = {
        "file": args.out.name, "sha256": sha, "bytes": args.out.stat().st_size,
        "architecture": {"class": f"{type(model).__module__}.{type(model).__qualname__}",
                         **{k: v for k, v in base.config.items() if k not in ("samplerate", "segment")},
                         "parameters": sum(p.numel() for p in model.parameters())},
        "data": data,
        "objective": family.task.default_objective,
        "training": {"optimizer": "AdamW", "lr_stages": lr_stages(curve), "batch_size": args.batch_size,
                     "steps_per_epoch": args.steps_per_epoch, "seed": args.seed,
                     "augment": bool(cfg["train"]["augment"]),
                     "init": {"file": str(args.init), "sha256": checkpoint.sha256(args.init)} if args.init else None,
                     "valid_seconds": cfg["train"]["valid_max_seconds"],
                     "best_epoch": best["epoch"], "best_step": best["step"], "epochs_run": len(curve),
                     "stopped_by": stopped_by, "patience_epochs": args.patience,
                     "min_delta": args.min_delta, "minutes": round(minutes, 1)},
        "valid_curve": curve,
        "scores": {"generic_valid": generic, "techhouse_valid": techhouse},
        "commands": commands(args, train_argv),
    }
    if args.out == family.embedded:
        card_json, card_md = cards(args.out)
        card_json.write_text(json.dumps(card, indent=1))
        card_md.write_text(model_card_markdown(card))
    print(json.dumps({k: card[k] for k in ("sha256", "bytes", "scores")}, indent=1))
    return 0


def lr_stages(curve: list[dict]) -> list[dict]:
    """Consecutive epochs trained at one learning rate: ``[{"lr", "first_epoch", "last_epoch"}]``."""
    stages: list[dict] = []
    for c in curve:
        if stages and stages[-1]["lr"] == c.get("lr"):
            stages[-1]["last_epoch"] = c["epoch"]
        else:
            stages.append({"lr": c.get("lr"), "first_epoch": c["epoch"], "last_epoch": c["epoch"]})
    return stages


def commands(args, train_argv: list[str]) -> list[str]:
    """The commands that rebuild the asset: a resumed run keeps the earlier stages' commands."""
    this = " ".join(["python -m platform.base", *train_argv])
    card_json = cards(args.out)[0]
    if not args.resume or not card_json.is_file():
        return [this]
    old = json.loads(card_json.read_text())
    return [*old.get("commands", [old["command"]] if "command" in old else []), this]


def model_card_markdown(card: dict) -> str:
    t, metric = card["training"], card["objective"]
    rows = "\n".join(f"| {c['epoch']} | {c['step']} | {c['minutes']} | {c['train_loss']} | {c['valid']} |"
                     for c in card["valid_curve"])
    stages = "; ".join(f"lr {s['lr']:g} for epochs {s['first_epoch']}-{s['last_epoch']}" for s in t["lr_stages"])
    init = f" from `{t['init']['file']}` (sha256 `{t['init']['sha256'][:12]}`)" if t.get("init") else ""
    scores = lambda m: ", ".join(f"{k.removeprefix('valid/')} {v:.3f}" for k, v in m.items())
    arch = {k: v for k, v in card["architecture"].items() if k not in ("class", "parameters")}
    return f"""# Embedded base: {card['architecture']['class'].rsplit('.', 1)[-1]}

- file: `{card['file']}` ({card['bytes']} bytes), sha256 `{card['sha256']}`
- architecture: `{card['architecture']['class']}`, {card['architecture']['parameters']} parameters,
  `{json.dumps(arch)}`
- data: `{json.dumps(card['data'])}`
- training: full training{init}, AdamW {stages}, batch {t['batch_size']}, seed {t['seed']},
  {t['epochs_run']} epochs of {t['steps_per_epoch']} steps in {t['minutes']} min; best epoch {t['best_epoch']};
  stopped by: {t['stopped_by']} (no gain in {metric} > {t['min_delta']} for {t['patience_epochs']} epochs)
- whole valid items, generic: {scores(card['scores']['generic_valid'])}
- whole valid items, tech-house: {scores(card['scores']['techhouse_valid'])}
- rebuild: {" then ".join(f"`{c}`" for c in card["commands"])}

## Validation curve ({metric} on {f"the generic valid items' first {t['valid_seconds']:g} s" if t['valid_seconds']
                                 else "whole generic valid items"})

| epoch | step | minutes | train loss | {metric} |
|---|---|---|---|---|
{rows}
"""


if __name__ == "__main__":
    run(main)
