"""Re-running the checks on a finished run changes nothing in its directory but the check outputs
(``checks.json``, ``check_curves.parquet``), also when a user check raises: that check is one
``error:`` line and the other checks still run and are saved (issue: theory checks v3, bad input).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from adflora_analysis.cli import main
from adflora_analysis.config import load_config
from adflora_analysis.rundir import CHECK_OUTPUTS
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study

SMALL = dict(n_clients=4, rounds=6, local_steps=1, lr=0.05, rank=2, seeds=3, d_in=5, d_out=4,
             target_rank=2, samples_per_client=8, batch_size=4, constants_every=0,
             topology_samples=200, switch_interval=2, methods=["adf-lora", "lora"],
             topology={"graph": "encounter", "weights": "metropolis", "q": 0.5})

RAISES = '''
from adflora_analysis.theory import register_check

@register_check("always-raises")
def _raises(ctx):
    raise ValueError("planted failure")
'''


def snapshot(run) -> dict[str, str]:
    """SHA-256 of every file under ``run`` (relative path -> hex digest)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rerun") / "run"
    run_study(load_config(SyntheticConfig, data=SMALL), out, progress=False)
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    got = capsys.readouterr()
    return e.value.code, got.out, got.err


def test_rerun_touches_only_check_outputs(run, capsys, tmp_path):
    user = tmp_path / "raising.py"
    user.write_text(RAISES)
    code, _, err = cli(capsys, "synthetic", "check", str(run), "--json")
    assert code == 0, err
    before = snapshot(run)
    assert set(CHECK_OUTPUTS) <= set(before)
    code, out, err = cli(capsys, "synthetic", "check", str(run), "--json",
                         "--checks", str(user))
    assert code == 2                                      # the user check's error
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "planted failure" in lines[0] and "(hint:" in lines[0], err
    assert "Traceback" not in err
    res = json.loads(out)["results"]
    assert any(r["check"] == "always-raises" and r["status"] == "error" for r in res)
    assert sum(r["status"] != "error" for r in res) >= 4     # the built-ins still ran
    after = snapshot(run)
    assert set(after) == set(before)                     # no file added or removed
    changed = {f for f in before if before[f] != after[f]}
    assert changed <= set(CHECK_OUTPUTS), changed
    saved = json.loads((run / "checks.json").read_text())["results"]
    assert any(r["check"] == "always-raises" for r in saved)  # and the results were saved
