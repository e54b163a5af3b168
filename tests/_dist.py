"""Run one ``adflora`` command in-process and under torchrun (2 processes, gloo) and return both
runs' metrics, sorted alike: the harness of the tests that compare the two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
KEY = ["method", "seed", "round", "layer"]


def in_process_and_torchrun(args: list[str], tmp_path: Path
                            ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(in-process metrics, 2-process metrics, their float columns but wall times)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run([sys.executable, "-m", "adflora_analysis", *args, "--out",
                          str(tmp_path / "ref")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert ref.returncode == 0, ref.stderr[-2000:]
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "adflora_analysis", *args, "--out",
                           str(tmp_path / "dist")], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert dist.returncode == 0, dist.stderr[-2000:]
    a = pd.read_parquet(tmp_path / "ref" / "metrics.parquet").sort_values(KEY)
    b = pd.read_parquet(tmp_path / "dist" / "metrics.parquet").sort_values(KEY)
    num = [c for c in a.columns if a[c].dtype.kind == "f" and c not in ("wall_s", "time_s")]
    return a, b, num
