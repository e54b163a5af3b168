"""`adflora demo --quick`: the whole tour end to end (topology, synthetic + checks, T ablation,
offline MiniLM GLUE run, report), as a new user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pandas as pd
import pytest


@pytest.mark.slow
def test_demo_quick_writes_every_part(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "demo", "--quick", "--out",
                        str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"Open the report: {(out / 'index.html').resolve()}" in r.stdout
    for step in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"[demo] {step}" in r.stdout
    # 1. topology: the paper's setting has p ~ 0.366 (docs/architecture.md §3)
    const = json.loads((out / "topology" / "paper_default.json").read_text())
    assert const["graph"] == "encounter" and abs(const["p"] - 0.366) < 0.03
    # 2. synthetic bounds with the checks saved
    checks = json.loads((out / "runs" / "bounds" / "checks.json").read_text())["results"]
    assert {c["method"] for c in checks} == {"adf-lora", "rolora", "ffa-lora", "lora"}
    assert any(c["expected"] == "fail" and c["method"] == "rolora" for c in checks)
    # 3. T ablation swept T
    t = pd.read_parquet(out / "runs" / "t_ablation" / "metrics.parquet")
    assert sorted(t["switch_interval"].unique()) == [1, 5, 20]
    # 4. GLUE: adf-lora against rolora, real MiniLM adapted in its top layer from the cached
    # lower layers, evaluation of clients, their mean and the average
    ev = pd.read_parquet(out / "runs" / "glue" / "eval.parquet")
    assert set(ev["method"]) == {"adf-lora", "rolora"}
    assert {"mean", "averaged", "0", "9"} <= set(ev["client"].astype(str))
    meta = json.loads((out / "runs" / "glue" / "meta.json").read_text())
    assert meta["model"]["name"] == "minilm" and meta["versions"]["transformers"]
    assert meta["model"]["layers"] == ["bert.encoder.layer.5.attention.self.query",
                                       "bert.encoder.layer.5.attention.self.value"]
    glue_cfg = tomllib.loads((out / "runs" / "glue" / "config.toml").read_text())
    assert glue_cfg["cache_frozen_prefix"] is True and glue_cfg["adapt_layers"] == 1
    # 5. the report, covering every part
    md = (out / "report.md").read_text()
    for needle in ("topology sweep", "bounds: theory checks", "t_ablation: sweeps",
                   "glue: evaluation", "GLUE table (%)", "**Summary**", "Demo setting",
                   "top layer only", "adf-lora against rolora only"):
        assert needle in md, needle
    # the bounds study keeps checkpoints, so the report draws the cross terms themselves
    assert (out / "figures" / "bounds--dynamics-cross-terms--b-i-a-j--f.png").is_file()
    assert (out / "index.html").stat().st_size > 50_000
