"""Does the search beat the recipe a user was given? The demucs_LoRa guide's tech-house recipe
and the usual LoRA default, each one trial, against the flagship search given the same epochs.

Every arm runs through ``python -m platform.tune`` itself, on the flagship study
(search_spaces/techhouse.yaml: the embedded 4-stem HT-Demucs base adapted to 5-stem tech-house
on the embedded corpus, 20 steps of batch 4 per epoch):

  search        the flagship search as shipped (TPE + ASHA, 8 trials of at most 4 epochs); the
                epochs all its trials consumed are the budget E of this seed
  recipe        the guide's recipe as one trial of E epochs (its mapping: RECIPE below)
  recipe-a0.8   the same with alpha 0.8, the guide's other variant
  default       the LoRA default a user tries first, one trial of E epochs: the flagship space's
                fixed values (rank 8 on every layer, alpha 16, lr 1e-3, cosine, no warm-up)

Each arm's adapter (its best valid epoch, as the platform keeps it) is then scored with museval
(BSSEval v4 SDR, the promotion score) on a test split no arm trained, searched, selected or
promoted on: the embedded tech-house preset rendered with seed TEST_SEED (the promotion holdout
uses 1000). Seeds vary the sampler (search.seed) and the training (train.seed); the training and
valid data are the same in every arm. Targets, in every seed: the search beats the recipe by
>= 2 dB and the default by >= 0.5 dB of test SDR.

    .venv/bin/python -m benchmarks.recipe_vs_search                      (from the repository root)
    .venv/bin/python -m benchmarks.recipe_vs_search --seeds 1 2 --out runs/recipe-vs-search
                                        (runs the seeds that folder's results.json lacks, then the table)
    .venv/bin/python -m benchmarks.recipe_vs_search --seeds 0 --trials 2 --epochs 1 --steps 2 \\
        --test-songs 2 --test-seconds 4                                   (a smoke run)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks import kept_results
from benchmarks.heldout import TEST_SEED, open_test_split
from benchmarks.study_files import run_search, write_space

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "search_spaces" / "techhouse.yaml"

# The guide (demucs_LoRa docs/training-lora.md, "Extended Source Separation Configuration" and
# "Learning Rate Guidelines", fine_tuning): rank 8 in heuristic mode, layer_ranks overriding it,
# alpha 1.0 (or 0.8), dropout 0.1, lr 5e-5, 500 warm-up steps, linear schedule, grad clip 0.5.
# Its patterns name Demucs' module paths; the cross-domain transformer is ``crosstransformer``
# in HT-Demucs, and its patterns leave the time branch (tencoder/tdecoder) to the heuristic.
RECIPE_RANK = 8
RECIPE_LAYER_RANKS = {"encoder.0.*": 16, "encoder.1.*": 12, "crosstransformer.*": 12,
                      "decoder.0.*": 12, "decoder.1.*": 8, "decoder.2.*": 6}
# Its 500 warm-up steps as a fraction of its run: Demucs' finetune variant trains 4 epochs; on
# the guide's "optimal" dataset (50-100 songs, 5-10 h: 7.5 h = 27,000 windows of 12 s at a 1-s
# shift) at batch 32 that is 4 x 27,000 / 32 = 3,375 steps, so 500 steps are 15% of training.
RECIPE_WARMUP = 0.15


def recipe_ranks(cfg: dict) -> dict[str, int]:
    """The recipe as an explicit {module: rank} map on this study's base: the family's heuristic
    at rank 8, then the guide's layer_ranks over it, each clamped to its layer's min(fan_in,
    fan_out) the way the heuristic clamps (the embedded base's narrowest layers have width 2)."""
    import fnmatch

    from trainables import loop
    from trainables.lora import fan

    heuristic = loop.build_model({**cfg, "lora": {"rank": RECIPE_RANK, "rank_mode": "heuristic"}}).ranks
    modules = dict(loop.base_model(cfg).model.named_modules())
    ranks = dict(heuristic)
    for name in ranks:
        for pattern, r in RECIPE_LAYER_RANKS.items():
            if fnmatch.fnmatchcase(name, pattern):
                ranks[name] = min(r, min(fan(modules[name])))
                break
    return ranks


def arms(ranks: dict[str, int]) -> dict[str, dict]:
    """Each single-trial arm's fixed values (the search arm runs the study as shipped)."""
    recipe = {"lora": {"rank": RECIPE_RANK, "alpha": 1.0, "dropout": 0.1, "scaling": "standard",
                       "rank_mode": "custom", "layer_ranks": ranks},
              "optim": {"lr": 5e-5, "schedule": "linear", "warmup": RECIPE_WARMUP}}
    return {"recipe": recipe,
            "recipe-a0.8": {**recipe, "lora": {**recipe["lora"], "alpha": 0.8}},
            "default": {}}  # the space's own fixed values


def single_trial_space(work: Path, arm: str, fixed: dict) -> Path:
    """The flagship study with no search dimensions and the arm's values fixed."""
    doc = yaml.safe_load(STUDY.read_text())
    for section, values in fixed.items():
        doc[section] = {**doc.get(section, {}), **values}
    doc["search"] = {"space": {}}
    return write_space(doc, work / "spaces", arm)


def score_on_test_split(adapters: dict[str, tuple[str, str]], args, work: Path,
                        with_base: bool) -> dict[str, dict[str, float]]:
    """museval on the test split for every arm's adapter (and the base), in one pool."""
    from platform import models
    from trainables import bundle

    loaded = {arm: bundle.load(models.download_run_folder(uri, run_id, "adapter", work / "adapters" / arm))
              for arm, (uri, run_id) in adapters.items()}
    first = next(iter(loaded.values()))
    test = open_test_split(STUDY, first.manifest, args.test_songs, args.test_seconds)
    print(f"  test split: {test.description}", flush=True)
    models_ = {arm: b.model for arm, b in loaded.items()} | ({"base": first.reference()} if with_base else {})
    return first.family.task.score_holdout(models_, test.data, first.manifest, test.max_seconds, None)


def settings(args) -> dict:
    """What a kept seed must share with this run to sit in its table."""
    return {k: getattr(args, k) for k in ("trials", "epochs", "steps", "test_songs", "test_seconds")}


def run_seed(seed: int, args, work: Path, base_test: float | None) -> list[dict]:
    train = [f"train.steps_per_epoch={args.steps}", f"train.seed={seed}", f"search.seed={seed}"]
    started = time.perf_counter()
    searched = run_search(STUDY, [*train, f"search.num_samples={args.trials}", f"train.epochs={args.epochs}"],
                    work / f"search-seed{seed}")
    budget = sum(t["epochs"] for t in searched["trials"])
    rows = [{"arm": "search", "seed": seed, "epochs": budget, "valid": searched["best"]["best"],
             "run": (searched["tracking_uri"], searched["best"]["run_id"]),
             "minutes": (time.perf_counter() - started) / 60}]
    print(f"seed {seed}: search best valid SDR {rows[0]['valid']:.3f} over {len(searched['trials'])} trials, "
          f"{budget} epochs, {rows[0]['minutes']:.1f} min; each single trial gets {budget} epochs", flush=True)
    from platform import preflight, spaces

    cfg = preflight.resolve_data(spaces.load(STUDY, train))
    for arm, fixed in arms(recipe_ranks(cfg)).items():
        started = time.perf_counter()
        s = run_search(single_trial_space(work, arm, fixed),
                 [*train, "search.num_samples=1", "search.max_concurrent=1", "search.scheduler.type=fifo",
                  f"train.epochs={budget}", "resources.cpus_per_worker=2"], work / f"{arm}-seed{seed}")
        rows.append({"arm": arm, "seed": seed, "epochs": s["trials"][0]["epochs"], "valid": s["best"]["best"],
                     "run": (s["tracking_uri"], s["best"]["run_id"]), "minutes": (time.perf_counter() - started) / 60})
        print(f"  {arm:<12} valid SDR {rows[-1]['valid']:.3f} (best of {rows[-1]['epochs']} epochs), "
              f"{rows[-1]['minutes']:.1f} min", flush=True)
    # the base's score is the same in every seed: scored once
    scores = score_on_test_split({r["arm"]: r["run"] for r in rows}, args, work / f"scores-seed{seed}",
                                 with_base=base_test is None)
    code = kept_results.commit()
    for r in rows:
        r["test"], r["sources"] = scores[r["arm"]]["sdr"], scores[r["arm"]]
        r["base_test"], r["commit"] = scores["base"]["sdr"] if base_test is None else base_test, code
        r["settings"] = settings(args)
        print(f"  {r['arm']:<12} test SDR {r['test']:.3f}", flush=True)
    return rows


def table(rows: list[dict], seeds: list[int]) -> None:
    names = list(dict.fromkeys(r["arm"] for r in rows))

    def of(arm, key):
        return [r[key] for r in rows if r["arm"] == arm]

    def gaps(arm) -> list[float]:
        """search minus ``arm`` on test SDR, seed by seed."""
        search = {r["seed"]: r["test"] for r in rows if r["arm"] == "search"}
        return [search[r["seed"]] - r["test"] for r in rows if r["arm"] == arm and r["seed"] in search]

    base = rows[0]["base_test"]
    print(f"\ntest split: embedded tech-house, seed {TEST_SEED}; base (no adapter) test SDR {base:.3f}; "
          f"seeds {seeds}; each single trial trains the epochs its seed's search consumed")
    print(kept_results.code_line(rows))
    head = f"{'arm':<12} {'test SDR':>16} {'search minus arm':>17} {'valid SDR':>10} {'epochs':>7} {'minutes':>8}"
    print(head)
    print("-" * len(head))
    for arm in names:
        test = of(arm, "test")
        spread = statistics.stdev(test) if len(test) > 1 else 0.0
        gap = statistics.mean(gaps(arm))
        print(f"{arm:<12} {statistics.mean(test):>8.3f} ±{spread:.3f} {gap:>+17.3f} "
              f"{statistics.mean(of(arm, 'valid')):>10.3f} {statistics.mean(of(arm, 'epochs')):>7.1f} "
              f"{statistics.mean(of(arm, 'minutes')):>8.1f}")
    sources = [k for k in rows[0]["sources"] if k != "sdr"]
    print("\nper source, test SDR (mean over seeds):")
    print(f"{'arm':<12} " + " ".join(f"{s:>14}" for s in sources))
    for arm in names:
        print(f"{arm:<12} " + " ".join(f"{statistics.mean(r['sources'][s] for r in rows if r['arm'] == arm):>14.3f}"
                                        for s in sources))
    for arm, target in (("recipe", 2.0), ("recipe-a0.8", 2.0), ("default", 0.5)):
        each = gaps(arm)
        met = all(g >= target for g in each)
        print(f"target: search beats {arm} by >= {target} dB in every seed: "
              f"{', '.join(f'{g:+.2f}' for g in each)} ({'met' if met else 'NOT met'})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--trials", type=int, default=8, help="the search's trials (the study's num_samples)")
    p.add_argument("--epochs", type=int, default=4, help="the most a search trial trains (the study's)")
    p.add_argument("--steps", type=int, default=20, help="steps per epoch (the study's)")
    p.add_argument("--test-songs", type=int, default=7, help="songs in the test split")
    p.add_argument("--test-seconds", type=float, default=10.0, help="seconds of each test song scored")
    p.add_argument("--out", type=Path, help="the work folder; one holding an earlier run's results.json keeps "
                                           "its seeds and runs the others (default: a new temporary folder)")
    args = p.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="rankhouse-recipe-vs-search-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = kept_results.load(work, settings(args))
    kept = sorted({r["seed"] for r in rows})
    if kept:
        print(f"{work / kept_results.FILE}: seeds {kept} kept from an earlier run", flush=True)
    started = time.perf_counter()
    for seed in args.seeds:
        if seed in kept:
            continue
        rows += run_seed(seed, args, work, rows[0]["base_test"] if rows else None)
        kept_results.save(work, rows)
    table(rows, sorted({r["seed"] for r in rows}))
    print(f"\nresults: {work / 'results.json'}; {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
