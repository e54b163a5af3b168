"""TOML written by :func:`dump_toml` (tomli-w) reads back equal, any Unicode included, and a
run whose variant label is outside the BMP can be resumed, checked and reported."""

from __future__ import annotations

import contextlib
import io
import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adflora_analysis.cli import main
from adflora_analysis.config import dump_toml

ASTRAL = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF,
                       blacklist_categories=("Cs",))
TEXT = st.text() | st.text(ASTRAL | st.sampled_from(list('"\\\n\r\t\'\x00\x7f =[]#')))
KEY = TEXT
SCALAR = (TEXT | st.integers(-(2**63), 2**63 - 1) | st.booleans()
          | st.floats(allow_nan=False))
VALUE = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(KEY, inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEY, VALUE, max_size=6))
def test_dump_then_load_is_equal(data):
    assert tomllib.loads(dump_toml(data)) == data


@given(st.text(), st.text())
def test_any_string_round_trips(key, value):
    assert tomllib.loads(dump_toml({key: value, "t": {key: [value]}})) == {
        key: value, "t": {key: [value]}}


def test_none_omitted_and_order_kept():
    text = dump_toml({"b": 1, "a": None, "t": {"x": None, "y": "z"}, "c": [1.5, math.inf]})
    assert text.splitlines()[:2] == ["b = 1", "c = ["] or text.startswith("b = 1\nc = [")
    assert tomllib.loads(text) == {"b": 1, "t": {"y": "z"}, "c": [1.5, math.inf]}
    assert dump_toml({"p": Path("a/b"), "tup": (1, 2)}) == 'p = "a/b"\ntup = [\n    1,\n    2,\n]\n'


def test_astral_label_was_broken_by_the_old_writer():
    """The old writer wrote "\\ud835\\udf02" (a surrogate pair), which TOML refuses."""
    assert tomllib.loads(dump_toml({"label": "𝜂 small"}))["label"] == "𝜂 small"
    assert "\\ud" not in dump_toml({"label": "𝜂 small"})


TINY = dict(n_clients=4, rounds=3, local_steps=1, lr=0.05, rank=2, seeds=2, d_in=5, d_out=4,
            target_rank=2, samples_per_client=8, batch_size=4, constants_every=3,
            topology_samples=100, switch_interval=2, checkpoint_every=2, methods=["adf-lora"],
            topology={"graph": "ring", "weights": "metropolis"},
            variants=[{"label": "𝜂 small", "lr": 0.01}, {"label": "base"}])


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``adflora ARGV`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
    return e.value.code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def eta_run(tmp_path_factory) -> Path:
    """A finished tiny synthetic run whose first variant is labelled "𝜂 small"."""
    d = tmp_path_factory.mktemp("eta")
    (d / "eta.toml").write_text(dump_toml(TINY), encoding="utf-8")
    rc, _, err = cli("synthetic", "run", str(d / "eta.toml"), "--out", str(d / "run"),
                     "--no-progress")
    assert rc == 0, err
    return d / "run"


def test_eta_small_variant_run_resume_check_collect(eta_run):
    written = tomllib.loads((eta_run / "config.toml").read_text(encoding="utf-8"))
    assert written["variants"][0]["label"] == "𝜂 small"
    rc, _, err = cli("synthetic", "run", "--resume", str(eta_run), "--no-progress")
    assert rc == 0 and "already done" in err, err
    rc, out, err = cli("synthetic", "check", str(eta_run), "--no-save", "--json")
    assert rc == 0, err
    assert "𝜂 small" in {r["variant"] for r in json.loads(out)["results"]}
    from adflora_analysis.reports.collect import collect_run  # what `report` reads first

    assert collect_run(eta_run).config["variants"][0]["label"] == "𝜂 small"


@pytest.mark.slow
def test_eta_small_variant_report(eta_run, tmp_path):
    """The whole report (about 80 s here: every figure)."""
    rc, out, err = cli("report", str(eta_run), "--out", str(tmp_path / "rep"))
    assert rc == 0, err
    assert "𝜂 small" in (tmp_path / "rep" / "report.md").read_text(encoding="utf-8")
