"""Reports: every figure and table a run supports, a self-contained HTML page, browser check."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from adflora_analysis import fileio
from adflora_analysis.reports import make_report
from adflora_analysis.reports.collect import collect_run
from adflora_analysis.rundir import claim, init_run_dir, make_meta
from adflora_analysis.study.experiment import run_jobs

sys.path.insert(0, str(Path(__file__).parent))
from test_experiment import make_jobs  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    syn = root / "toy"
    with claim(syn, "synthetic", "new") as run:
        init_run_dir(run, {"n_clients": 5, "rounds": 8, "methods": ["adf-lora", "rolora"],
                           "topology": {"graph": "ring", "weights": "metropolis"}},
                     make_meta([0, 1], kind="synthetic", topology={"p": 0.3, "p_stderr": 0.0}))
        run_jobs(run, make_jobs(), rounds=8, checkpoint_every=4)
    glue = root / "glue"
    with claim(glue, "glue", "new") as run:
        init_run_dir(run, {"task": "sst2", "model": "tiny", "n_clients": 5},
                     make_meta([0], kind="glue", topology={"p": 0.3}))
        run_jobs(run, make_jobs(seeds=(0,)), rounds=4)
    rows = [{"method": m, "seed": 0, "round": r, "client": c, "metric": "accuracy",
             "value": 0.5 + 0.05 * r + (0.01 if m == "adf-lora" else 0)}
            for m in ("adf-lora", "rolora") for r in (1, 3) for c in ("0", "mean", "averaged")]
    fileio.write_parquet(glue / "eval.parquet", pd.DataFrame(rows))
    sweep = root / "sweep"
    sweep.mkdir()
    fileio.write_json(sweep / "meta.json", make_meta(0, kind="topology-sweep"))
    fileio.write_parquet(sweep / "sweep.parquet", pd.DataFrame(
        [{"kind": "encounter", "graph": "encounter", "rule": rule, "q": q, "p": p * q / 0.5}
         for rule, p in (("metropolis", 0.8), ("pairwise", 0.6)) for q in (0.02, 0.1, 0.5)]
        + [{"kind": "static", "graph": "ring", "rule": "metropolis", "q": None, "p": 0.2}]))
    return [syn, glue, sweep]


def test_run_kinds(runs):
    assert [collect_run(p).kind for p in runs] == ["synthetic", "glue", "topology-sweep"]


def test_report_files_and_content(runs, tmp_path):
    html_path = make_report(runs, tmp_path / "rep")
    out = tmp_path / "rep"
    md = (out / "report.md").read_text()
    for needle in ("## Setup", "toy: dynamics", "glue: evaluation", "GLUE table (%)",
                   "sweep: topology sweep", "Setting differs", "**Summary**"):
        assert needle in md, needle
    # a tiny model on one task is not the paper's setting: no paper numbers, no T ablation
    assert "paper DFL average" not in md and "T ablation" not in md
    summary = md.split("**Summary**")[1].split("\n\n")[1].splitlines()
    assert len(summary) == 5 and summary[1].startswith("- Theory checks:")
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert any("frozen-block" in p for p in pngs) and any("p-against-q" in p for p in pngs)
    assert any("evaluation" in p for p in pngs) and any("loss-difference" in p for p in pngs)
    assert any("cross-terms" in p for p in pngs)    # toy kept checkpoints
    assert any("label-distribution" in p for p in pngs) is False   # toy glue has no labels
    for png in pngs:                                # a PDF for papers beside every PNG
        assert (out / "figures" / png.replace(".png", ".pdf")).read_bytes()[:4] == b"%PDF"
    # every figure linked from the Markdown exists, and the HTML embeds each one
    for link in re.findall(r"\(figures/([^)]+)\)", md):
        assert (out / "figures" / link).exists()
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == len(pngs)
    glue_csv = next((out / "tables").glob("*glue-table*.csv"))
    tab = pd.read_csv(glue_csv)
    assert "paper DFL average (roberta-large)" not in tab
    # ours: final (round 3) mean-client accuracy in percent
    assert tab.set_index("method").loc["adf-lora", "sst2"] == pytest.approx(66.0)


def test_report_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "report", str(tmp_path / "no"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium installed (.ci/run installs it)")
def test_html_report_loads_in_browser(runs, tmp_path):
    html_path = make_report(runs, tmp_path / "rep")
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
         html_path.resolve().as_uri()], capture_output=True, text=True, timeout=120).stdout
    total = int(re.search(r'data-figures-total="(\d+)"', dom)[1])
    loaded = int(re.search(r'data-figures-loaded="(\d+)"', dom)[1])
    assert total >= 5 and loaded == total
    assert 'data-table="glue-table' in dom and 'data-table="runs"' in dom
