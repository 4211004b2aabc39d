"""Does searching per-layer ranks beat a hand-picked uniform rank at the same parameter budget?

The embedded HT-Demucs base (4 stems, trained to a plateau on the ``generic`` preset) adapted to
5-stem tech-house on the embedded corpus, every run the same steps, data and learning rate. At
each budget (the trainable parameters of ``uniform`` rank R, the rebuilt kick/hihat heads
included):

  uniform     rank R on every target
  heuristic   the family's documented allocation at the largest base rank that fits the budget
  gradient    ``rank_mode: gradient`` at rank R (a 2R warm-up for half of epoch 1, then reallocated
              within the budget at once)
  progressive the same pruned progressively (``gradient_steps`` 4, from half of epoch 1 to its end,
              the budget falling on a cubic: only the number of reallocations differs)
  searched    per-group ``layer_ranks`` found by ``python -m platform.tune`` itself: TPE over the
              five groups with ``budget.max_trainable_params`` = the budget (over-budget samples
              rejected before training), selected on the valid split with a seed of its own
  full        full fine-tuning (every weight trains): the reference for step time, memory and size

Every row but the search is trained with 5 seeds, paired: every row sees the same seed's data
order. Each is scored on a test split no run trained or was selected on (benchmarks/heldout.py:
the embedded tech-house preset rendered with a seed of its own, not the promotion holdout's);
the valid SDR is shown too. A row's gain over uniform is the mean of its per-seed differences,
with a 95% t interval over the seeds. Full fine-tuning's learning rate is searched first, on
the valid split, at the search's seed (``--full-lrs``, grown x3 past the grid's edge while the
best sits there): LoRA's was never a fair one for it.
Each run is a fresh process on one torch thread (two side by side on 2 cores), so
step time and peak memory (the process' peak RSS over its RSS before training) compare like
with like. LoRA uses rsLoRA scaling with alpha = 2 sqrt(R): one alpha means the same step size
whatever rank a module ends with.

    .venv/bin/python -m benchmarks.rank_allocation                (from the repository root)
    .venv/bin/python -m benchmarks.rank_allocation --epochs 12 --out runs/rank-allocation
                  (a measurement in parts: every finished run is kept there; the same command goes on)
    .venv/bin/python -m benchmarks.rank_allocation --ranks 2 --seeds 1 --epochs 1 --steps 4   (a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import kept_results
from benchmarks.heldout import TEST_SEED, open_test_split
from benchmarks.study_files import run_search, write_space

ROOT = Path(__file__).resolve().parents[1]
PLAN = "plan.json"  # in --out: what every seed's runs share
FULL_LR_STEPS = 3  # how far full fine-tuning's lr grid may grow past its edge
GROUPS = ["encoder.*", "tencoder.*", "crosstransformer.*", "decoder.*", "tdecoder.*"]


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def run_one(job: dict) -> dict:
    """One training run in a fresh process: the loop, then the test split's score and the sizes."""
    import torch

    torch.set_num_threads(1)
    from trainables import checkpoint, loop
    from trainables.data import cache as stem_cache
    from trainables.separation import evaluate_tracks, sources_of

    cfg, setups, reports = job["cfg"], [], []
    before = _rss_kb("VmRSS")
    loop.train(cfg, lambda metrics, folder: reports.append(metrics), device=torch.device("cpu"),
               log=lambda *a: None, on_setup=setups.append)
    peak = _rss_kb("VmHWM")
    setup = setups[-1]
    test = stem_cache.StemCache(job["test"])
    scores = evaluate_tracks(setup.model, test, sources_of(setup.cfg), setup.base.samplerate,
                             float(cfg["data"]["segment"]), torch.device("cpu"), job["test_seconds"])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.save_weights(setup.model, Path(tmp))
        saved = sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))
    return {"method": job["method"], "budget": job["budget"], "seed": cfg["train"]["seed"], "lr": cfg["optim"]["lr"],
            "test_sdr": scores["valid/sdr"], "valid_sdr": reports[-1]["valid/sdr"],
            "curve": [r["valid/sdr"] for r in reports],
            "trainable": sum(p.numel() for p in setup.model.parameters() if p.requires_grad),
            "step_s": statistics.median(r["time/train_step_s"] for r in reports),
            "peak_mb": (peak - before) / 1024, "bytes": saved, "rank_sum": sum(setup.ranks.values())}


def count(prepared_cfg: dict, lora_cfg: dict) -> int:
    """Trainable parameters of a LoRA config on the study's base (adapters + rebuilt heads), as
    the platform's budget counter counts them."""
    from platform.budget import ParameterCounter

    return ParameterCounter({**prepared_cfg, "lora": lora_cfg})({})


def search(args, study_file: Path, rank: int, budget: int, alpha: float, work: Path) -> dict:
    """The platform's own search over per-group ranks under the budget; the best trial's layer_ranks."""
    import yaml

    choices = sorted({max(1, rank // 2), rank, max(rank + 1, 3 * rank // 2), 2 * rank})
    doc = yaml.safe_load(study_file.read_text())
    doc["study"] = f"rank-allocation-r{rank}"
    doc["lora"] = {"rank": rank, "alpha": alpha, "scaling": "rslora", "rank_mode": "custom"}
    doc["budget"] = {"max_trainable_params": budget}
    doc["search"]["space"] = {f'lora.layer_ranks."{g}"': {"type": "choice", "values": choices} for g in GROUPS}
    space = write_space(doc, work, f"search_r{rank}")
    print(f"search at budget {budget} (uniform rank {rank}): {args.search_trials} trials, ranks from {choices}",
          flush=True)
    summary = run_search(space, [*args.overrides, f"search.num_samples={args.search_trials}", "search.max_concurrent=2",
                                 "search.scheduler.type=fifo", f"train.seed={args.search_seed}",
                                 "resources.cpus_per_worker=1.0"], work / f"search_r{rank}")
    best = summary["best"]
    found = {k.split('"')[1]: v for k, v in best["config"].items() if k.startswith("lora.layer_ranks")}
    print(f"  best: {found} valid/sdr {best['best']:.3f}; {len(summary.get('rejected', []))} samples rejected "
          "over budget", flush=True)
    return found


SETTINGS = ("ranks", "epochs", "steps", "batch_size", "lr", "full_lrs", "test_songs", "test_seconds",
            "progressive_steps", "search_trials", "search_seed")


def settings(args) -> dict:
    """What kept runs must share with this one to sit in its table (more seeds extend it)."""
    return {k: getattr(args, k) for k in SETTINGS}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, nargs="+", default=[2, 8], help="the budgets, as uniform ranks")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=14, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--full-lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3],
                   help="full fine-tuning's learning rates, the best on the valid split kept")
    p.add_argument("--test-songs", type=int, default=7, help="songs in the test split")
    p.add_argument("--test-seconds", type=float, default=10.0, help="seconds of each test song scored")
    p.add_argument("--progressive-steps", type=int, default=4, help="the progressive row's gradient_steps")
    p.add_argument("--search-trials", type=int, default=6)
    p.add_argument("--search-seed", type=int, default=100, help="the search's training seed (not a row's)")
    p.add_argument("--workers", type=int, default=2, help="runs side by side, one torch thread each")
    p.add_argument("--out", type=Path, help="the work folder; one holding an earlier run's results keeps its "
                                           "plan (searches, full fine-tuning's lr) and finished runs, and runs "
                                           "the rest (default: a new temporary folder)")
    args = p.parse_args()
    started = time.perf_counter()
    work = args.out or Path(tempfile.mkdtemp(prefix="rankhouse-rank-allocation-"))
    rows = kept_results.load(work, settings(args))
    kept_plan = kept_results.load(work, settings(args), PLAN)

    from platform import preflight, spaces

    study_file = ROOT / "search_spaces" / "techhouse.yaml"
    args.overrides = [f"train.epochs={args.epochs}", f"train.steps_per_epoch={args.steps}", f"train.batch_size={args.batch_size}",
                      f"optim.lr={args.lr}", "optim.schedule=cosine", "optim.warmup=0.0", "train.valid_max_seconds=8.0",
                      "data.embedded.songs=24", "data.embedded.seconds=20.0"]
    study = spaces.load(study_file, args.overrides)
    study.params = []
    prepared = preflight.prepare(study)  # renders, checks and caches the corpus; scores the base
    cfg = prepared.config
    from trainables import loop

    plain = loop.base_model(cfg)  # new heads from their parents, no adapter
    held = open_test_split(study_file, study.task.manifest(cfg, plain.base), args.test_songs, args.test_seconds)
    print(f"test split: {held.description}", flush=True)
    ctx = multiprocessing.get_context("spawn")

    def job(method: str, budget: int | None, c: dict) -> dict:
        return {"method": method, "budget": budget, "cfg": c, "test": str(held.data.path),
                "test_seconds": held.max_seconds}

    def full(seed: int, lr: float) -> dict:
        c = copy.deepcopy(cfg)
        c["lora"], c["train"]["seed"], c["optim"]["lr"] = None, seed, lr
        return job("full", None, c)

    if kept_plan:
        print(f"{work / PLAN}: kept from an earlier run: {', '.join(k for k in kept_plan[0] if k != 'settings')}; "
              f"{len(rows)} runs done", flush=True)
    plan = make_plan(args, cfg, plain, held, prepared.base_metrics["valid/sdr"], study_file, work, ctx, full,
                     kept_plan[0] if kept_plan else None)
    plans = {int(rank): methods for rank, methods in plan["plans"].items()}
    kept = rows  # everything finished, saved as is; ``rows``: what this plan's table may use
    rows = [r for r in kept if r["method"] != "full" or r.get("lr") == plan["full_lr"]]
    if len(rows) < len(kept):
        print(f"{len(kept) - len(rows)} full fine-tuning runs kept at another lr than {plan['full_lr']:g}: "
              "not used", flush=True)

    done = {(r["method"], r["budget"], r["seed"]) for r in rows}
    jobs = []
    for seed in range(args.seeds):
        for rank, methods in plans.items():
            for method, lora_cfg in methods.items():
                if (method, rank, seed) not in done:
                    c = copy.deepcopy(cfg)
                    c["lora"], c["train"]["seed"] = lora_cfg, seed
                    jobs.append(job(method, rank, c))
        if ("full", None, seed) not in done:
            jobs.append(full(seed, plan["full_lr"]))
    print(f"{len(jobs)} runs to go ({len(rows)} kept), {args.workers} at a time; full fine-tuning at lr "
          f"{plan['full_lr']:g}", flush=True)
    code = kept_results.commit()
    with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
        for i, r in enumerate(pool.imap_unordered(run_one, jobs), 1):
            rows.append({**r, "settings": settings(args), "commit": code})
            kept.append(rows[-1])
            kept_results.save(work, kept)  # a killed benchmark keeps every finished run
            print(f"  [{i}/{len(jobs)}] {r['method']:<11} budget {r['budget']} seed {r['seed']}: test "
                  f"{r['test_sdr']:.3f} valid {r['valid_sdr']:.3f} ({r['trainable']} trainable)", flush=True)
    table(rows, plans, plan, args)
    print(f"\nresults: {work / kept_results.FILE}; {(time.perf_counter() - started) / 60:.1f} min")


def make_plan(args, cfg: dict, plain, held, base_sdr: float, study_file: Path, work: Path, ctx, full,
              kept: dict | None) -> dict:
    """What every seed's runs share: the base's scores, full fine-tuning's lr (searched on the valid
    split) and each budget's allocations, the searched one found by the platform's own search.
    ``kept``: what an earlier run of it kept; each part is saved as soon as it is known."""
    import torch

    from trainables.separation import evaluate_tracks

    plan = kept or {"settings": settings(args), "commit": kept_results.commit()}

    def keep(**parts) -> None:
        plan.update(parts)
        kept_results.save(work, [plan], PLAN)

    if "base_test" not in plan:
        keep(base_sdr=base_sdr, base_test=evaluate_tracks(
            plain.model, held.data, cfg["data"]["sources"], plain.base.samplerate, float(cfg["data"]["segment"]),
            torch.device("cpu"), held.max_seconds)["valid/sdr"])
    search_full_lr(args, plan, keep, ctx, full)
    plan.setdefault("plans", {})
    for rank in args.ranks:
        if str(rank) in plan["plans"]:
            continue
        alpha = round(2 * math.sqrt(rank), 4)
        lora_base = {"rank": rank, "alpha": alpha, "scaling": "rslora"}
        budget = count(cfg, {**lora_base, "rank_mode": "uniform"})
        h = rank
        while h > 1 and count(cfg, {**lora_base, "rank": h, "rank_mode": "heuristic"}) > budget:
            h -= 1
        while h < 4 * rank and count(cfg, {**lora_base, "rank": h + 1, "rank_mode": "heuristic"}) <= budget:
            h += 1
        found = search(args, study_file, rank, budget, alpha, work)
        plan["plans"][str(rank)] = {  # JSON's keys are strings: one spelling, saved or not
            "uniform": {**lora_base, "rank_mode": "uniform"},
            "heuristic": {**lora_base, "rank": h, "rank_mode": "heuristic"},
            "gradient": {**lora_base, "rank_mode": "gradient"},
            "progressive": {**lora_base, "rank_mode": "gradient", "gradient_steps": args.progressive_steps},
            "searched": {**lora_base, "rank_mode": "custom", "layer_ranks": found}}
        keep()
        print(f"budget {budget} (uniform rank {rank}): heuristic base rank {h}; searched {found}", flush=True)
    return plan


def search_full_lr(args, plan: dict, keep, ctx, full) -> None:
    """Full fine-tuning's lr: ``--full-lrs`` at the search's seed, the best on valid SDR kept. A
    best at the grid's edge is no optimum, so the grid grows past that edge, x3 a step (at most
    ``FULL_LR_STEPS`` steps), until the best is inside it; one lr given is used as it is. Kept in
    ``plan`` after every step."""
    tried = {float(lr): v for lr, v in plan.get("full_lr_valid", {}).items()}
    todo = [lr for lr in args.full_lrs if lr not in tried]
    for _ in range(FULL_LR_STEPS + 1):
        if todo:
            print(f"full fine-tuning's learning rate: {todo} at seed {args.search_seed}, kept on valid SDR",
                  flush=True)
            with ctx.Pool(args.workers, maxtasksperchild=1) as pool:
                for lr, r in zip(todo, pool.map(run_one, [full(args.search_seed, lr) for lr in todo])):
                    tried[lr] = r["valid_sdr"]
                    print(f"  lr {lr:g}: valid {r['valid_sdr']:.3f}", flush=True)
            keep(full_lr=max(tried, key=tried.get), full_lr_valid={str(lr): v for lr, v in sorted(tried.items())})
        best = plan["full_lr"]
        todo = [best * 3] if best == max(tried) else [best / 3] if best == min(tried) else []
        if not todo or len(args.full_lrs) < 2 or len(tried) >= len(args.full_lrs) + FULL_LR_STEPS:
            return


def paired_gain(rows: list[dict], reference: list[dict], key: str, comparisons: int = 1) -> tuple[float, float, float]:
    """Mean of the per-seed differences ``rows - reference`` and its t interval: 95%, or with
    ``comparisons`` > 1 Bonferroni's (each at 95% / comparisons), so that one of several
    intervals clearing 0 still means 95%."""
    from scipy import stats  # museval's dependency

    by_seed = {r["seed"]: r[key] for r in reference}
    diffs = [r[key] - by_seed[r["seed"]] for r in rows if r["seed"] in by_seed]
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(1 - 0.025 / comparisons, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def table(results: list[dict], plans: dict, plan: dict, args) -> None:
    """The table over the seeds every row has finished (a run in parts may have more of some)."""
    from trainables.family import get_family

    keys = {(m, b) for b in plans for m in plans[b]} | {("full", None)}
    complete = [s for s in sorted({r["seed"] for r in results})
                if keys <= {(r["method"], r["budget"]) for r in results if r["seed"] == s}]
    if not complete:
        print(f"\nno seed has every row yet ({len(results)} runs done): run the same command again to go on")
        return
    results = [r for r in results if r["seed"] in complete]
    base_sdr, base_test, full_lr = plan["base_sdr"], plan["base_test"], plan["full_lr"]

    base_bytes = get_family("htdemucs").embedded.stat().st_size
    full = [r for r in results if r["method"] == "full"]
    full_step = statistics.mean(r["step_s"] for r in full)
    full_mem = statistics.mean(r["peak_mb"] for r in full)

    def mean(rows, key):
        return statistics.mean(r[key] for r in rows)

    def sd(rows, key):
        return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0

    print(f"\n{kept_results.code_line(results)}")
    print(f"base (no adapter): test SDR {base_test:.3f}, valid SDR {base_sdr:.3f}; {args.epochs} epochs x "
          f"{args.steps} steps of batch {args.batch_size} per run, {len(complete)} paired seeds; test split: "
          f"{args.test_songs} songs of render seed {TEST_SEED}")
    head = (f"{'budget':>8} {'method':<11} {'trainable':>10} {'test SDR':>15} {'valid SDR':>10} "
            f"{'vs uniform [95% CI]':>24} {'step/full':>9} {'mem/full':>8} {'size/base':>9}")
    print(head)
    print("-" * len(head))
    verdicts = []
    for rank in plans:
        rows = {m: [r for r in results if r["method"] == m and r["budget"] == rank] for m in plans[rank]}
        budget = max(r["trainable"] for r in rows["uniform"])
        for method, rs in rows.items():
            gain, lo, hi = paired_gain(rs, rows["uniform"], "test_sdr")
            interval = "" if method == "uniform" else f"{gain:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            print(f"{budget:>8} {method:<11} {mean(rs, 'trainable'):>10.0f} "
                  f"{mean(rs, 'test_sdr'):>8.3f} ±{sd(rs, 'test_sdr'):.3f} {mean(rs, 'valid_sdr'):>10.3f} "
                  f"{interval:>24} {mean(rs, 'step_s') / full_step:>9.2f} "
                  f"{mean(rs, 'peak_mb') / full_mem:>8.2f} {mean(rs, 'bytes') / base_bytes:>8.1%}")
            if method != "uniform":
                verdicts.append((budget, method, rs, rows["uniform"]))
    print(f"{'':>8} {'full':<11} {mean(full, 'trainable'):>10.0f} {mean(full, 'test_sdr'):>8.3f} "
          f"±{sd(full, 'test_sdr'):.3f} {mean(full, 'valid_sdr'):>10.3f} {f'(lr {full_lr:g})':>24} {1:>9.2f} "
          f"{1:>8.2f} {mean(full, 'bytes') / base_bytes:>8.1%}")
    print("(vs uniform: the mean per-seed test SDR difference, with its 95% t interval over the paired seeds; "
          "step/full, mem/full: a run's median train step time and peak memory over full fine-tuning's; "
          "size/base: the saved adapter or model over the embedded base's safetensors)")
    # the target asks whether any of these comparisons wins: Bonferroni over all of them
    corrected = [(b, m, *paired_gain(rs, uniform, "test_sdr", len(verdicts))) for b, m, rs, uniform in verdicts]
    met = [v for v in corrected if v[2] >= 0.3 and v[3] > 0]
    best = max(corrected, key=lambda v: v[2])
    print(f"target: an allocation >= +0.30 dB over uniform with an interval above 0 (Bonferroni over "
          f"{len(corrected)} comparisons), at one budget at least: "
          + (f"{met[0][1]} at budget {met[0][0]}, {met[0][2]:+.3f} [{met[0][3]:+.3f}, {met[0][4]:+.3f}] (met)" if met
             else f"best {best[1]} at budget {best[0]}, {best[2]:+.3f} [{best[3]:+.3f}, {best[4]:+.3f}] (NOT met)"))
    for rank in plans:  # has uniform stopped improving? Its valid SDR, epoch by epoch
        curves = [r["curve"] for r in results if r["method"] == "uniform" and r["budget"] == rank]
        by_epoch = [statistics.mean(c[e] for c in curves) for e in range(min(map(len, curves)))]
        quarter = max(1, len(by_epoch) // 4)
        print(f"plateau: uniform rank {rank}, mean valid SDR by epoch "
              f"{' '.join(f'{v:.2f}' for v in by_epoch)}; its last {quarter} epoch(s) gained "
              f"{by_epoch[-1] - by_epoch[-1 - quarter] if len(by_epoch) > quarter else float('nan'):+.3f} dB")
    lora_rows = [r for r in results if r["method"] != "full"]
    step = max(mean([r for r in lora_rows if r["method"] == m and r["budget"] == b], "step_s")
               for b in plans for m in plans[b])
    print(f"target: LoRA step time <= full fine-tuning's: slowest LoRA row {step / full_step:.2f}x "
          f"({'met' if step <= full_step else 'NOT met'})")
    size = max(r["bytes"] for r in lora_rows) / base_bytes
    print(f"target: adapter <= 5% of the base's size: largest {size:.1%} ({'met' if size <= 0.05 else 'NOT met'})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
