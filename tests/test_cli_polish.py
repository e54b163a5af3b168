"""CLI polish: -h / -V, shell completion, --json, --dry-run estimates without torch, --resume
on a finished run, configs list descriptions, and docs/cli.md regenerated from real output."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adflora_analysis.cli import main
from adflora_analysis.config import dump_toml

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg", "COLUMNS": "120"}


def cli(*argv: str) -> tuple[int, str, str]:
    """``adflora ARGV`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
    return e.value.code or 0, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------- -h, -V
@pytest.mark.parametrize("argv", [[], ["configs"], ["configs", "list"], ["topology"],
                                  ["topology", "inspect"], ["synthetic", "run"],
                                  ["synthetic", "check"], ["glue", "run"], ["glue", "tasks"],
                                  ["report"], ["export"], ["demo"]])
def test_dash_h_is_help_on_every_command(argv):
    rc, out, err = cli(*argv, "-h")
    assert rc == 0, err
    assert "Usage: " in out and "--help" in out and " -h " in out


def test_dash_capital_v_prints_the_version():
    from adflora_analysis import __version__

    assert cli("-V")[:2] == (0, f"adflora-analysis {__version__}\n")
    assert cli("--version")[1] == cli("-V")[1]


# ---------------------------------------------------------------------------- completion
def test_completion_is_offered_once_and_its_bash_script_completes():
    rc, out, _ = cli("--help")
    assert "--show-completion" in out
    for sub in (["topology"], ["synthetic", "run"], ["report"]):
        assert "completion" not in cli(*sub, "--help")[1], sub   # only at the top
    script = subprocess.run([shutil.which("adflora") or "adflora", "--show-completion", "bash"],
                            capture_output=True, text=True, env=ENV, timeout=60)
    assert script.returncode == 0 and script.stdout.strip(), script.stderr
    assert "adflora" in script.stdout and "complete " in script.stdout
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    probe = ('source <(adflora --show-completion bash); COMP_WORDS=(adflora top); '
             'COMP_CWORD=1; _adflora_completion adflora; echo "${COMPREPLY[*]}"')
    done = subprocess.run([bash, "-c", probe], capture_output=True, text=True, env=ENV,
                          timeout=60)
    assert done.stdout.split() == ["topology"], done.stderr
    assert "not supported" not in done.stderr


# ---------------------------------------------------------------------------- --json
def test_configs_list_json_and_lines_not_cut_mid_word():
    from adflora_analysis.configs import list_configs

    rc, out, _ = cli("configs", "list", "--json")
    data = json.loads(out)
    assert rc == 0 and {d["name"] for d in data} >= {"synthetic/bounds", "glue_runs/smoke"}
    full = {d["name"]: d["description"] for d in data}
    rc, out, _ = cli("configs", "list")
    for line in out.splitlines():
        name, shown = line.split(None, 1)
        text = shown.removesuffix("…")
        assert full[name].startswith(text), line
        rest = full[name][len(text):]
        assert not rest or rest[0] in " ,;:.(", line   # cut between words
        assert shown.endswith(("…", ".", "?")) or shown == full[name], line
        assert shown.count("(") == shown.count(")"), line
    assert len(out.splitlines()) == len(list_configs())


def test_topology_inspect_and_glue_tasks_json():
    rc, out, _ = cli("topology", "inspect", "--graph", "ring", "--n", "6", "--json")
    assert rc == 0 and json.loads(out)["n"] == 6
    rc, out, _ = cli("glue", "tasks", "--json")
    assert rc == 0 and "sst2" in {t["name"] for t in json.loads(out)}


def test_topology_sweep_json(tmp_path):
    rc, out, err = cli("topology", "sweep", "--n", "4", "--samples", "100", "--out",
                       str(tmp_path / "sw"), "--json")
    assert rc == 0, err
    data = json.loads(out.strip().splitlines()[-1])
    assert set(data["p"]) >= {"metropolis"} and data["references"]
    assert Path(data["files"]["parquet"]).is_file()


def test_dry_run_json_for_synthetic_and_glue():
    rc, out, err = cli("synthetic", "run", "bounds", "--dry-run", "--json", "seeds=2")
    data = json.loads(out)
    assert rc == 0 and len(data["jobs"]) == 4 and data["config"]["seeds"] == 2, err
    assert all(j["seconds"] > 0 for j in data["jobs"])
    rc, out, err = cli("glue", "run", "smoke", "--dry-run", "--json", "seeds=[0,1]")
    data = json.loads(out)
    assert rc == 0 and len(data["jobs"]) == 8 and data["jobs"][0]["seconds"] is None, err


TINY = dict(n_clients=4, rounds=3, local_steps=1, lr=0.05, rank=2, seeds=2, d_in=5, d_out=4,
            target_rank=2, samples_per_client=8, batch_size=4, constants_every=3,
            topology_samples=100, switch_interval=2, methods=["adf-lora", "lora"],
            topology={"graph": "ring", "weights": "metropolis"})


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("done")
    (d / "tiny.toml").write_text(dump_toml(TINY), encoding="utf-8")
    rc, out, err = cli("synthetic", "run", str(d / "tiny.toml"), "--out", str(d / "run"),
                       "--no-progress", "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["status"] == "done" and summary["method_seed_rounds"] == 2 * 2 * 3
    return d / "run"


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- --resume done
def test_resume_on_a_done_run_says_so_and_writes_nothing(done_run):
    before = _snapshot(done_run)
    rc, out, err = cli("synthetic", "run", "--resume", str(done_run))
    assert rc == 0 and out == ""
    assert err.strip() == (f"run {done_run} is already done: nothing to resume (hint: read it "
                           f"with `adflora synthetic check {done_run}`, or run it again with "
                           "--overwrite)")
    assert _snapshot(done_run) == before


def test_resume_with_a_changed_key_on_a_done_run_is_still_refused(done_run):
    before = _snapshot(done_run)
    rc, _, err = cli("synthetic", "run", "--resume", str(done_run), "lr=0.5")
    assert rc == 2 and "error:" in err and "already done" not in err
    assert _snapshot(done_run) == before


def test_glue_resume_on_a_done_run_says_so(tmp_path):
    from adflora_analysis.rundir import RunDir, init_run_dir, make_meta

    run = RunDir(tmp_path / "g")
    init_run_dir(run, {"rounds": 3}, make_meta([0], kind="glue", status="done"))
    before = _snapshot(run.path)
    rc, _, err = cli("glue", "run", "--resume", str(run.path))
    assert rc == 0 and "is already done: nothing to resume" in err
    assert "adflora report" in err and _snapshot(run.path) == before


# ---------------------------------------------------------------------------- --dry-run
def test_dry_run_prints_a_time_estimate_per_job():
    rc, out, _ = cli("synthetic", "run", "bounds", "--dry-run")
    lines = [ln for ln in out.splitlines() if ln.startswith("#   time ")]
    assert rc == 0 and len(lines) == 4 and all(ln.endswith(" s") for ln in lines)
    assert "# Estimated time: " in out
    rc, out, _ = cli("glue", "run", "smoke", "--dry-run")
    assert "no" in out.split("# Estimated time:")[1].split("\n")[0]


def test_dry_run_imports_no_torch():
    code = ("import sys\nfrom adflora_analysis.cli import main\n"
            "try:\n    main(['synthetic', 'run', 'bounds', '--dry-run'])\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert "# Estimated time" in done.stdout, done.stderr
    assert "TORCH False" in done.stderr


def test_help_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys\nfrom adflora_analysis.cli "
                           "import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
                           "    pass\nprint('TORCH', 'torch' in sys.modules)"],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert "TORCH False" in done.stdout, done.stderr


# ---------------------------------------------------------------------------- docs/cli.md
def _make_cli_md():
    spec = importlib.util.spec_from_file_location("make_cli_md", ROOT / "docs" / "make_cli_md.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_make_cli_md_check_catches_a_changed_word_not_a_last_digit():
    mod = _make_cli_md()
    page = "x\n6 cross-term adf-lora held 0.319\n"
    assert mod.first_difference(page, page.replace("0.319", "0.3191")) is None
    diff = mod.first_difference(page, page.replace("held", "VIOLATED"))
    assert diff is not None and "line 2" in diff
    assert mod.first_difference(page, page + "more\n") is not None
    assert mod.normalise("done in 12.5s at /x") == "done in <time> at /x"


@pytest.mark.slow
def test_committed_docs_cli_md_is_up_to_date():
    done = subprocess.run([sys.executable, str(ROOT / "docs" / "make_cli_md.py"), "--check"],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "docs/cli.md is up to date" in done.stderr
