"""Verdicts carry the run's state: ``check --json`` says the status and completeness,
``checks.json`` records the rounds, status and config it covered and
:func:`load_saved_checks` refuses it once stale; bad option values, one-seed runs and failed
saves are one line each."""

from __future__ import annotations

import errno
import json
import re
import shutil

import pytest

from adflora_analysis.cli import main
from adflora_analysis.config import load_config
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import Lock, RunDir
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import load_saved_checks

SMALL = dict(n_clients=4, rounds=8, local_steps=1, lr=0.05, rank=2, seeds=3, d_in=5, d_out=4,
             target_rank=2, samples_per_client=8, batch_size=4, constants_every=0,
             topology_samples=200, switch_interval=2, checkpoint_every=2,
             methods=["adf-lora", "lora"],
             topology={"graph": "encounter", "weights": "metropolis", "q": 0.5})


def cfg(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**SMALL, **kw})


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    got = capsys.readouterr()
    assert "Traceback" not in got.err, got.err
    return e.value.code, got.out, got.err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


@pytest.fixture
def stopped(tmp_path):
    out = tmp_path / "run"
    run_study(cfg(), out, progress=False, stop_after=3)
    assert RunDir(out).status == "stopped"
    return out


def test_json_of_a_stopped_run_says_stopped_and_incomplete(stopped, capsys):
    code, out, err = cli(capsys, "synthetic", "check", str(stopped), "--json")
    assert code == 0, err
    doc = json.loads(out)
    run = doc["run"]
    assert run["status"] == "stopped" and run["complete"] is False
    assert run["path"] == str(stopped) and "is stopped" in run["note"]
    assert list(run["rounds_covered"]) == ["adf-lora"]      # stopped in its first job
    assert run["rounds_covered"]["adf-lora"] < SMALL["rounds"] - 1
    assert run["config_hash"] == RunDir(stopped).meta.get("config_hash")
    assert doc["saved"] is True and doc["results"] and "warning: " in err
    saved = json.loads((stopped / "checks.json").read_text())
    assert saved["format"] == "adflora-checks/2"
    assert saved["run"]["status"] == "stopped"
    assert saved["run"]["rounds_covered"] == run["rounds_covered"]
    results, note = load_saved_checks(stopped)   # still the same run: fresh
    assert note is None and results == json.loads(json.dumps(doc["results"]))


def test_saved_checks_are_stale_once_the_run_is_resumed(stopped, capsys, tmp_path):
    code, _, _ = cli(capsys, "synthetic", "check", str(stopped), "--json")
    assert code == 0
    old = tmp_path / "old_checks.json"
    shutil.copy(stopped / "checks.json", old)
    run_study(cfg(), stopped, progress=False, resume=True)
    assert RunDir(stopped).status == "done"
    shutil.copy(old, stopped / "checks.json")        # handed over with the finished run
    results, why = load_saved_checks(stopped)
    assert results is None and "stale" in why and "stopped" in why and "done" in why
    doc = json.loads(old.read_text())
    doc["run"]["status"] = "done"                     # same status, other rounds
    (stopped / "checks.json").write_text(json.dumps(doc))
    results, why = load_saved_checks(stopped)
    assert results is None and "stale" in why and "round" in why
    code, _, _ = cli(capsys, "synthetic", "check", str(stopped), "--json")
    assert code == 0
    results, why = load_saved_checks(stopped)
    assert why is None and results
    doc = json.loads((stopped / "checks.json").read_text())
    doc["run"]["config_hash"] = "0" * 16              # checked under another config
    (stopped / "checks.json").write_text(json.dumps(doc))
    results, why = load_saved_checks(stopped)
    assert results is None and "config" in why


def test_a_damaged_checks_json_is_one_reason(stopped):
    for text, expect in [
            ("{not json", "damaged"), ("[1, 2]", "damaged"), ('["x"]', "damaged"),
            ("42", "not a checks"), ('{"format": "other"}', "not a checks"),
            ('{"format": "adflora-checks/2", "results": "x", "run": {}}', "damaged"),
            ('{"format": "adflora-checks/2", "results": [], "run": []}', "damaged"),
            ('{"format": "adflora-checks/2", "results": [{"check": 1}], "run": {}}', "damaged"),
            ("\xff\xfe", "damaged")]:
        (stopped / "checks.json").write_text(text, encoding="latin-1")
        results, why = load_saved_checks(stopped)
        assert results is None and expect in why and "\n" not in why, (text, why)


def test_a_legacy_list_is_accepted_but_unverified(stopped):
    legacy = [{"check": "stationarity", "number": "5", "method": "lora", "variant": "base",
               "status": "held", "ratio": 2.0, "ratio_ci": [1.5, 2.5]}]
    (stopped / "checks.json").write_text(json.dumps(legacy))
    results, why = load_saved_checks(stopped)
    assert results == legacy and "unverified" in why
    (stopped / "checks.json").unlink()
    results, why = load_saved_checks(stopped)
    assert results is None and why.startswith("no checks.json")
    with pytest.raises(AdfloraError, match="does not exist"):
        load_saved_checks(stopped.parent / "nowhere")


def test_checks_of_a_running_run_are_not_saved(stopped, capsys):
    RunDir(stopped).update_meta(status="running")
    lock = Lock(stopped)
    lock.acquire()                                    # a live runner holds the run
    try:
        assert RunDir(stopped).status == "running"
        code, out, err = cli(capsys, "synthetic", "check", str(stopped), "--json")
    finally:
        lock.release()
    assert code == 0 and json.loads(out)["run"]["status"] == "running"
    assert "checks.json not saved" in err and not (stopped / "checks.json").exists()
    assert json.loads(out)["saved"] is False
    doc = {"format": "adflora-checks/2", "results": [],
           "run": {"status": "running", "rounds_covered": {}, "config_hash": None}}
    (stopped / "checks.json").write_text(json.dumps(doc))   # as another tool might write
    results, why = load_saved_checks(stopped)
    assert results is None and "stale" in why


def test_non_finite_or_non_positive_levels_are_refused(stopped, capsys):
    for opt, val in (("--z", "nan"), ("--z", "inf"), ("--z", "-inf"), ("--effect", "nan"),
                     ("--effect", "inf"), ("--effect", "0"), ("--check-timeout", "nan")):
        code, _, err = cli(capsys, "synthetic", "check", str(stopped), opt, val)
        errs = error_lines(err)
        assert code == 2 and len(errs) == 1 and errs[0].startswith(f"error: {opt} "), err
    assert not (stopped / "checks.json").exists()


def test_a_one_seed_run_says_a_test_needs_two_seeds(tmp_path, capsys):
    out = tmp_path / "run"
    run_study(cfg(seeds=1, rounds=6), out, progress=False)
    code, text, err = cli(capsys, "synthetic", "check", str(out), "--no-save")
    assert code == 0, err
    assert not re.search(r"\bnan\b|\binf\b|± -|\[-\s*\]", text, re.I), text
    under = [ln for ln in text.splitlines() if " underpowered " in ln]
    assert under and all("two seeds" in ln for ln in under)
    code, text, _ = cli(capsys, "synthetic", "check", str(out), "--no-save", "--json")
    res = json.loads(text)["results"]
    assert all(r["z"] is None for r in res if r["status"] == "underpowered"
               and r["test"] == "one-sided bound")


@pytest.mark.parametrize("errno_, what", [(errno.ENOSPC, "the disk is full"),
                                          (errno.EROFS, "read-only")])
def test_a_failed_save_is_one_error_line_after_the_results(stopped, capsys, monkeypatch,
                                                            errno_, what):
    from adflora_analysis import fileio

    def full(path, *a, **k):
        raise OSError(errno_, "no", str(path))

    code, _, _ = cli(capsys, "synthetic", "check", str(stopped))
    assert code == 0 and (stopped / "checks.json").exists()
    monkeypatch.setattr(fileio, "write_json", full)
    code, out, err = cli(capsys, "synthetic", "check", str(stopped))
    assert code == 2
    assert "results:" in out and "stationarity" in out          # printed first
    errs = error_lines(err)
    assert len(errs) == 1 and what in errs[0] and "checks.json" in errs[0], err
    assert err.rstrip().splitlines()[-1] == errs[0]
    assert not (stopped / "checks.json").exists()   # the earlier one does not pass as new
