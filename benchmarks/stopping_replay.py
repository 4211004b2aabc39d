"""What ASHA's asynchrony costs: random searches' learning curves replayed under early stopping.

``benchmarks/search_efficiency.py`` runs each stopping rule as a search of its own. There TPE's
samples follow the results, and which of two concurrent trials reports first is the machine's
timing, so a rule's cost and the sampler's luck arrive together. This replay takes them apart.
It reads the ``random`` arm's searches (random sampling, every trial trained to its last epoch,
so every trial's whole curve is known) and asks what each rule would have stopped, with the
same samples started in the same order (their runs' start: Tune's order of suggestion, but for
trials started together), 2 at a time, each epoch lasting as long as it did. A freed slot
starts the next trial at once: Tune reuses the trial's process, 0.1 s apart here.

  asha gG rfN  Ray's own rule: ``_Bracket`` of ray.tune.schedulers.async_hyperband, the class
               ``ASHAScheduler`` decides with, fed each result as it would arrive. The rungs
               are at epochs G x N^k; a trial passes one if it is in the top 1/N of the results
               recorded there so far.
  sha gG rfN   synchronous successive halving on the same rungs: every trial reaches the rung,
               then the best 1 in N go on. ASHA approximates this decision so as not to wait.

The difference between the two at one G and N is what the asynchrony costs. Per rule: the epochs it
would consume (the share of random's), the best valid SDR any trial reached before it stopped,
and in how many seeds that is random's best.

    .venv/bin/python -m benchmarks.stopping_replay runs/search-efficiency
        (a search_efficiency work folder: its random-seed* searches are replayed)
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from benchmarks.search_efficiency import REFERENCE


@dataclass(frozen=True)
class Curve:
    """One trial of a search that stopped nothing: its objective and duration at each epoch."""

    values: tuple[float, ...]
    seconds: tuple[float, ...]


def curves(search: Path) -> list[Curve]:
    """The trials of a finished ``platform.tune`` search in the order they started."""
    from trainables import tracking

    summary = json.loads((search / "summary.json").read_text())
    mlflow = tracking.client(f"sqlite:///{search / 'mlflow.db'}")
    metric = tracking.key(summary["objective"]["metric"])
    if summary["objective"]["mode"] != "max":
        raise SystemExit(f"{search}: the replay ranks a metric to maximise, not {summary['objective']}")
    if len({t["epochs"] for t in summary["trials"]}) != 1:
        raise SystemExit(f"{search}: its trials ran different numbers of epochs; replay a search that stopped none")
    out = []
    for t in sorted(summary["trials"], key=lambda t: t["started_at"]):
        values, ended = {}, {}
        # a retried epoch is logged twice: its value is the later one (as tracking.epochs counts it),
        # its end the first (a last report the driver logged carries the driver's close time)
        for m in sorted(mlflow.get_metric_history(t["run_id"], metric), key=lambda m: m.timestamp):
            values[m.step] = m.value
            ended.setdefault(m.step, m.timestamp)
        if sorted(values) != list(range(1, t["epochs"] + 1)):
            raise SystemExit(f"{search}: trial {t['trial_id']} logged epochs {sorted(values)}, not 1-{t['epochs']}")
        times = [t["started_at"], *(ended[e] for e in sorted(ended))]
        out.append(Curve(tuple(values[e] for e in sorted(values)),
                         tuple((b - a) / 1000 for a, b in zip(times, times[1:]))))
    return out


def rungs(grace: int, rf: int, max_t: int) -> list[int]:
    """The epochs where a trial can be stopped: grace x rf^k below the last epoch (Ray's milestones)."""
    out, t = [], grace
    while t < max_t:
        out.append(t)
        t *= rf
    return out


def asynchronous(trials: list[Curve], rf: int, grace: int = 1, concurrency: int = 2) -> list[int]:
    """The epochs each trial runs under Ray's ASHA rule, results fed in the order they would arrive."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    max_t = len(trials[0].values)
    bracket = _Bracket(min_t=grace, max_t=max_t, reduction_factor=rf, s=0)
    ran = [0] * len(trials)
    waiting = list(range(len(trials)))[::-1]
    events: list[tuple[float, int]] = []  # (when an epoch ends, trial): simultaneous ends in start order

    def start(i: int, now: float) -> None:
        heapq.heappush(events, (now + trials[i].seconds[0], i))

    for _ in range(min(concurrency, len(trials))):
        start(waiting.pop(), 0.0)
    while events:
        now, i = heapq.heappop(events)
        ran[i] += 1
        epoch = ran[i]
        stop = epoch >= max_t or bracket.on_result(SimpleNamespace(trial_id=str(i)), epoch,
                                                   trials[i].values[epoch - 1]) == "STOP"
        if not stop:
            heapq.heappush(events, (now + trials[i].seconds[epoch], i))
        elif waiting:
            start(waiting.pop(), now)
    return ran


def synchronous(trials: list[Curve], rf: int, grace: int = 1) -> list[int]:
    """The epochs each trial runs under synchronous successive halving: all reach a rung, the best
    1 in ``rf`` (at least one) go on."""
    max_t = len(trials[0].values)
    alive, ran = list(range(len(trials))), [0] * len(trials)
    for rung in [*rungs(grace, rf, max_t), max_t]:
        for i in alive:
            ran[i] = rung
        alive = sorted(alive, key=lambda i: trials[i].values[rung - 1], reverse=True)[:max(1, len(alive) // rf)]
    return ran


def outcome(trials: list[Curve], ran: list[int]) -> tuple[int, float]:
    """(epochs consumed, the best objective any trial reached in the epochs it ran)."""
    return sum(ran), max(max(c.values[:n]) for c, n in zip(trials, ran))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path, help="a search_efficiency work folder (--out)")
    p.add_argument("--rf", type=int, nargs="+", default=[4, 8, 16], help="reduction factors to replay")
    p.add_argument("--grace", type=int, nargs="+", default=[1, 2], help="first rungs (epochs) to replay")
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time, as the searches ran")
    args = p.parse_args(argv)
    for name, values, least in (("--rf", args.rf, 2), ("--grace", args.grace, 1),
                                ("--concurrency", [args.concurrency], 1)):
        if min(values) < least:
            sys.exit(f"{name} {min(values)}: must be at least {least}")
    searches = sorted(args.work.glob(f"{REFERENCE}-seed*/summary.json"))
    if not searches:
        sys.exit(f"{args.work}: no {REFERENCE}-seed*/summary.json; run benchmarks.search_efficiency "
                 f"--out {args.work} first")
    seeds = {s.parent.name.removeprefix(f"{REFERENCE}-"): curves(s.parent) for s in searches}
    rules = {REFERENCE: lambda t: [len(c.values) for c in t]}
    for grace in args.grace:
        for rf in args.rf:
            rules[f"asha g{grace} rf{rf}"] = lambda t, g=grace, rf=rf: asynchronous(t, rf, g, args.concurrency)
            rules[f"sha g{grace} rf{rf}"] = lambda t, g=grace, rf=rf: synchronous(t, rf, g)
    first = next(iter(seeds.values()))
    print(f"{len(seeds)} random searches of {len(first)} trials x {len(first[0].values)} epochs, replayed "
          f"{args.concurrency} at a time; per seed: best valid SDR (epochs)")
    head = (f"{'rule':<12} " + " ".join(f"{s:>16}" for s in seeds)
            + f" {'best, mean':>10} {'epochs':>7} {'of random':>9} {'reached':>8}")
    print(head)
    print("-" * len(head))
    reference = {s: outcome(t, rules[REFERENCE](t)) for s, t in seeds.items()}
    for name, rule in rules.items():
        got = {s: outcome(t, rule(t)) for s, t in seeds.items()}
        share = statistics.mean(got[s][0] / reference[s][0] for s in seeds)
        reached = sum(got[s][1] >= reference[s][1] - 1e-9 for s in seeds)
        best, epochs = statistics.mean(b for _, b in got.values()), statistics.mean(e for e, _ in got.values())
        print(f"{name:<12} " + " ".join(f"{f'{b:.3f} ({e})':>16}" for e, b in got.values())
              + f" {best:>10.3f} {epochs:>7.1f} {share:>9.0%} {f'{reached}/{len(seeds)}':>8}")


if __name__ == "__main__":
    main()
