"""`adflora report` on a run directory someone else gave you: crafted checkpoints run no code,
damaged files are one `error:` line naming them, unfinished runs get a "partial" banner, a
report folder holds only the report's own files, names from data stay inside --out, and a full
disk or an interrupt leaves no temp file and changes nothing outside --out."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
from pathlib import Path

import pandas as pd
import pytest

from adflora_analysis import fileio
from adflora_analysis.cli import main
from adflora_analysis.rundir import init_run_dir, make_meta


# ---------------------------------------------------------------------------- helpers
def cli(capsys, *args) -> tuple[int, str]:
    """Run ``adflora ARGS`` in-process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    cap = capsys.readouterr()
    return e.value.code or 0, cap.err


def one_error(err: str) -> str:
    """The one ``error:`` line of ``err`` (exactly one; no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under ``d`` (links not followed) and its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def temps(d: Path) -> list[str]:
    return [p.name for p in d.rglob("*.tmp")]


def victim(root: Path) -> Path:
    """A folder of the user's own files beside the run (what must never change)."""
    v = root / "victim"
    (v / "sub").mkdir(parents=True)
    (v / "index.html").write_text("<p>my page</p>")
    (v / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return v


def tiny_run(path: Path, status: str = "done", methods=("lora", "adf-lora"),
             rounds: int = 3) -> Path:
    """A small GLUE-kind run directory written by hand (no training: fast)."""
    init_run_dir(path, {"task": "sst2", "n_clients": 2, "rounds": rounds},
                 make_meta([0], kind="glue", status=status))
    rows = [{"method": m, "seed": 0, "round": r, "layer": "all", "job": m,
             "xi_A": 1.0 / (r + 1), "xi_B": 0.5, "cross_term": 0.1, "trained": "AB",
             "mixed": "AB", "loss": 1.0 - 0.1 * r} for m in methods for r in range(rounds)]
    fileio.write_parquet(path / "metrics.parquet", pd.DataFrame(rows))
    ev = [{"method": m, "seed": 0, "round": rounds - 1, "client": c, "split": "validation",
           "metric": "accuracy", "value": 0.6} for m in methods for c in ("0", "mean",
                                                                         "averaged")]
    fileio.write_parquet(path / "eval.parquet", pd.DataFrame(ev))
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """A real synthetic run with checkpoints (2 methods, 3 rounds, 1 seed)."""
    out = tmp_path_factory.mktemp("real") / "run"
    with pytest.raises(SystemExit):
        main(["synthetic", "run", "bounds", "--out", str(out), "rounds=3", "seeds=1",
              "n_clients=3", "constants_every=0", "checkpoint_every=1",
              "methods=['adf-lora','lora']"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir())
    return out


@pytest.fixture
def run(real_run, tmp_path) -> Path:
    """A copy of :func:`real_run` to alter."""
    return Path(shutil.copytree(real_run, tmp_path / "run"))


class Evil:
    """Unpickling this creates the marker file (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------------------- 1. checkpoints
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_crafted_checkpoint_runs_no_code(run, tmp_path, capsys, how):
    import torch

    marker = tmp_path / "pwned"
    ck = sorted((run / "checkpoints").glob("*.pt"))[0]
    payload = {"round": 1, "job": "adf-lora", "world_size": 1, "state": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, ck)
    else:
        ck.write_bytes(pickle.dumps(payload, protocol=2))   # a bare pickle
    v = victim(tmp_path)
    before = snapshot(v)
    code, err = cli(capsys, "report", run, "--out", tmp_path / "rep")
    line = one_error(err)
    assert code == 2 and ck.name in line
    assert "more than tensors" in line or (how == "pickle" and "corrupt" in line)
    assert not marker.exists()
    assert snapshot(v) == before and temps(tmp_path) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not-a-checkpoint"])
def test_a_damaged_checkpoint_is_one_error_line(run, tmp_path, capsys, damage):
    import torch

    ck = sorted((run / "checkpoints").glob("*.pt"))[0]
    data = ck.read_bytes()
    if damage == "garbage":
        ck.write_bytes(os.urandom(300))
    elif damage == "truncated":
        ck.write_bytes(data[:len(data) // 2])
    else:   # tensors only, but not the factors the report reads
        torch.save({"round": 1, "state": {"A": [torch.ones(2)], "B": "x"}}, ck)
    code, err = cli(capsys, "report", run, "--out", tmp_path / "rep")
    line = one_error(err)
    assert code == 2 and ck.name in line
    assert ("corrupt" in line) if damage != "not-a-checkpoint" else ("not an adflora" in line)
    assert not (tmp_path / "rep" / "index.html").exists() and temps(tmp_path) == []


def test_checkpoints_linked_outside_are_not_read(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    shutil.move(run / "checkpoints", outside)
    marker = tmp_path / "pwned"
    import torch

    torch.save({"state": Evil(marker)}, outside / "zz.r000001.rank0.pt")
    (run / "checkpoints").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    code, err = cli(capsys, "report", run, "--out", tmp_path / "rep")
    line = one_error(err)
    assert code == 2 and "symbolic link" in line and "checkpoints" in line
    assert not marker.exists() and snapshot(outside) == before


def test_cross_matrices_refuses_a_linked_checkpoints_folder(run, tmp_path):
    """The reader itself (not only the run-directory loader) follows no link."""
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.reports.cross import cross_matrices

    shutil.move(run / "checkpoints", tmp_path / "elsewhere")
    (run / "checkpoints").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(AdfloraError, match="symbolic link"):
        cross_matrices(run)


# ---------------------------------------------------------------------------- 2. partial runs
def test_a_killed_real_run_gets_a_partial_report(run, tmp_path, capsys):
    """A killed run has only metrics.jsonl (no metrics.parquet) and says ``running`` with no
    lock held: it used to end in a FileNotFoundError traceback."""
    (run / "metrics.parquet").unlink()
    meta = json.loads((run / "meta.json").read_text())
    fileio.write_json(run / "meta.json", {**meta, "status": "running"})
    code, err = cli(capsys, "report", run, "--out", tmp_path / "rep")
    assert code == 0 and "error" not in err and "Traceback" not in err
    want = "Not a finished result: run is stopped (partial: rounds 0–2 of 3 written)"
    md = (tmp_path / "rep" / "report.md").read_text()
    page = (tmp_path / "rep" / "index.html").read_text()
    assert want in md and want in page and "Partial: run is stopped" in md
    assert temps(tmp_path) == []


@pytest.mark.parametrize("status", ["stopped", "failed", "diverged"])
def test_stopped_failed_and_diverged_runs_get_the_banner(tmp_path, capsys, status):
    r = tiny_run(tmp_path / "tiny", status=status)
    code, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    assert code == 0 and "Traceback" not in err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"tiny is {status} (partial: rounds 0–2 of 3 written)" in md


def test_a_finished_run_has_no_banner(tmp_path, capsys):
    r = tiny_run(tmp_path / "tiny")
    code, _ = cli(capsys, "report", r, "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    assert code == 0 and "Not a finished result" not in md and "Every run completed" in md


# ---------------------------------------------------------------------------- 3. --out folder
def test_a_users_index_html_in_a_fresh_folder_is_not_overwritten(tmp_path, capsys):
    r = tiny_run(tmp_path / "tiny")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "index.html").write_text("<p>my page</p>")
    code, err = cli(capsys, "report", r, "--out", out)
    line = one_error(err)
    assert code == 2 and "'index.html'" in line and "(hint: choose an empty --out" in line
    assert snapshot(out) == {"index.html": b"<p>my page</p>"}


def test_a_folder_of_an_earlier_report_takes_only_a_new_report(tmp_path, capsys):
    r = tiny_run(tmp_path / "tiny")
    out = tmp_path / "rep"
    assert cli(capsys, "report", r, "--out", out)[0] == 0
    listed = json.loads((out / "report_files.json").read_text())["files"]
    assert {"index.html", "report.md"} <= set(listed) and len(listed) > 4
    # an earlier report's own files are replaced: its stale ones go
    old = snapshot(out)
    (out / "figures" / "stale.png").write_bytes(b"old")
    fileio.write_json(out / "report_files.json",
                      {"files": {**listed, "figures/stale.png": None}})
    assert cli(capsys, "report", r, "--out", out)[0] == 0
    assert not (out / "figures" / "stale.png").exists() and set(snapshot(out)) == set(old)
    # the user's own file beside the report: refused, nothing touched
    (out / "notes.md").write_text("mine")
    before = snapshot(out)
    code, err = cli(capsys, "report", r, "--out", out)
    assert code == 2 and "'notes.md'" in one_error(err) and snapshot(out) == before
    (out / "notes.md").unlink()
    # the user's own index.html over the report's: refused, nothing touched
    (out / "index.html").write_text("<p>my page</p>")
    before = snapshot(out)
    code, err = cli(capsys, "report", r, "--out", out)
    line = one_error(err)
    assert code == 2 and "'index.html' was changed" in line and snapshot(out) == before


def test_a_folder_claimed_through_claim_outputs_is_an_earlier_report(tmp_path, capsys):
    from adflora_analysis.rundir import claim_outputs

    r = tiny_run(tmp_path / "tiny")
    out, mine = tmp_path / "rep", tmp_path / "mine"
    for d in (out, mine):
        with claim_outputs(d):
            (d / "index.html").write_text("<html>old report by adflora</html>")
    (mine / "notes.md").write_text("the user's, written after")
    before = snapshot(mine)
    code, err = cli(capsys, "report", r, "--out", mine)
    assert code == 2 and "'notes.md'" in one_error(err) and snapshot(mine) == before
    assert cli(capsys, "report", r, "--out", out)[0] == 0
    assert "old report" not in (out / "index.html").read_text()
    assert not (out / "manifest.json").exists() and (out / "report_files.json").exists()


@pytest.mark.parametrize("command", ["report", "export"])
def test_an_out_name_too_long_is_one_line(tmp_path, capsys, command):
    r = tiny_run(tmp_path / "tiny")
    long = tmp_path / ("r" * 300)
    args = (["report", r, "--out", long] if command == "report"
            else ["export", "tensorboard", r, "--logdir", long])
    code, err = cli(capsys, *args)
    assert code == 2 and "too long" in one_error(err)


@pytest.mark.parametrize("what", ["link", "run-dir", "damaged-list"])
def test_other_report_folders_are_refused(tmp_path, capsys, what):
    r = tiny_run(tmp_path / "tiny")
    out = tmp_path / "rep"
    v = victim(tmp_path)
    if what == "link":        # figures/ linked to the user's folder: never written through
        assert cli(capsys, "report", r, "--out", out)[0] == 0
        shutil.rmtree(out / "figures")
        (out / "figures").symlink_to(v, target_is_directory=True)
    elif what == "run-dir":
        out = r
    else:
        out.mkdir()
        (out / "report_files.json").write_text('{"files": {"../victim/index.html": null}}')
    before, mine = snapshot(v), snapshot(out)
    code, err = cli(capsys, "report", r, "--out", out)
    line = one_error(err)
    assert code == 2 and "hint: choose an empty --out" in line
    assert snapshot(v) == before and snapshot(out) == mine


# ---------------------------------------------------------------------------- 4. names
def test_file_names_built_from_data_stay_inside_out_and_are_unique(tmp_path):
    import matplotlib.pyplot as plt

    from adflora_analysis.reports.render import Section, layout, write_report

    v = victim(tmp_path)
    before = snapshot(v)
    titles = ["../../victim/index", "a b", "a-b", "/etc/passwd", "é" * 300, "..", ""]
    secs = [Section(t, tables={t: pd.DataFrame({"x": [1]})}, figures={t: plt.figure()})
            for t in titles]
    out = tmp_path / "rep"
    write_report(out, "t", secs)
    files = layout(secs).files()
    # each table as CSV + LaTeX, each figure as PNG + PDF + SVG
    assert len(set(files)) == len(files) == 2 + 5 * len(titles)
    for f in files:
        p = (out / f).resolve()
        assert p.is_file() and out.resolve() in p.parents
        assert len(p.name.encode()) < 160 and "/" not in f.split("/", 1)[-1]
    assert snapshot(v) == before


# ---------------------------------------------------------------------------- 5. disk, signals
@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "the disk is full"),
                                           (errno.EROFS, "read-only")])
def test_a_full_disk_or_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch, err_no,
                                                     words):
    r = tiny_run(tmp_path / "tiny")
    calls = {"n": 0}
    real = os.fsync

    def failing_fsync(fd):   # the 3rd file written fails, as a disk filling up would
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(err_no, os.strerror(err_no))
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    line = one_error(err)
    assert code == 2 and words in line and "cannot write" in line
    assert temps(tmp_path) == [] and not (tmp_path / "rep" / "index.html").exists()


def _interrupt_in_savefig(monkeypatch, exc):
    from matplotlib.figure import Figure

    real = Figure.savefig

    def savefig(self, fname, *a, **kw):
        if isinstance(fname, str | os.PathLike):   # a file, not the in-memory PNG
            Path(fname).write_bytes(b"half a figure")
            if callable(exc):
                exc()
            raise exc
        return real(self, fname, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)


@pytest.mark.parametrize("how, code_want", [("SIGTERM", 143), ("SIGINT", 130)])
def test_an_interrupted_report_leaves_no_temp_file(tmp_path, capsys, monkeypatch, how,
                                                    code_want):
    r = tiny_run(tmp_path / "tiny")
    out = tmp_path / "rep"
    handler = signal.getsignal(signal.SIGTERM)
    if how == "SIGTERM":
        _interrupt_in_savefig(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    else:
        _interrupt_in_savefig(monkeypatch, KeyboardInterrupt)
    code, err = cli(capsys, "report", r, "--out", out)
    line = one_error(err)
    assert code == code_want and "report" in line and temps(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) is handler   # the handler is restored
    monkeypatch.undo()
    # the folder is still the report's own: the next report goes in
    assert cli(capsys, "report", r, "--out", out)[0] == 0 and (out / "index.html").exists()


def test_an_exception_while_writing_figures_leaves_no_temp_file(tmp_path, monkeypatch):
    from adflora_analysis.reports import make_report

    r = tiny_run(tmp_path / "tiny")
    _interrupt_in_savefig(monkeypatch, RuntimeError("renderer failed"))
    with pytest.raises(RuntimeError, match="renderer failed"):
        make_report([r], tmp_path / "rep")
    assert temps(tmp_path) == []


# ---------------------------------------------------------------------------- 6. damaged files
@pytest.mark.parametrize("name, content, words", [
    ("meta.json", "[1, 2]", "meta.json"),
    ("config.toml", "", "config.toml"),
    ("manifest.json", "[1, 2]", "manifest.json"),
    ("label_counts.csv", "", "label_counts.csv"),
    ("label_counts.csv", "client,label,count\n0,a,many\n", "label_counts.csv"),
    ("eval.parquet", b"PAR1 garbage", "eval.parquet"),
    ("metrics.parquet", b"\x00" * 64, "metrics.parquet"),
    ("mixing.parquet", b"garbage", "mixing.parquet"),
    ("constants.parquet", b"garbage", "constants.parquet"),
    ("check_curves.parquet", b"garbage", "check_curves.parquet"),
])
def test_a_damaged_file_is_one_error_line_naming_it(tmp_path, capsys, name, content, words):
    r = tiny_run(tmp_path / "tiny")
    p = r / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    line = one_error(err)
    assert code == 2 and words in line
    assert not (tmp_path / "rep").exists() and temps(tmp_path) == []


def test_meta_json_of_the_wrong_shape_is_one_line(tmp_path, capsys):
    r = tiny_run(tmp_path / "tiny")
    meta = json.loads((r / "meta.json").read_text())
    fileio.write_json(r / "meta.json", {**meta, "topology": [1, 2], "variants": {"a": 3}})
    code, err = cli(capsys, "report", r, "--out", tmp_path / "rep")
    assert code == 2 and "meta.json" in one_error(err)


def test_stale_saved_checks_show_the_reason_not_the_verdicts(tmp_path):
    checks = pytest.importorskip("adflora_analysis.theory")
    if not hasattr(checks, "load_saved_checks"):
        pytest.skip("the checks layer has no load_saved_checks")
    from adflora_analysis.reports.build import dynamics_section
    from adflora_analysis.reports.checks import saved_note
    from adflora_analysis.reports.collect import collect_run

    r = tiny_run(tmp_path / "tiny")
    assert saved_note(collect_run(r)) is None                 # no checks.json: nothing to say
    checks.save_results(r, [])
    assert saved_note(collect_run(r)) is None                 # it still covers the run
    m = pd.read_parquet(r / "metrics.parquet")                # the run went on after the check
    extra = m[m["round"] == 2].assign(round=3)
    fileio.write_parquet(r / "metrics.parquet", pd.concat([m, extra]))
    note = saved_note(collect_run(r))
    assert note and "checks.json" in note and "stale" in note
    table = pd.DataFrame([{"no": "1", "check": "c", "status": "held", "held": True}])
    sec = dynamics_section("t", m, None, table, saved_notes=[note])[0]
    assert sec.text[0].startswith(f"Saved verdicts not shown: {note}")
