"""`adflora export tensorboard` on a run directory someone else gave you: folder names built
from the rows stay single safe parts inside --logdir and never collide, a killed run is
exported with a warning and a note, links out of the logdir, damaged files and a full disk are
one `error:` line, and a failed or interrupted export leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest

from adflora_analysis import fileio
from adflora_analysis.tbevents import read_events

sys.path.insert(0, str(Path(__file__).parent))
from test_untrusted_reports import (  # noqa: E402
    cli,
    one_error,
    snapshot,
    temps,
    tiny_run,
    victim,
)


def events_under(d: Path) -> list[Path]:
    return sorted(d.rglob("events.out.tfevents.*"))


def test_method_names_cannot_escape_the_logdir(tmp_path, capsys):
    methods = ("../../../escape", "x y", "x_y", "checks", "/abs", ".hidden")
    r = tiny_run(tmp_path / "deep" / "er" / "run", methods=methods)
    v = victim(tmp_path)
    before = snapshot(v)
    logdir = tmp_path / "deep" / "tb"
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", logdir)
    assert code == 0 and "error" not in err
    files = events_under(tmp_path)
    assert files and all(logdir.resolve() in f.resolve().parents for f in files)
    runs = {f.parent.relative_to(logdir).as_posix() for f in files} - {"checks"}  # export's own
    assert len(runs) == len(methods)                         # one folder per method, distinct
    assert "x_y/seed0" in runs and all(p.count("/") == 1 for p in runs)
    assert all(not part.startswith(".") for p in runs for part in p.split("/"))
    assert not (logdir / "checks" / "seed0").exists()       # "checks" is not the export's own
    assert snapshot(v) == before and not (tmp_path / "escape").exists()
    # the sanitized folder holds that method's numbers
    (esc,) = [f for f in files if "escape" in f.parent.parent.name]
    assert [e["step"] for e in read_events(esc)[1:]] == [0, 1, 2]


def test_a_killed_run_is_exported_with_a_warning_and_a_note(tmp_path, capsys):
    r = tiny_run(tmp_path / "run")
    meta = json.loads((r / "meta.json").read_text())
    fileio.write_json(r / "meta.json", {**meta, "status": "running"})   # no lock: killed
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert code == 0 and len(warnings) == 1 and "error:" not in err
    assert "run is stopped (partial: rounds 0–2 of 3 written)" in warnings[0]
    (note,) = events_under(tmp_path / "tb" / "notes")
    text = read_events(note)[1]["values"]["partial run"]
    assert "stopped" in text and "rounds 0–2 of 3" in text


def test_a_finished_run_has_no_warning(tmp_path, capsys):
    r = tiny_run(tmp_path / "run")
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")
    assert code == 0 and "warning" not in err and not (tmp_path / "tb" / "notes").exists()


@pytest.mark.parametrize("where", ["sub", "default"])
def test_a_link_out_of_the_logdir_is_refused(tmp_path, capsys, where):
    r = tiny_run(tmp_path / "run", methods=("lora",))
    v = victim(tmp_path)
    if where == "sub":
        logdir = tmp_path / "tb"
        logdir.mkdir()
        (logdir / "lora").symlink_to(v, target_is_directory=True)
        args = ["--logdir", logdir]
    else:
        (r / "tensorboard").symlink_to(v, target_is_directory=True)
        args = []
    before = snapshot(v)
    code, err = cli(capsys, "export", "tensorboard", r, *args)
    line = one_error(err)
    assert code == 2 and ("outside --logdir" in line or "symbolic link" in line)
    assert snapshot(v) == before and events_under(v) == []


@pytest.mark.parametrize("name, content", [("metrics.parquet", b"garbage"),
                                           ("meta.json", b"[]"),
                                           ("eval.parquet", b"PAR1")])
def test_a_damaged_file_is_one_error_line(tmp_path, capsys, name, content):
    r = tiny_run(tmp_path / "run")
    (r / name).write_bytes(content)
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")
    assert code == 2 and name in one_error(err) and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("err_no, words", [(errno.ENOSPC, "the disk is full"),
                                           (errno.EROFS, "read-only")])
def test_a_full_disk_leaves_nothing_behind(tmp_path, capsys, monkeypatch, err_no, words):
    r = tiny_run(tmp_path / "run")
    calls = {"n": 0}
    real = os.fsync

    def failing_fsync(fd):   # the 2nd event file fails
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(err_no, os.strerror(err_no))
        return real(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")
    line = one_error(err)
    assert code == 2 and words in line and calls["n"] >= 2
    assert events_under(tmp_path) == [] and temps(tmp_path) == []
    monkeypatch.undo()   # nothing left, so the export goes in afterwards
    assert cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")[0] == 0


def test_sigterm_during_an_export_leaves_nothing_behind(tmp_path, capsys, monkeypatch):
    from adflora_analysis.tbevents import EventWriter

    r = tiny_run(tmp_path / "run")
    real = EventWriter.scalars
    calls = {"n": 0}

    def scalars(self, step, values, wall=None):
        calls["n"] += 1
        if calls["n"] == 4:                      # in the second event file
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, step, values, wall)

    monkeypatch.setattr(EventWriter, "scalars", scalars)
    code, err = cli(capsys, "export", "tensorboard", r, "--logdir", tmp_path / "tb")
    assert code == 143 and "export stopped by SIGTERM" in one_error(err)
    assert events_under(tmp_path) == [] and temps(tmp_path) == []


def test_names_are_unique_even_when_a_name_looks_sanitized():
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.export import run_names, safe_part

    assert safe_part("x y") != safe_part("x_y") and "/" not in safe_part("a/b")
    assert safe_part("..") not in ("..", ".") and len(safe_part("é" * 500)) < 100
    with pytest.raises(AdfloraError, match="collide"):
        run_names([{"method": "x y", "seed": 0}, {"method": safe_part("x y"), "seed": 0}])
    assert pd.Series(run_names([{"method": m, "seed": 0} for m in
                                ("a", "a ", "a_", "a\x00")])).is_unique
