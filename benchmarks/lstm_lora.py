"""Is adapting SCNet's BiLSTMs worth their share of a parameter budget?

Three quarters of SCNet's weights are in its dual-path BiLSTMs, which PEFT cannot adapt;
rankhouse's ``LoraLSTM`` can. The embedded SCNet base (4 stems) is adapted to 5 tech-house stems
with two target sets at one budget (the trainable parameters of the default targets at uniform
rank R, the rebuilt kick/hihat heads included):

  with LSTMs      the family's default targets (encoder convs, BiLSTMs and their projections,
                  decoder) at rank R
  without LSTMs   the same targets less the BiLSTMs, at the largest rank whose parameters fit
                  the budget (the encoder's first stage is 4 channels wide, so the encoder keeps
                  rank min(r, 4), as it has with the LSTMs)

Every run has the same steps, data, learning rate and seeds (those of ``rank_allocation``:
fresh processes, one torch thread each, two side by side) and is scored on the holdout corpus
(the tech-house preset rendered with seed 1000), which no run trained or selected on.

    .venv/bin/python -m benchmarks.lstm_lora                 (from the repository root)
    .venv/bin/python -m benchmarks.lstm_lora --seeds 1 --epochs 1 --steps 4     (a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.rank_allocation import count, run_one

ROOT = Path(__file__).resolve().parents[1]
LSTM_TARGETS = "separation_net.dp_modules.*.lstm_layers.*"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=4, help="R: the budget is the default targets at uniform rank R")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=14, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=2, help="runs side by side, one torch thread each")
    args = p.parse_args()
    started = time.perf_counter()

    import torch

    from platform import preflight, promote, spaces
    from trainables import loop
    from trainables.family import get_family
    from trainables.separation import evaluate_tracks

    overrides = [f"lora.rank={args.rank}", f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}",
                 f"train.batch_size={args.batch_size}", f"optim.lr={args.lr}", "optim.schedule=cosine",
                 "optim.warmup=0.0", "train.valid_max_seconds=8.0"]
    study = spaces.load(ROOT / "search_spaces" / "scnet_techhouse.yaml", overrides)
    study.params = []
    prepared = preflight.prepare(study)  # renders, checks and caches the corpus; scores the base
    cfg = prepared.config
    plain = loop.base_model(cfg)  # new heads from their parents, no adapter
    held = promote.holdout(study, study.task.manifest(cfg, plain.base))
    base_holdout = evaluate_tracks(plain.model, held.data, cfg["data"]["sources"], plain.base.samplerate,
                                   float(cfg["data"]["segment"]), torch.device("cpu"), held.max_seconds)["valid/sdr"]
    print(f"holdout: {held.description}; base {base_holdout:.3f} dB", flush=True)

    targets = list(get_family("scnet").default_targets)
    without = [t for t in targets if t != LSTM_TARGETS]
    rank = args.rank
    # alpha = 2 R, as the space's fixed block has it (rank 8, alpha 16); LSTM adapters take no dropout
    fixed = {"dropout": 0.0, "scaling": "standard", "rank_mode": "custom"}
    encoder_width = 4  # dims[0] of the embedded base: its first stage's pointwise convs are 4 -> 16

    def plan(targets: list[str], r: int) -> dict:
        return {**fixed, "rank": r, "alpha": 2.0 * r, "targets": targets,
                "layer_ranks": {"encoder.*": min(r, encoder_width)}}

    plans = {"with LSTMs": plan(targets, rank)}
    budget = count(cfg, plans["with LSTMs"])
    r = rank
    while count(cfg, plan(without, r + 1)) <= budget:
        r += 1
    plans["without LSTMs"] = plan(without, r)
    for name, lora_cfg in plans.items():
        print(f"{name}: rank {lora_cfg['rank']}, {count(cfg, lora_cfg)} trainable parameters (budget {budget})",
              flush=True)

    jobs = []
    for seed in range(args.seeds):
        for name, lora_cfg in plans.items():
            c = copy.deepcopy(cfg)
            c["lora"] = {**c["lora"], **lora_cfg}
            c["train"]["seed"] = seed
            jobs.append({"method": name, "budget": budget, "cfg": c, "holdout": str(held.data.path),
                         "holdout_seconds": held.max_seconds})
    results = []
    with multiprocessing.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
        for i, res in enumerate(pool.imap_unordered(run_one, jobs), 1):
            results.append(res)
            print(f"  [{i}/{len(jobs)}] {res['method']:<14} seed {res['seed']}: holdout {res['holdout_sdr']:.3f} "
                  f"valid {res['valid_sdr']:.3f} ({res['trainable']} trainable)", flush=True)

    print(f"\nbase (no adapter): holdout SDR {base_holdout:.3f}; {args.epochs} epochs x {args.steps} steps of batch "
          f"{args.batch_size} per run, {args.seeds} seeds, lr {args.lr:g}")
    print("\n| targets | rank | trainable | holdout SDR (dB) | valid SDR (dB) | vs without | step time vs without |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = {m: [x for x in results if x["method"] == m] for m in plans}

    def mean(m: str, key: str) -> float:
        return statistics.mean(x[key] for x in rows[m])

    def sd(m: str) -> float:
        return statistics.stdev(x["holdout_sdr"] for x in rows[m]) if len(rows[m]) > 1 else 0.0

    for m, lora_cfg in plans.items():
        print(f"| {m} | {lora_cfg['rank']} | {mean(m, 'trainable'):.0f} | {mean(m, 'holdout_sdr'):.3f} ±{sd(m):.3f} | "
              f"{mean(m, 'valid_sdr'):.3f} | {mean(m, 'holdout_sdr') - mean('without LSTMs', 'holdout_sdr'):+.3f} | "
              f"{mean(m, 'step_s') / mean('without LSTMs', 'step_s'):.2f}x |")
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min; work files under {tempfile.gettempdir()}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
