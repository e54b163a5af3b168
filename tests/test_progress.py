"""Progress outside and on a terminal: lines per job and every N rounds, log.txt, the bar."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from adflora_analysis.cli import main
from adflora_analysis.progress import RunLog, echo, status

TINY = ["rounds=4", "seeds=1", "n_clients=3", "constants_every=0",
        "methods=['lora','adf-lora']"]


def test_run_outside_a_terminal_logs_lines_and_log_txt(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "run", "bounds", "--out", str(out), *TINY])
    assert e.value.code in (0, None)
    err = capsys.readouterr().err
    for k, key in ((1, "lora"), (2, "adf-lora")):
        assert re.search(rf"job {k}/2 {key}: start at round 0 \(4 rounds\)", err), err
        assert re.search(rf"job {k}/2 {key}: round 3 done \(4 of 4\), study ETA", err)
        assert re.search(rf"job {k}/2 {key}: done in ", err)
    assert "round 4" not in err          # rounds are 0-based, as in metrics.jsonl
    log = (out / "log.txt").read_text().splitlines()
    assert len(log) == len(err.strip().splitlines())
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 job ", line) for line in log)


def test_bar_on_a_terminal_shows_job_k_of_n_and_prints_lines_above_it():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=150)
    with RunLog(["a", "b"], 5, console=console) as log:
        assert log.bar
        log.job_start("a", 0)
        for t in range(3):
            log.round_done(t)
            log._progress.refresh()
        echo("a round 2: mean accuracy 0.7")
        log.job_end()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())   # ANSI codes
    assert "job 1/2 a" in text and "rounds 3/5" in text and "study ETA" in text
    assert "a round 2: mean accuracy 0.7" in text
    assert "round 0 done" not in text    # no per-round lines while a bar shows them


def test_resume_counts_finished_jobs_and_says_resume():
    buf = io.StringIO()
    log = RunLog(["a", "b", "c"], 10, every=5, done=["a"],
                 console=Console(file=buf))
    with log:
        log.job_start("b", 6)
        log.round_done(6)
    assert "job 2/3 b: resume at round 6 (10 rounds)" in buf.getvalue()
    assert log.remaining == 10 + 3       # c's 10 rounds and b's rounds 7..9


def test_no_progress_keeps_the_job_lines_only():
    buf = io.StringIO()
    with RunLog(["a"], 4, bar=False, every=1, console=Console(file=buf)) as log:
        log.job_start("a", 0)
        for t in range(4):
            log.round_done(t)
        log.job_end()
    text = buf.getvalue()
    assert "job 1/1 a: start" in text and "job 1/1 a: done" in text
    assert "round 0 done" not in text


def test_an_error_inside_the_log_is_logged():
    buf = io.StringIO()
    with pytest.raises(RuntimeError), RunLog(["a"], 3, bar=False,
                                             console=Console(file=buf)) as log:
        log.job_start("a", 0)
        raise RuntimeError("boom")
    assert "job 1/1 a: ended by RuntimeError: boom" in buf.getvalue()


def test_echo_without_a_log_and_status_print_to_stderr(capsys):
    echo("plain")
    with status("drawing figures"):
        pass
    err = capsys.readouterr().err
    assert "plain\n" in err and "drawing figures ..." in err and "drawing figures: done in" in err
