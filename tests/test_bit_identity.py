"""The round's extension points change nothing by default: with ``periodic(T)`` and the
synchronous mixer, every shipped synthetic study (at the reduced size of
``tests/data/make_reference_rows.py``) and a short GLUE run give bit-identical metrics to the
rows saved from the code before the extension points existed (commit 543a052)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"
_spec = importlib.util.spec_from_file_location("make_reference_rows",
                                               DATA / "make_reference_rows.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)
ROOT = Path(__file__).resolve().parents[1]


def assert_same_rows(new: pd.DataFrame, old: pd.DataFrame, key: list[str],
                     skip: tuple[str, ...] = ()) -> None:
    """Every column of ``old`` is in ``new`` with exactly the same values (NaN == NaN)."""
    cols = [c for c in old.columns if c not in skip]
    missing = [c for c in cols if c not in new.columns]
    assert not missing, f"columns gone: {missing}"
    assert len(new) == len(old)
    a = new[cols].sort_values(key).reset_index(drop=True)
    b = old[cols].sort_values(key).reset_index(drop=True)
    for c in cols:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype.kind == "f" or y.dtype.kind == "f":
            same = (x == y) | (np.isnan(x.astype(float)) & np.isnan(y.astype(float)))
        else:
            same = x == y
        assert same.all(), f"{c}: {int((~same).sum())} rows differ, e.g. {x[~same][:3]} vs " \
                           f"{y[~same][:3]}"


@pytest.mark.parametrize("study", ref.STUDIES)
def test_shipped_synthetic_study_is_bit_identical(study):
    old = pd.read_parquet(DATA / "reference_synthetic.parquet")
    old = old[old.study == study].drop(columns="study")
    new = ref.synthetic_rows(ROOT, study).drop(columns="study")
    assert_same_rows(new, old, ["job", "seed", "round", "layer"])


def test_a_planted_change_is_caught():
    """The comparison itself can fail: one ulp in one cell is found."""
    old = pd.read_parquet(DATA / "reference_synthetic.parquet")
    old = old[old.study == "bounds"].drop(columns="study").reset_index(drop=True)
    new = old.copy()
    new.loc[7, "xi_B"] = np.nextafter(new.loc[7, "xi_B"], np.inf)
    with pytest.raises(AssertionError, match="xi_B: 1 rows differ"):
        assert_same_rows(new, old, ["job", "seed", "round", "layer"])


def test_short_glue_run_is_bit_identical(tiny, tmp_path):
    """Metrics and every evaluation row equal the reference; ``bytes_sent`` now also counts the
    gossiped classifier head (``train_head``), which the reference left out."""
    from adflora_analysis.config import load_config
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.runner import run_glue

    cfg = load_config(GlueConfig, data={**ref.GLUE, "model": str(tiny)})
    run_glue(cfg, tmp_path / "run")
    m = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    e = pd.read_parquet(tmp_path / "run" / "eval.parquet")
    old_m = pd.read_parquet(DATA / "reference_glue_metrics.parquet")
    old_e = pd.read_parquet(DATA / "reference_glue_eval.parquet")
    key = ["job", "round", "layer"]
    assert_same_rows(m, old_m, key, skip=("bytes_sent",))
    assert_same_rows(e, old_e, ["job", "round", "client", "split", "metric"])
    a = m.sort_values(key).reset_index(drop=True)
    b = old_m.sort_values(key).reset_index(drop=True)
    tot = a.layer == "all"
    new, old = a.bytes_sent[tot].to_numpy(), b.bytes_sent[tot].to_numpy()
    assert ((new > old) | (old == 0) & (new == 0)).all() and (new > old).any()
