"""Fault injection: run directories protect what they hold (issue 15).

Every test plants one fault (a kill at some point, a torn/missing/damaged file, a second run,
a full or read-only disk, a non-finite metric, a huge seed or config, a signal) into a tiny
synthetic run (4 clients, d_in 5, 6 rounds) and checks the one-line outcome and that no result
is lost or mixed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from adflora_analysis import fileio
from adflora_analysis.cli import main
from adflora_analysis.config import dump_toml, load_config
from adflora_analysis.errors import AdfloraError, DivergenceError
from adflora_analysis.resources import Need
from adflora_analysis.rundir import (
    LOCK,
    RunDir,
    claim,
    claim_outputs,
    load_run,
    require_complete,
)
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study

TINY = dict(n_clients=4, rounds=6, local_steps=1, lr=0.05, rank=2, seeds=2, d_in=5, d_out=4,
            target_rank=2, samples_per_client=8, batch_size=4, constants_every=3,
            topology_samples=200, switch_interval=2, checkpoint_every=2,
            methods=["adf-lora", "rolora"], topology={"graph": "ring", "weights": "metropolis"})
KEY = ["method", "seed", "round", "layer"]
HARNESS = str(Path(__file__).with_name("_faults.py"))


def tiny(**kw) -> SyntheticConfig:
    return load_config(SyntheticConfig, data={**TINY, **kw})


def rows(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEY).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run every interrupted one must reproduce."""
    return rows(run_study(tiny(), tmp_path_factory.mktemp("ref") / "run", progress=False))


def cli(*argv: str) -> tuple[int, str]:
    """Run the CLI entry point in-process; (exit code, stderr)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(list(argv))
    return e.value.code, err.getvalue()


def one_error(err: str) -> str:
    """The one ``error:`` line of a command's stderr (progress lines may precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


def write_config(path: Path, **kw) -> Path:
    path.write_text(dump_toml({**TINY, **kw}))
    return path


def harness(fault: str, n: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, HARNESS, fault, str(n), "--", "adflora", *argv],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------------------- kills
@pytest.mark.parametrize("stop_after", [1, 5, 6, 7, 11])
def test_stop_anywhere_then_resume_is_exact(tmp_path, reference, stop_after):
    """A stop after any round (inside the first job, at its end, inside the second) resumes
    to exactly the uninterrupted rows."""
    out = tmp_path / "run"
    run_study(tiny(), out, progress=False, stop_after=stop_after)
    assert RunDir(out).status == "stopped"
    pd.testing.assert_frame_equal(rows(run_study(tiny(), out, progress=False, resume=True)),
                                  reference)
    assert RunDir(out).status == "done"


@pytest.mark.parametrize("n", [1, 4, 6, 11, 22, 23])
def test_sigkill_before_an_atomic_rename_then_recover(tmp_path, reference, n):
    """SIGKILL of a real process just before its n-th atomic rename: in this tiny run 1 is
    meta.json, 4 config.toml, 6 mixing.parquet, 11 a checkpoint inside the first job, 22
    metrics.parquet, 23 the final meta.json (the order may shift as the code changes; each
    kill leaves a temp file). The run never says "done" before its tables are on disk; the
    temp file is cleaned and the run resumes (or, killed before config.toml existed, is
    replaced with --overwrite) to exactly the uninterrupted rows, mixing.parquet included."""
    cfgp = write_config(tmp_path / "c.toml")
    out = tmp_path / "run"
    r = harness("kill-replace", n, "synthetic", "run", str(cfgp), "--out", str(out))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert list(out.glob(".*.tmp")) or list(out.glob("checkpoints/.*.tmp"))
    assert not (out / "meta.json").exists() or RunDir(out).meta.get("status") != "done"
    if (out / "config.toml").exists():
        df = run_study(tiny(), out, progress=False, resume=True)
    else:
        df = run_study(tiny(), out, progress=False, overwrite=True)
    pd.testing.assert_frame_equal(rows(df), reference)
    assert (out / "mixing.parquet").exists()
    assert not list(out.rglob("*.tmp"))


def test_sigkill_mid_append_leaves_a_torn_line_that_resume_drops(tmp_path, reference):
    cfgp = write_config(tmp_path / "c.toml")
    out = tmp_path / "run"
    r = harness("kill-append", 5, "synthetic", "run", str(cfgp), "--out", str(out))
    assert r.returncode == -signal.SIGKILL
    with open(out / "metrics.jsonl", "a") as f:  # as if killed inside the write
        f.write('{"method": "adf-lo')
    pd.testing.assert_frame_equal(rows(run_study(tiny(), out, progress=False, resume=True)),
                                  reference)


# ---------------------------------------------------------------------------- damaged files
def stopped_run(tmp_path, stop_after=9) -> Path:
    out = tmp_path / "run"
    run_study(tiny(), out, progress=False, stop_after=stop_after)
    return out


def test_broken_line_mid_file_is_refused_not_dropped(tmp_path):
    out = stopped_run(tmp_path)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[10] = lines[10][:25]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    # line 1 is the header (the run's config hash): 9 rows before line 11
    with pytest.raises(AdfloraError, match=r"line 11 is damaged \(9 good rows before it"):
        run_study(tiny(), out, progress=False, resume=True)
    with pytest.raises(AdfloraError, match="line 11 is damaged"):
        fileio.read_jsonl(out / "metrics.jsonl")


@pytest.mark.parametrize("damage, message", [
    ("delete", "round 0 of job 'adf-lora', seed 0 missing"),
    ("truncate", "round 5 of job 'adf-lora', seed 0 missing; rows are intact up to round 4"),
    ("duplicate", "holds round 1 of job 'adf-lora', seed 0, layer .* more than once"),
    ("stray", "holds rows of job\\(s\\) other-run"),
])
def test_rows_that_do_not_match_the_checkpoints_are_refused(tmp_path, damage, message):
    out = stopped_run(tmp_path)  # adf-lora done (6 rounds), rolora at round 3
    p = out / "metrics.jsonl"
    rs = fileio.read_jsonl(p)
    if damage == "delete":
        p.unlink()
    elif damage == "truncate":
        keep = [r for r in rs if not (r["job"] == "adf-lora" and r["round"] == 5)]
        keep.insert(0, fileio.jsonl_header(p))   # the run's own header line stays
        fileio.write_text(p, "".join(json.dumps(r) + "\n" for r in keep))
    elif damage == "duplicate":
        dup = [r for r in rs if r["job"] == "adf-lora" and r["round"] == 1]
        fileio.append_jsonl(p, dup)
    else:
        fileio.append_jsonl(p, [{**rs[0], "job": "other-run"}])
    with pytest.raises(AdfloraError, match=message):
        run_study(tiny(), out, progress=False, resume=True)


@pytest.mark.parametrize("name, content, message", [
    ("meta.json", None, "meta.json is missing"),
    ("meta.json", "{not json", "meta.json .* is corrupt"),
    ("progress.json", "[1, 2", "progress.json .* is corrupt"),
    ("progress.json", '{"done": 3}', "progress.json in .* is damaged"),
])
def test_damaged_meta_or_progress_is_one_line(tmp_path, name, content, message):
    out = stopped_run(tmp_path)
    if content is None:
        (out / name).unlink()
    else:
        (out / name).write_text(content)
    with pytest.raises(AdfloraError, match=message):
        run_study(tiny(), out, progress=False, resume=True)


def test_truncated_parquet_is_one_line_for_readers(tmp_path):
    out = tmp_path / "run"
    run_study(tiny(rounds=2), out, progress=False)
    data = (out / "metrics.parquet").read_bytes()
    (out / "metrics.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdfloraError, match="metrics.parquet' is damaged"):
        load_run(out).table("metrics")


# ---------------------------------------------------------------------------- one owner
def test_used_out_is_refused_and_overwrite_removes_only_toolkit_files(tmp_path):
    out = tmp_path / "run"
    run_study(tiny(rounds=2), out, progress=False)
    (out / "notes.txt").write_text("mine")
    (out / "checkpoints" / "my-model.pt").write_text("mine too")
    with pytest.raises(AdfloraError, match="already holds a synthetic run .status done"):
        run_study(tiny(rounds=2), out, progress=False)
    run_study(tiny(rounds=3), out, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "my-model.pt").read_text() == "mine too"
    assert pd.read_parquet(out / "metrics.parquet")["round"].max() == 2
    # a planted defect: a manifest that claims the user's file would delete it
    m = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**m, "files": [*m["files"], "notes.txt"]}))
    run_study(tiny(rounds=2), out, progress=False, overwrite=True)
    assert not (out / "notes.txt").exists()


def test_a_folder_of_user_files_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(AdfloraError, match="is not empty .1 entries not written by adflora"):
        run_study(tiny(rounds=2), tmp_path, progress=False)
    with pytest.raises(AdfloraError, match="has no manifest.json"):
        run_study(tiny(rounds=2), tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "data.csv").read_text() == "1,2\n"


def test_a_glue_run_folder_is_not_taken_by_a_synthetic_run(tmp_path):
    with claim(tmp_path / "g", "glue") as run:
        from adflora_analysis.rundir import init_run_dir, make_meta

        init_run_dir(run, {"task": "sst2"}, make_meta([0], kind="glue", status="done"))
    with pytest.raises(AdfloraError, match="holds a glue run, not a synthetic run"):
        run_study(tiny(rounds=2), tmp_path / "g", progress=False, overwrite=True)
    with pytest.raises(AdfloraError, match="holds a glue run, not a synthetic run"):
        load_run(tmp_path / "g", kind="synthetic")


def test_resume_reads_the_config_back_from_the_run_directory(tmp_path, reference):
    cfgp = write_config(tmp_path / "c.toml")
    out = tmp_path / "run"
    assert cli("synthetic", "run", str(cfgp), "--out", str(out), "lr=0.05")[0] == 0
    assert cli("synthetic", "run", "--resume", str(out))[0] == 0  # nothing repeated
    pd.testing.assert_frame_equal(rows(pd.read_parquet(out / "metrics.parquet")), reference)
    code, err = cli("synthetic", "run", "--resume", str(out), "lr=0.1")
    assert code == 2 and "the config differs in lr" in err


# ---------------------------------------------------------------------------- concurrency
def test_second_run_into_a_held_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    with claim(out, "synthetic"):
        with pytest.raises(AdfloraError, match=f"is in use by pid {os.getpid()} on"):
            run_study(tiny(rounds=2), out, progress=False)
        assert RunDir(out).status == "unknown"
    run_study(tiny(rounds=2), out, progress=False)  # released on exit
    assert not (out / LOCK).exists()


def test_two_real_processes_racing_for_one_folder(tmp_path):
    cfgp = write_config(tmp_path / "c.toml", rounds=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "adflora_analysis", "synthetic", "run", str(cfgp), "--out",
           str(out)]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
    codes = sorted(c for c, _ in results)
    assert codes == [0, 2], results
    err = [e for c, e in results if c == 2][0]
    err = one_error(err)
    assert "is in use by pid" in err or "already holds" in err
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "done"
    assert len(pd.read_parquet(out / "metrics.parquet")) == 2 * 2 * 4 * 2  # one run's rows


def test_stale_lock_of_a_dead_process_is_detected_and_named(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": dead.pid, "host": "h", "command": "x"}))
    run_study(tiny(rounds=2), out, progress=False)
    assert f"stale lock of pid {dead.pid} on h" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the disk
def test_out_naming_a_file_or_a_path_through_a_file_is_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for out, msg in ((f, "is a file, not a folder"), (f / "sub", "a part of the path is a file")):
        code, err = cli("synthetic", "run", str(write_config(tmp_path / "c.toml")), "--out",
                        str(out))
        assert code == 2 and msg in one_error(err)
    assert f.read_text() == "x"


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir()
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True)
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def make(options: str) -> Path:
        d = tmp_path / f"mnt{len(mounted)}"
        if not _mount_tmpfs(d, options):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_read_only_folder_is_one_line(tmp_path, tmpfs):
    ro = tmpfs("ro,size=64k")
    code, err = cli("synthetic", "run", str(write_config(tmp_path / "c.toml")), "--out",
                    str(ro / "run"))
    assert code == 2 and "read-only" in one_error(err)


def test_read_only_folder_without_root(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores permission bits (the tmpfs test covers root)")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    code, err = cli("synthetic", "run", str(write_config(tmp_path / "c.toml")), "--out",
                    str(d / "run"))
    assert code == 2 and "permission denied" in one_error(err)


def test_full_disk_on_a_small_filesystem_is_one_line(tmp_path, tmpfs):
    """A 48 KB tmpfs fills during the run: one line, every row on disk intact, no temp file
    left, and the run does not claim to be done."""
    out = tmpfs("size=48k") / "run"
    code, err = cli("synthetic", "run", str(write_config(tmp_path / "c.toml",
                    checkpoint_every=0, constants_every=0)), "--out", str(out))
    assert code == 2 and "the disk is full" in one_error(err)
    fileio.read_jsonl(out / "metrics.jsonl")   # damage mid-file would raise
    assert not list(out.rglob(".*.tmp"))
    assert RunDir(out).status != "done"


def test_disk_full_mid_run_is_one_line_and_keeps_every_row(tmp_path, monkeypatch, reference):
    """ENOSPC simulated at the 7th append (where no small filesystem can be mounted)."""
    out = tmp_path / "run"
    orig, seen = fileio.append_jsonl, {"n": 0}

    def full(path, rs, **kw):
        seen["n"] += 1
        if seen["n"] >= 7:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        orig(path, rs, **kw)

    monkeypatch.setattr(fileio, "append_jsonl", full)
    with pytest.raises(AdfloraError, match="disk is full"):
        run_study(tiny(), out, progress=False)
    monkeypatch.setattr(fileio, "append_jsonl", orig)
    assert RunDir(out).meta["status"] == "failed"
    pd.testing.assert_frame_equal(rows(run_study(tiny(), out, progress=False, resume=True)),
                                  reference)


def test_resources_are_refused_before_they_are_spent(tmp_path):
    with pytest.raises(AdfloraError, match=r"would need about .* of memory .*metric rows"):
        run_study(tiny(rounds=100_000_000), tmp_path / "a", progress=False)
    with pytest.raises(AdfloraError, match=r"would need about .* of memory .*problem data"):
        run_study(tiny(n_clients=4000, d_in=4000, d_out=4), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(AdfloraError, match=r"about 2.0 KB of disk .*; 1.0 KB is available"):
        Need(disk={"rows": 2048}).refuse_if_over(tmp_path, mem_avail=1e12, disk_free=1024)


# ---------------------------------------------------------------------------- divergence
def test_non_finite_metric_with_finite_factors_is_diverged(tmp_path, monkeypatch):
    from adflora_analysis.synthetic.problem import QuadraticProblem

    orig = QuadraticProblem.evaluate

    def evaluate(self, state, t):
        out = orig(self, state, t)
        if t == 2:
            out["grad_norm_sq"] = out["grad_norm_sq"].clone()
            out["grad_norm_sq"][1] = float("inf")
        return out

    monkeypatch.setattr(QuadraticProblem, "evaluate", evaluate)
    out = tmp_path / "run"
    with pytest.raises(DivergenceError, match=r"non-finite grad_norm_sq = inf at round 2 "
                       r"\(method adf-lora, seed 1"):
        run_study(tiny(), out, progress=False)
    assert RunDir(out).status == "diverged"
    df = pd.read_parquet(out / "metrics.parquet")
    assert sorted(df["round"].unique()) == [0, 1]
    assert "diverged" in require_complete(out)
    with pytest.raises(AdfloraError, match="is diverged"):
        require_complete(out, strict=True)


def test_check_on_partial_run_warns_and_strict_refuses(tmp_path):
    out = stopped_run(tmp_path, stop_after=3)
    code, err = cli("synthetic", "check", str(out), "--strict")
    assert code == 2 and "is stopped" in one_error(err)
    assert not (out / "checks.json").exists()


def test_resume_invalidates_earlier_checks(tmp_path):
    out = stopped_run(tmp_path)
    (out / "checks.json").write_text("[]")
    RunDir(out).record("checks.json")
    run_study(tiny(), out, progress=False, resume=True)
    assert not (out / "checks.json").exists()


# ---------------------------------------------------------------------------- inputs
def test_seeds_beyond_32_bits_are_distinct_and_beyond_64_refused(tmp_path):
    df = run_study(tiny(seeds=[0, 2 ** 32], rounds=2, methods=["adf-lora"]), tmp_path / "a",
                   progress=False)
    a = df[(df.layer == "all")].pivot(index="round", columns="seed", values="loss")
    assert not torch.allclose(torch.tensor(a[0].to_numpy()), torch.tensor(a[2 ** 32].to_numpy()))
    for seeds in ([2 ** 64], [-1]):
        with pytest.raises(AdfloraError, match="does not fit in 64 bits"):
            tiny(seeds=seeds)


@pytest.mark.parametrize("device, message", [("gpu0", "is not a torch device"),
                                              ("cuda", "no CUDA GPU is available")])
def test_device_is_validated_before_anything_is_written(tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(AdfloraError, match=message):
        run_study(tiny(device=device), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sig, code", [("sigint", 130), ("sigterm", 143)])
def test_signal_stops_with_one_line_and_resumes_exactly(tmp_path, reference, sig, code):
    cfgp = write_config(tmp_path / "c.toml")
    out = tmp_path / "run"
    r = harness(f"{sig}-append", 4, "synthetic", "run", str(cfgp), "--out", str(out))
    assert r.returncode == code, r.stderr
    line = one_error(r.stderr)
    assert line.startswith("error: stopped by SIG") and "--resume" in line
    assert RunDir(out).meta["status"] == "stopped"
    pd.testing.assert_frame_equal(rows(run_study(tiny(), out, progress=False, resume=True)),
                                  reference)


def test_usage_errors_are_one_line(tmp_path):
    for argv, msg in ((["synthetic", "run", "--bogus"], "No such option: --bogus"),
                      (["synthetic", "check"], "Missing argument"),
                      (["nosuch"], "No such command 'nosuch'")):
        code, err = cli(*argv)
        line = one_error(err)
        assert code == 2 and msg in line and "(hint: see `adflora" in line


# ---------------------------------------------------------------------------- reports
def test_outputs_folder_replaces_its_own_previous_outputs(tmp_path):
    out = tmp_path / "report"
    with claim_outputs(out):
        (out / "figures").mkdir()
        (out / "figures" / "old.png").write_text("1")
        (out / "index.html").write_text("a")
    with claim_outputs(out):
        assert not (out / "figures" / "old.png").exists()  # nothing of the last report left
        (out / "index.html").write_text("b")
    assert (out / "index.html").read_text() == "b"
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("x")
    with pytest.raises(AdfloraError, match="is not empty"), claim_outputs(user):
        pass
    assert (user / "thesis.tex").exists()


# ---------------------------------------------------------------------------- GLUE (tiny)
def glue_cfg(tiny, **kw):
    from adflora_analysis.glue.config import GlueConfig

    return load_config(GlueConfig, data={
        "task": "rotten_tomatoes", "model": str(tiny), "n_clients": 3, "rounds": 2,
        "local_steps": 1, "batch_size": 8, "max_length": 16, "max_train_examples": 60,
        "max_eval_examples": 16, "eval_every": 0, "methods": ["lora"], "threads": 1, **kw})


def test_glue_optimizer_overflow_is_diverged_in_one_line(tiny, tmp_path):
    from adflora_analysis.glue.runner import run_glue

    with pytest.raises(DivergenceError, match=r"numerical overflow in round 0 of job "
                       r"'lora/seed=0' .*overflow"):
        run_glue(glue_cfg(tiny, lr=1e38), tmp_path / "g")
    assert RunDir(tmp_path / "g").status == "diverged"


def test_glue_memory_estimate_refuses_before_training(tiny, tmp_path, monkeypatch):
    import psutil

    from adflora_analysis.glue.runner import run_glue
    from adflora_analysis.resources import glue_need

    class Mem:
        available = 2 ** 20

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Mem())
    out = tmp_path / "g"
    with pytest.raises(AdfloraError, match=r"would need about .* of memory .*; 1.0 MB is "
                       "available"):
        run_glue(glue_cfg(tiny, batch_size=100000), out)
    assert not any(out.iterdir())  # nothing half-made (the fixture data it loaded is gone)
    # a batch larger than a client's rows is the client's rows
    cfg = glue_cfg(tiny, batch_size=100000)
    big = glue_need(cfg, 768, 12, 12, 10, 10, client_rows=20).memory["batch activations"]
    assert big == glue_need(glue_cfg(tiny, batch_size=20), 768, 12, 12, 10, 10).memory[
        "batch activations"]


def test_resume_of_a_run_written_before_a_config_key_existed(tmp_path, reference):
    """A run whose config.toml lacks a key added later resumes when the new config holds the
    key's default (the old behaviour), and is refused when it does not."""
    import tomllib

    out = tmp_path / "run"
    run_study(tiny(), out, progress=False, stop_after=3)
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert cfg.pop("lr_min") == SyntheticConfig().lr_min  # as if written before lr_min existed
    (out / "config.toml").write_text(dump_toml(cfg))
    # ... by a toolkit older than the config hash too (a newer one records the hash of the
    # config it wrote, which the edited config.toml would no longer match: refused, tested in
    # the fault campaign as mix-config-of-other-lr)
    meta = json.loads((out / "meta.json").read_text())
    del meta["config_hash"]
    fileio.write_json(out / "meta.json", meta)
    with pytest.raises(AdfloraError, match="the config differs in lr_min"):
        run_study(tiny(lr_min=SyntheticConfig().lr_min + 1e-3), out, progress=False,
                  resume=True)
    pd.testing.assert_frame_equal(rows(run_study(tiny(), out, progress=False, resume=True)),
                                  reference)
