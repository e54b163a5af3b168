"""--dry-run: the resolved config (after overrides) and the jobs, as loadable TOML; no files."""

from __future__ import annotations

import re
import tomllib

import pytest

from adflora_analysis.cli import main
from adflora_analysis.config import load_config
from adflora_analysis.configs import resolve_config


def _dry(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().out


def test_synthetic_dry_run_prints_the_config_and_jobs_and_writes_nothing(tmp_path, monkeypatch,
                                                                         capsys):
    from adflora_analysis.synthetic.config import SyntheticConfig

    monkeypatch.chdir(tmp_path)
    out = _dry(["synthetic", "run", "t_ablation", "--out", "runs/x", "--dry-run", "seeds=3",
                "lr=0.02"], capsys)
    assert list(tmp_path.iterdir()) == []                      # nothing written
    printed = load_config(SyntheticConfig, data=tomllib.loads(out))
    want = load_config(SyntheticConfig, resolve_config("t_ablation"), ["seeds=3", "lr=0.02"])
    assert printed == want and printed.lr == 0.02
    jobs = re.findall(r"^#   job (\d+)/(\d+)\s+(\S+)\s+T = (\d+)\s+seeds 0-2$", out, re.M)
    assert len(jobs) == 10 and {j[1] for j in jobs} == {"10"}
    assert ("1", "10", "switch_interval=1/adf-lora", "1") in jobs
    assert ("10", "10", "switch_interval=20/rolora", "20") in jobs
    assert "runs/x (new)" in out


def test_glue_dry_run_lists_one_job_per_method_and_seed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _dry(["glue", "run", "smoke", "--dry-run", "seeds=[3,4]",
                "methods=['adf-lora','lora']"], capsys)
    assert list(tmp_path.iterdir()) == []
    keys = re.findall(r"^#   job \d+/4\s+(\S+)", out, re.M)
    assert keys == ["adf-lora/seed=3", "adf-lora/seed=4", "lora/seed=3", "lora/seed=4"]
    assert "(no --out given)" in out and tomllib.loads(out)["seeds"] == [3, 4]


def test_dry_run_still_refuses_a_bad_override(capsys):
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "run", "bounds", "--dry-run", "lr=fast"])
    assert e.value.code == 2 and "lr" in capsys.readouterr().err
