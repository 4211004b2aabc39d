"""The GPU paths nothing else runs, checked in one short script on one GPU (about 5 minutes):

  cuda+bf16   one flagship trial (search_spaces/techhouse.yaml's fixed values, embedded base and
              data) trained ``--steps`` steps on CUDA with bf16 autocast: seconds per step,
              peak GPU memory and valid SDR
  cpu         the same trial, same steps, same seed, on the CPU in float32: its SDR is the
              reference the CUDA run must be within ``--tolerance`` dB of (bf16 and kernel
              order change the numbers, not what is learnt)
  0.5 GPU     ``python -m platform.tune`` with 2 trials at ``resources.gpus_per_worker: 0.5``
              and 2 at a time: both finish, and their runs overlap in time (side by side on
              one GPU)

Without CUDA (or with ``--dry-run``) it prints what it would check and exits 0: the CPU-only
machines that build rankhouse run it that way.

    .venv/bin/python -m benchmarks.gpu_smoke [--steps 20] [--dry-run]    (from the repository root)
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "techhouse.yaml"
CHECKS = [
    ("cuda+bf16", "one flagship trial on CUDA with bf16 autocast", "finishes; s/step and peak GPU memory printed"),
    ("cpu", "the same trial and steps on the CPU, float32", "CUDA's valid SDR within --tolerance dB of it"),
    ("0.5 GPU", "platform.tune: 2 trials at 0.5 GPU, 2 at a time", "both FINISHED and their runs overlap in time"),
]


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def one_trial(steps: int, device, bf16: bool) -> dict:
    """The flagship space's fixed trial, one epoch of ``steps`` steps on ``device``."""
    import torch

    from platform import preflight, spaces
    from trainables import loop, schema

    study = spaces.load(SPACE)
    cfg = schema.overlay(preflight.resolve_data(study), {"train": {"epochs": 1, "steps_per_epoch": steps,
                                                                    "seed": 0, "bf16": bf16}})
    metrics: dict = {}
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    loop.train(loop.complete(copy.deepcopy(cfg)), lambda m, folder: metrics.update(m), device=device)
    wall = time.perf_counter() - started
    return {"sdr": float(metrics[study.config["objective"]["metric"]]), "s_per_step": wall / steps,
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if cuda else None}


def fractional(work: Path, gpus: float = 0.5) -> tuple[bool, str]:
    """Two trials at ``gpus`` GPU each through the real search; did they run side by side?"""
    from trainables import tracking

    overrides = ["search.num_samples=2", "search.max_concurrent=2", "search.scheduler.type=fifo",
                 f"resources.gpus_per_worker={gpus}", "resources.cpus_per_worker=1", "train.epochs=1",
                 "train.steps_per_epoch=10", f"tracking.output={work / 'runs'}"]
    proc = subprocess.run([sys.executable, "-m", "platform.tune", str(SPACE), *overrides, "--quiet",
                           "--json", str(work / "summary.json")], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return False, "platform.tune failed: " + " ".join(proc.stderr.split()[-40:])
    summary = json.loads((work / "summary.json").read_text())
    client = tracking.client(summary["tracking_uri"])
    runs = [client.get_run(t["run_id"]).info for t in summary["trials"]]
    finished = [t["status"] for t in summary["trials"]] == ["FINISHED", "FINISHED"]
    overlap = len(runs) == 2 and max(r.start_time for r in runs) < min(r.end_time for r in runs)
    return finished and overlap, f"statuses {[t['status'] for t in summary['trials']]}, overlap {overlap}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tolerance", type=float, default=0.5, help="dB between the CUDA and CPU SDR")
    parser.add_argument("--dry-run", action="store_true", help="say what would be checked; run nothing")
    args = parser.parse_args(argv)

    import torch

    plan = [["check", "what", "passes when"], *map(list, CHECKS)]
    if args.dry_run or not torch.cuda.is_available():
        why = "--dry-run" if args.dry_run else "no CUDA device here"
        print(f"gpu_smoke: dry run ({why}); on one GPU it would check, in about 5 minutes:\n")
        print(table(plan))
        print(f"\n{args.steps} training steps per trial; nothing was run.")
        return 0

    gpu = torch.device("cuda", 0)
    print(f"gpu_smoke on {torch.cuda.get_device_name(gpu)}, {args.steps} steps per trial", flush=True)
    ours = one_trial(args.steps, gpu, bf16=True)
    ref = one_trial(args.steps, torch.device("cpu"), bf16=False)
    close = abs(ours["sdr"] - ref["sdr"]) <= args.tolerance
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        side_by_side, detail = fractional(Path(tmp))
    rows = [["check", "s/step", "peak GPU MB", "valid SDR (dB)", "result"],
            ["cuda+bf16", f"{ours['s_per_step']:.3f}", f"{ours['peak_mb']:.0f}", f"{ours['sdr']:.2f}", "ran"],
            ["cpu (float32)", f"{ref['s_per_step']:.3f}", "", f"{ref['sdr']:.2f}",
             f"{'PASS' if close else 'FAIL'}: |difference| {abs(ours['sdr'] - ref['sdr']):.2f} <= {args.tolerance}"],
            ["2 trials at 0.5 GPU", "", "", "", f"{'PASS' if side_by_side else 'FAIL'}: {detail}"]]
    print()
    print(table(rows))
    return 0 if close and side_by_side else 1


if __name__ == "__main__":
    sys.exit(main())
