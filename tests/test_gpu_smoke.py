"""benchmarks/gpu_smoke.py on a machine without CUDA: a dry run that names every check it would
make and runs nothing (the GPU run itself needs a GPU: docs/benchmarks.md says when it ran)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [[], ["--dry-run"]])
def test_without_cuda_it_says_what_it_would_check_and_exits_0(args, tmp_path):
    import torch

    if not args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the plain run is the real check, not a dry run")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_smoke", "--steps", "7", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                             "RANKHOUSE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "nothing was run" in proc.stdout
    for check in ("cuda+bf16", "cpu", "0.5 GPU"):
        assert check in proc.stdout
    assert "7 training steps per trial" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing rendered, nothing written
