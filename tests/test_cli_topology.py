"""``adflora topology inspect`` and ``sweep`` through the real entry point (docs/architecture.md
§8)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from adflora_analysis.cli import main

KEYS = ("n", "graph", "weights", "doubly_stochastic", "symmetric", "connected", "lambda2",
        "lambda_n", "spectral_gap", "p", "p_stderr", "second_moment_rate")


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def inspect_json(capsys, *args: str) -> dict:
    code, out, err = run(capsys, "topology", "inspect", *args, "--json")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1  # exactly one JSON object
    return json.loads(out)


def test_inspect_ring_closed_form(capsys):
    d = inspect_json(capsys, "--graph", "ring", "--n", "10", "--weights", "metropolis")
    assert set(KEYS) <= set(d)
    lam2 = 1 / 3 + 2 / 3 * math.cos(2 * math.pi / 10)
    assert d["lambda2"] == pytest.approx(lam2, abs=1e-12)
    assert d["lambda_n"] == pytest.approx(1 / 3 + 2 / 3 * math.cos(2 * math.pi * 5 / 10))
    assert d["spectral_gap"] == pytest.approx(1 - lam2, abs=1e-12)
    assert d["p"] == pytest.approx(1 - lam2 ** 2, abs=1e-12) and d["p_stderr"] == 0
    assert d["second_moment_rate"] == pytest.approx(lam2 ** 2, abs=1e-12)
    assert d["doubly_stochastic"] and d["symmetric"] and d["connected"]


def test_inspect_encounter_paper_setting(capsys):
    d = inspect_json(capsys, "--graph", "encounter", "--q", "0.1", "--n", "10",
                     "--samples", "5000", "--seed", "1")
    assert d["p_method"] == "monte-carlo" and d["p_stderr"] > 0
    assert abs(d["p"] - 0.3655) < 5 * d["p_stderr"] + 0.002
    assert d["connected"] and d["doubly_stochastic"] and d["spectral_gap"] > 0


def test_inspect_disconnected_is_reported(capsys):
    d = inspect_json(capsys, "--graph", "two-cliques", "--param", "bridges=0", "--n", "6")
    assert d["connected"] is False and d["p"] == 0 and d["spectral_gap"] == 0


def test_inspect_uniform_is_flagged_and_server_is_exact(capsys):
    d = inspect_json(capsys, "--graph", "star", "--n", "5", "--weights", "uniform")
    assert d["doubly_stochastic"] is False
    d = inspect_json(capsys, "--graph", "ring", "--n", "5", "--weights", "server")
    assert d["p"] == 1 and d["spectral_gap"] == 1


def test_inspect_matrix_files(capsys, tmp_path):
    W = np.full((4, 4), 0.25)
    np.save(tmp_path / "W.npy", W)
    np.savetxt(tmp_path / "W.csv", W, delimiter=",")
    for f in ("W.npy", "W.csv"):
        d = inspect_json(capsys, "--matrix", str(tmp_path / f))
        assert d["n"] == 4 and d["p"] == 1 and d["graph"] == "matrix"


def test_inspect_table(capsys):
    code, out, _ = run(capsys, "topology", "inspect", "--graph", "hypercube", "--n", "8")
    assert code == 0 and "spectral_gap" in out and "0.5" in out


@pytest.mark.parametrize("args, message", [
    (["--graph", "rign", "--n", "4"], "unknown graph 'rign'; valid:"),
    (["--graph", "ring", "--n", "1"], "too few"),
    (["--graph", "encounter", "--n", "4", "--q", "0"], r"outside \(0, 1\]"),
    (["--graph", "encounter", "--n", "4", "--q", "1.5"], r"outside \(0, 1\]"),
    (["--graph", "encounter", "--n", "4"], "needs an encounter probability"),
    (["--graph", "ring", "--n", "4", "--weights", "magic"], "unknown weights 'magic'"),
    (["--graph", "ring"], "--n is missing"),
    (["--graph", "hypercube", "--n", "6"], "power of 2"),
    (["--matrix", "{tmp}/rect.csv"], "not square"),
    (["--matrix", "{tmp}/nan.csv"], "NaN"),
    (["--matrix", "{tmp}/neg.csv"], "negative"),
    (["--matrix", "{tmp}/missing.npy"], "does not exist"),
    (["--graph", "edgelist", "--n", "3", "--param", "path={tmp}/bad.txt"], "does not parse"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, args, message):
    (tmp_path / "rect.csv").write_text("0.5,0.5,0\n0.5,0.5,0\n")
    (tmp_path / "nan.csv").write_text("0.5,nan\n0.5,0.5\n")
    (tmp_path / "neg.csv").write_text("1.5,-0.5\n-0.5,1.5\n")
    (tmp_path / "bad.txt").write_text("0 1 2 3 4\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run(capsys, "topology", "inspect", *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), lines[0]


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "topology", "inspect",
                        "--graph", "ring", "--n", "1"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_sweep_small(capsys, tmp_path):
    out = tmp_path / "sweep"
    code, text, err = run(capsys, "topology", "sweep", "--n", "8", "--samples", "300",
                          "--out", str(out))
    assert code == 0, err
    for f in ("sweep.parquet", "sweep.csv", "sweep.png", "meta.json", "config.toml"):
        assert (out / f).is_file(), f
    df = pd.read_parquet(out / "sweep.parquet")
    for col in ("kind", "graph", "rule", "q", "p", "p_stderr", "second_moment_rate"):
        assert col in df.columns
    enc = df[df["graph"] == "encounter"]
    assert set(enc["rule"]) == {"metropolis", "max-degree", "pairwise", "uniform"}
    assert enc["q"].min() == 0.01 and enc["q"].max() == 0.5
    assert {"ring", "torus", "hypercube", "complete"} <= set(df["graph"])
    assert (df["p"] <= 1 + 1e-12).all()
    # p grows with q for every rule (well beyond Monte Carlo noise at the grid's ends)
    for _, g in enc.groupby("rule"):
        g = g.sort_values("q")
        assert g["p"].iloc[-1] > g["p"].iloc[0] + 0.3
    assert df.loc[df["graph"] == "complete", "p"].item() == 1.0
    assert json.loads((out / "meta.json").read_text())["seeds"] == 0
    assert pd.read_csv(out / "sweep.csv").shape == df.shape
    assert "sweep.png" in text


def test_sweep_bad_input(capsys, tmp_path):
    code, _, err = run(capsys, "topology", "sweep", "--n", "1", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
