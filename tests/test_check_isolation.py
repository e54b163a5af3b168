"""User checks run isolated: sys.exit, KeyboardInterrupt, a hang or a crashed process (at import
or inside a check) is that check's one ``error`` line; it never decides the exit status, and
the built-in and other user checks still run and are saved."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from adflora_analysis.cli import main
from adflora_analysis.config import load_config
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.runner import run_study
from adflora_analysis.theory import run_checks

SMALL = dict(n_clients=4, rounds=6, local_steps=1, lr=0.05, rank=2, seeds=4, d_in=5, d_out=4,
             target_rank=2, samples_per_client=8, batch_size=4, constants_every=0,
             topology_samples=200, switch_interval=2, methods=["adf-lora"],
             topology={"graph": "encounter", "weights": "metropolis", "q": 0.5})

HEAD = "import os, sys\nfrom adflora_analysis.theory import bound_check, register_check\n"
OK = '''
@register_check("{name}")
def _ok_{name_}(ctx):
    m = ctx.run.mat("loss")
    return bound_check(ctx, "{name}", "{number}", m, 2 * m)
'''


def ok_check(name: str, number: str) -> str:
    """A user check that holds (bound = 2 x measured), with a curve."""
    return OK.format(name=name, name_=name.replace("-", "_"), number=number)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("iso") / "run"
    run_study(load_config(SyntheticConfig, data=SMALL), out, progress=False)
    return out


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    got = capsys.readouterr()
    return e.value.code, got.out, got.err


def errors(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_sys_exit_in_a_check_cannot_make_strict_pass(run, tmp_path, capsys):
    f = write(tmp_path, "exits.py", HEAD + '''
@register_check("too-low")
def too_low(ctx):
    m = ctx.run.mat("loss")
    return bound_check(ctx, "too-low", "u1", m, 0.5 * m)   # violated

@register_check("exits")
def exits(ctx):
    sys.exit(0)
''')
    code, out, err = cli(capsys, "synthetic", "check", str(run), "--checks", f, "--strict",
                         "--json", "--no-save")
    assert code == 2, err
    res = json.loads(out)["results"]
    assert [r["status"] for r in res if r["check"] == "too-low"] == ["violated"]
    assert any(r["number"] == "2" for r in res)          # the built-ins ran
    errs = errors(err)
    assert len(errs) == 1 and "'exits'" in errs[0] and "sys.exit(0)" in errs[0], err


def test_keyboard_interrupt_at_import_and_inside_a_check(run, tmp_path):
    at_import = write(tmp_path, "kimport.py", HEAD + ok_check("never", "u9")
                      + "raise KeyboardInterrupt\n")
    inside = write(tmp_path, "kcheck.py", HEAD + '''
@register_check("kbd")
def kbd(ctx):
    raise KeyboardInterrupt
''' + ok_check("fine", "u2"))
    res = run_checks(run, check_files=[at_import, inside], check_timeout=30)   # the API too
    bad = {r.check: r.note for r in res if r.status == "error"}
    assert set(bad) == {"kimport.py", "kbd"}, bad
    assert "failed to import: raised KeyboardInterrupt" in bad["kimport.py"]
    assert "raised KeyboardInterrupt" in bad["kbd"]
    fine = [r for r in res if r.check == "fine"]
    assert len(fine) == 1 and fine[0].status in ("held", "underpowered")
    assert fine[0].ratio == pytest.approx(2.0) and list(fine[0].curve.columns) == [
        "round", "measured", "bound"]
    assert not [r for r in res if r.check == "never"]
    assert any(r.number == "5" for r in res)


def test_a_check_that_hangs_is_stopped_at_the_timeout_and_the_others_run(run, tmp_path,
                                                                           capsys):
    hangs = write(tmp_path, "hangs.py", HEAD + '''
@register_check("loops")
def loops(ctx):
    while True:
        pass
''' + ok_check("after-loop", "u3"))
    hangs_at_import = write(tmp_path, "stuck.py", HEAD + ok_check("never", "u9")
                            + "while True:\n    pass\n")
    t0 = time.monotonic()
    code, out, err = cli(capsys, "synthetic", "check", str(run), "--checks", hangs,
                         "--checks", hangs_at_import, "--check-timeout", "2", "--json")
    took = time.monotonic() - t0
    assert code == 2 and took < 90, (code, took)
    errs = errors(err)
    assert len(errs) == 2, err
    assert "check 'loops' did not finish within 2 s" in errs[0]
    assert "'" + hangs_at_import + "' did not finish importing within 2 s" in errs[1]
    res = json.loads(out)["results"]
    after = [r for r in res if r["check"] == "after-loop"]
    assert len(after) == 1 and after[0]["ratio"] == pytest.approx(2.0)
    assert {"1", "2", "3", "5"} <= {r["number"] for r in res}
    saved = json.loads((run / "checks.json").read_text())["results"]
    assert [r["check"] for r in saved if r["number"] == "u3"] == ["after-loop"]
    curves = pd.read_parquet(run / "check_curves.parquet")
    assert "u3" in set(curves.number) and "2" in set(curves.number)


def test_os_exit_and_a_segfault_end_only_their_check(run, tmp_path, capsys):
    f = write(tmp_path, "crash.py", HEAD + '''
@register_check("os-exit")
def os_exit(ctx):
    os._exit(0)

@register_check("segfault")
def segfault(ctx):
    import ctypes
    ctypes.string_at(0)
''' + ok_check("survivor", "u4"))
    at_import = write(tmp_path, "exit_at_import.py", HEAD + "os._exit(0)\n")
    code, out, err = cli(capsys, "synthetic", "check", str(run), "--checks", f, "--checks",
                         at_import, "--json", "--no-save", "--check-timeout", "30")
    assert code == 2
    errs = errors(err)
    assert len(errs) == 3, err
    assert "check 'os-exit' ended the check process (exit status 0)" in errs[0]
    assert "check 'segfault' ended the check process (killed by SIGSEGV)" in errs[1]
    assert "exit_at_import.py' ended the check process (exit status 0) while importing" \
        in errs[2]
    res = json.loads(out)["results"]
    assert [r["status"] for r in res if r["check"] == "survivor"] in (["held"],
                                                                       ["underpowered"])


def test_check_timeout_must_be_positive_and_finite(run, capsys):
    for bad in ("0", "-1", "nan", "inf"):
        code, _, err = cli(capsys, "synthetic", "check", str(run), "--check-timeout", bad)
        assert code == 2 and len(errors(err)) == 1, err
        assert errors(err)[0].startswith("error: --check-timeout ") and "positive" in err


def test_a_check_failing_on_every_method_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "run"
    run_study(load_config(SyntheticConfig, data={**SMALL, "methods": ["adf-lora", "lora"]}),
              out, progress=False)
    f = write(tmp_path, "exits.py", HEAD + '''
@register_check("exits")
def exits(ctx):
    raise SystemExit(3)
''')
    code, out_, err = cli(capsys, "synthetic", "check", str(out), "--checks", f, "--json")
    assert code == 2
    errs = errors(err)
    assert len(errs) == 1 and err.rstrip().splitlines()[-1] == errs[0], err
    assert "sys.exit(3)" in errs[0] and "1 more method/variant(s)" in errs[0]
    res = json.loads(out_)["results"]
    assert sorted(r["method"] for r in res if r["check"] == "exits") == ["adf-lora", "lora"]
