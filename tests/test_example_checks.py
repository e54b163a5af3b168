"""The shipped user-check example (examples/checks/my_checks.py) runs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adflora_analysis.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "checks" / "my_checks.py"
TINY = ("n_clients=4", "rounds=6", "seeds=2", "d_in=5", "d_out=4", "rank=2", "target_rank=2",
        "samples_per_client=8", "batch_size=4", "constants_every=0", "topology_samples=200",
        'methods=["adf-lora","lora"]')


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    cap = capsys.readouterr()
    return int(e.value.code or 0), cap.out, cap.err


def test_shipped_user_checks_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "synthetic", "run", "bounds", "--out", str(run), *TINY)
    assert code == 0, err
    code, out, err = _cli(capsys, "synthetic", "check", str(run), "--json", "--no-save",
                          "--checks", str(EXAMPLE))
    assert code == 0, err
    res = json.loads(out)["results"]
    mine = [r for r in res if r["check"] in ("loss-below-start", "consensus-shrinks")]
    assert {(r["check"], r["method"]) for r in mine} == {
        (c, m) for c in ("loss-below-start", "consensus-shrinks") for m in ("adf-lora", "lora")}
    assert all(r["status"] != "error" for r in mine)


def test_report_and_export_print_json(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "synthetic", "run", "bounds", "--out", str(run), *TINY)
    assert code == 0, err
    code, out, err = _cli(capsys, "export", "tensorboard", str(run), "--logdir",
                          str(tmp_path / "tb"), "--json")
    assert code == 0, err
    assert json.loads(out) == {"logdir": str(tmp_path / "tb"), "run": str(run)}
    code, out, err = _cli(capsys, "report", str(run), "--out", str(tmp_path / "rep"), "--json")
    assert code == 0, err
    got = json.loads(out)
    assert Path(got["report"]).is_file() and got["runs"] == [str(run)]
