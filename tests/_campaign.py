"""The adversarial fault campaign of tests/test_fault_campaign.py: the case table, as data.

Issue: "Run directories someone else gave you: no code execution, no deletion outside, no
silent mix". A run directory (and a report folder, a ``--checks`` file, an option value) is
untrusted input. Every case plants one fault into a copy of a small template run, runs one
``adflora`` command and is judged on four things:

(a) the exit code: 2 for a refusal; 0 where the right behaviour is success (optionally with a
    banner that must appear); ``either`` where both a one-line refusal and a success are
    right (the other three checks still apply);
(b) a refusal is exactly one ``error: ... (hint: ...)`` line on stderr, the last one, and no
    ``Traceback`` appears anywhere;
(c) a snapshot (paths, bytes, modes, link targets) of everything in the case's folder outside
    the command's target (the run directory, the report folder, the log dir) is unchanged:
    victims planted next to the run (``a/victims``, ``a/victim``), above it (``victims``) and
    outside targets of symbolic links and hard links;
(d) the marker file that code carried by data (a pickle's ``__reduce__``) would create does not
    exist.

Layout of one case's folder (``root``)::

    root/cfg.toml                the tiny study config
    root/victims/...             victim files (also the outside end of planted links)
    root/a/victims/..., a/victim victims one level up from the run
    root/a/run                   the run directory under test (a copy of a template)
    root/a/report, root/a/tb     report folder and TensorBoard log dir (targets of those commands)
    root/PWNED                   the marker data-borne code would write

A case is ``Case(name, family, setup, expect, mode, verify)``: ``setup(ctx)`` builds the fault
and returns the argv; ``mode`` is ``inproc`` (``main(argv)`` in this process, under a
watchdog), ``fork`` (a forked child with a memory limit: sizes that would exhaust the machine if
not refused) or ``subprocess`` (a fresh ``python -m adflora_analysis``: hangs, where the real
process must end); ``verify`` checks a success further (a resume must end with exactly the rows
of the uninterrupted run).

Families (generated systematically below): damaged file (each file of a run x each damage x
resume/check/report/export; a file a command does not read gets three damages), manifest escape
(each escape form x overwrite/resume/report folder), symlink (symbolic and hard links to
outside files and folders, dangling ``--out``, labels with a newline), export names, report
--out (a user's files there), not its own (rows, checkpoints, config of another run), unfinished
run (verdicts and banners), traceback (inputs that used to raise), sizes (refused before
anything is spent), bad option value (nan, inf, -1, 0, huge, non-number x each option), user
checks (exit, interrupt, hang), code execution (pickles in checkpoints), disk (read-only and
full: simulated by failing writes, and real tmpfs mounts where this machine allows them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# ------------------------------------------------------------------------------ the templates
#: the smallest study that still has everything (2 methods, checkpoints, constants): ~0.2 s
TINY = {
    "n_clients": 4, "rounds": 4, "local_steps": 1, "lr": 0.05, "rank": 2, "seeds": 2,
    "d_in": 5, "d_out": 4, "target_rank": 2, "samples_per_client": 8, "batch_size": 4,
    "constants_every": 2, "topology_samples": 200, "switch_interval": 2, "checkpoint_every": 2,
    "methods": ["adf-lora", "rolora"],
}
TOPOLOGY = {"graph": "ring", "weights": "metropolis"}
STOP_AFTER = 6   # adf-lora done (4 rounds, checkpoints r1, r3); rolora rounds 0-1 (checkpoint r1)
CKPT = {"done": "checkpoints/adf-lora.r000003.rank0.pt",
        "stopped": "checkpoints/rolora.r000001.rank0.pt"}
LOCK = ".adflora.lock"


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def config_text(topology: dict | None = None, extra: str = "", **kw) -> str:
    """The TOML of :data:`TINY` with ``kw`` set (``extra``: appended verbatim, before the
    ``[topology]`` table)."""
    data = {**TINY, **kw}
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items()]
    lines += [extra, "[topology]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in (topology or TOPOLOGY).items()]
    return "\n".join(lines) + "\n"


PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4f700"
    "00000049454e44ae426082")


@contextlib.contextmanager
def fast_figures() -> Iterator[None]:
    """Matplotlib's ``Figure.savefig`` writes a one-pixel PNG and ``Figure.tight_layout`` does
    nothing: rendering and layout take seconds per report, and no case is about the pixels
    (the code that reads the runs and the write path of the report files are unchanged)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    orig = Figure.savefig, Figure.tight_layout

    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(PNG_1PX)
        else:
            with open(fname, "wb") as f:
                f.write(PNG_1PX)

    Figure.savefig = savefig
    Figure.tight_layout = lambda self, *a, **k: None
    try:
        yield
    finally:
        Figure.savefig, Figure.tight_layout = orig


def build_templates(base: Path) -> dict[str, Path]:
    """The template runs every case copies (built once per session, in-process):
    ``done`` (finished, checks saved), ``stopped`` (stopped after 6 rounds: resumable),
    ``killed`` (status still ``running``, no lock: SIGKILLed), ``lr2`` (``stopped`` with another
    lr: the same job keys, other numbers), ``diverged``, ``failed``, and ``report`` (a report
    folder ``adflora report`` wrote for ``done``)."""
    from adflora_analysis.config import load_config
    from adflora_analysis.rundir import CHECK_OUTPUTS, RunDir
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import run_checks, save_results

    def cfg(**kw):
        return load_config(SyntheticConfig, data={**TINY, **kw, "topology": TOPOLOGY})

    t = {name: base / name for name in ("done", "stopped", "killed", "lr2", "diverged",
                                        "failed")}
    run_study(cfg(), t["done"], progress=False)
    save_results(t["done"], run_checks(t["done"]))
    RunDir(t["done"]).record(*CHECK_OUTPUTS)
    run_study(cfg(), t["stopped"], progress=False, stop_after=STOP_AFTER)
    run_study(cfg(lr=0.1), t["lr2"], progress=False, stop_after=STOP_AFTER)
    for name, src, status in (("killed", "stopped", "running"), ("diverged", "done", "diverged"),
                              ("failed", "done", "failed")):
        shutil.copytree(t[src], t[name], symlinks=True)
        meta = json.loads((t[name] / "meta.json").read_text())
        meta["status"] = status
        (t[name] / "meta.json").write_text(json.dumps(meta, indent=2))
    t["report"] = base / "report"
    with fast_figures():
        code, crash = call_main(["report", str(t["done"]), "--out", str(t["report"])])
    assert code == 0 and not crash, (code, crash)
    assert (t["done"] / CKPT["done"]).is_file() and (t["stopped"] / CKPT["stopped"]).is_file()
    assert (t["done"] / "checks.json").is_file()
    return t


# ------------------------------------------------------------------------------ one case's world
class Ctx:
    """One case's folder: victims planted, the run copied in, cleanups registered."""

    def __init__(self, root: Path, templates: dict[str, Path]):
        self.root = root
        self.templates = templates
        self.a = root / "a"
        self.run = self.a / "run"
        self.report = self.a / "report"
        self.tb = self.a / "tb"
        self.victims = root / "victims"
        self.linked = self.victims / "linked"
        self.marker = root / "PWNED"
        self.cfg = root / "cfg.toml"
        self.targets: list[Path] = [self.run]
        self.absent: list[Path] = []
        self.cleanups: list[Callable[[], None]] = []
        self.fault: Callable[[], contextlib.AbstractContextManager] | None = None
        self.env: dict[str, str] = {}
        self._plant()

    def _plant(self) -> None:
        files = {
            self.victims / "victim.txt": "victim (root/victims)\n",
            self.victims / "sub" / "x.txt": "x (root/victims/sub)\n",
            self.victims / "sub" / "victim.txt": "victim (root/victims/sub)\n",
            self.victims / "deep" / "a" / "b" / "victim.txt": "victim, deep\n",
            self.victims / "notes.md": "my notes\n",
            self.a / "victims" / "victim.txt": "victim (a/victims)\n",
            self.a / "victims" / "sub" / "x.txt": "x (a/victims/sub)\n",
            self.a / "victims" / "sub" / "victim.txt": "victim (a/victims/sub)\n",
            self.a / "victim": "victim (a/victim)\n",
        }
        for p, text in files.items():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        self.linked.mkdir(parents=True, exist_ok=True)
        self.cfg.write_text(config_text())

    def use(self, template: str = "done", where: Path | None = None) -> Path:
        where = where or self.run
        shutil.copytree(self.templates[template], where, symlinks=True)
        return where

    def outside(self, name: str, data: bytes) -> Path:
        """A file outside every target (the far end of a planted link)."""
        p = self.linked / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def mount(self, where: Path, options: str) -> Path:
        """A tmpfs at ``where`` (skips the case where mounting is not possible)."""
        import pytest

        where.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount command: cannot make a read-only or full file system")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:80]})")
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(where)],
                                                    capture_output=True))
        return where

    def remount_ro(self, where: Path) -> None:
        r = subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr

    def fill(self, folder: Path) -> None:
        """Fill the file system of ``folder`` to the last byte."""
        for size in (1 << 20, 1 << 12, 64, 1):
            for i in range(100_000):
                try:
                    with open(folder / f".filler-{size}-{i}", "wb") as f:
                        f.write(b"\0" * size)
                except OSError:
                    with contextlib.suppress(OSError):
                        (folder / f".filler-{size}-{i}").unlink()
                    break

    def hold_lock(self, run: Path) -> None:
        """Hold the run's lock as a live run would (an flock on the lock file)."""
        import fcntl

        p = run / LOCK
        p.write_text(json.dumps({"pid": os.getpid(), "host": "campaign", "command":
                                 "adflora synthetic run", "started_utc": "2026-01-01"}))
        fd = os.open(p, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)

        def release():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        self.cleanups.append(release)

    def cleanup(self) -> None:
        for fn in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()


# ------------------------------------------------------------------------------ expectations
@dataclass(frozen=True)
class Expect:
    """What a case must do. ``outcome``: ``refuse`` (exit ``code``, one error line, matching
    ``error`` if given), ``ok`` (exit 0, no error line; ``banner`` must be found in ``where``:
    ``stderr``, ``out`` (stdout + stderr), ``report`` (report.md) or ``json`` (stdout parsed as
    JSON, searched as text)), ``either`` (a one-line refusal or a success). ``absent``: ctx
    attributes that must not exist after (nothing spent); ``max_s``: wall-time limit;
    ``forbid``: regexes the error line must not match (e.g. an unknown option)."""

    outcome: str
    code: int = 2
    error: str | None = None
    banner: str | None = None
    where: str = "stderr"
    absent: tuple[str, ...] = ()
    max_s: float | None = None
    forbid: tuple[str, ...] = ()


def REFUSE(error: str | None = None, **kw) -> Expect:
    return Expect("refuse", error=error, **kw)


def OK(banner: str | None = None, where: str = "stderr", **kw) -> Expect:
    return Expect("ok", banner=banner, where=where, **kw)


def EITHER(**kw) -> Expect:
    return Expect("either", **kw)


@dataclass(frozen=True)
class Case:
    name: str
    family: str
    setup: Callable[[Ctx], list[str]]
    expect: Expect
    mode: str = "inproc"     # inproc | fork | subprocess
    timeout: float = 60.0
    #: after a success: what is wrong with the result (e.g. rows that are not the
    #: uninterrupted run's); empty when right
    verify: Callable[[Ctx], list[str]] | None = None

    def __repr__(self) -> str:
        return self.name


CASES: list[Case] = []


def case(name: str, family: str, expect: Expect, mode: str = "inproc", timeout: float = 60.0,
         verify: Callable[[Ctx], list[str]] | None = None):
    def deco(setup: Callable[[Ctx], list[str]]):
        add(name, family, setup, expect, mode, timeout, verify)
        return setup
    return deco


def add(name: str, family: str, setup: Callable[[Ctx], list[str]], expect: Expect,
        mode: str = "inproc", timeout: float = 60.0,
        verify: Callable[[Ctx], list[str]] | None = None) -> None:
    assert not any(c.name == name for c in CASES), name
    CASES.append(Case(name, family, setup, expect, mode, timeout, verify))


ROW_KEY = ["job", "method", "seed", "round", "layer"]


def rows_of(run: Path):
    import pandas as pd

    df = pd.read_parquet(run / "metrics.parquet")
    return df.sort_values([k for k in ROW_KEY if k in df]).reset_index(drop=True)


def same_rows_as(reference: Callable[[Ctx], Path]) -> Callable[[Ctx], list[str]]:
    """A resume that went ahead must end with exactly the rows of the uninterrupted run."""
    def verify(ctx: Ctx) -> list[str]:
        import pandas as pd

        ref = reference(ctx)
        if not (ref / "metrics.parquet").exists():
            return ["resumed a run whose config a new run refuses"]
        try:
            pd.testing.assert_frame_equal(rows_of(ctx.run), rows_of(ref), check_like=True)
        except (AssertionError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return [f"resumed, but the rows are not those of the uninterrupted run ({first})"]
        return []
    return verify


# ------------------------------------------------------------------------------ the commands
def cmd_resume(ctx: Ctx, run: Path | None = None) -> list[str]:
    run = run or ctx.run
    ctx.targets = [run]
    return ["synthetic", "run", "--resume", str(run), "--no-progress"]


def cmd_overwrite(ctx: Ctx, run: Path | None = None) -> list[str]:
    run = run or ctx.run
    ctx.targets = [run]
    return ["synthetic", "run", str(ctx.cfg), "--out", str(run), "--overwrite", "--no-progress"]


def cmd_new(ctx: Ctx, out: Path | None = None, cfg: Path | None = None, *over: str) -> list[str]:
    out = out or ctx.run
    ctx.targets = [out]
    return ["synthetic", "run", str(cfg or ctx.cfg), "--out", str(out), "--no-progress", *over]


def cmd_check(ctx: Ctx, run: Path | None = None, *more: str) -> list[str]:
    run = run or ctx.run
    ctx.targets = [run]
    return ["synthetic", "check", str(run), "--json", *more]


def cmd_report(ctx: Ctx, run: Path | None = None, out: Path | None = None) -> list[str]:
    run, out = run or ctx.run, out or ctx.report
    ctx.targets = [out]
    return ["report", str(run), "--out", str(out)]


def cmd_export(ctx: Ctx, run: Path | None = None, logdir: Path | None = None) -> list[str]:
    run, logdir = run or ctx.run, logdir or ctx.tb
    ctx.targets = [logdir]
    return ["export", "tensorboard", str(run), "--logdir", str(logdir)]


COMMANDS = {"resume": cmd_resume, "check": cmd_check, "report": cmd_report,
            "export": cmd_export, "overwrite": cmd_overwrite}


# ------------------------------------------------------------------------------ data-borne code
class Evil:
    """Unpickling this runs ``exec`` and writes the marker."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def evil_bytes(marker: Path, form: str) -> bytes:
    """A checkpoint whose loading runs code: ``raw`` (a bare pickle), ``zip`` (torch.save of
    the object), ``nested`` (torch.save of a checkpoint-shaped dict holding it)."""
    import torch

    if form == "raw":
        return pickle.dumps(Evil(marker), protocol=2)
    buf = io.BytesIO()
    obj = Evil(marker) if form == "zip" else {"round": 1, "job": "rolora",
                                              "state": Evil(marker), "world_size": 1}
    torch.save(obj, buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------ damage
FILES = ("config.toml", "meta.json", "manifest.json", "progress.json", "metrics.jsonl",
         "metrics.parquet", "checkpoint", "checks.json", "lock")
DAMAGES = ("empty", "garbage", "json_list", "json_null", "truncated", "non_utf8",
           "symlink_out", "directory")
GARBAGE = b"\x00\x9c\xfe garbage \x13\x37\xff" * 24


def file_path(ctx: Ctx, run: Path, name: str, template: str) -> Path:
    if name == "checkpoint":
        return run / CKPT[template]
    if name == "lock":
        return run / LOCK
    return run / name


def damage(ctx: Ctx, p: Path, kind: str) -> None:
    """Damage file ``p`` in one of :data:`DAMAGES` ways (a missing lock is first written as
    the stale lock of a dead process)."""
    if not p.exists() and p.name == LOCK:
        p.write_text(json.dumps({"pid": 999_999_999, "host": "elsewhere", "command":
                                 "adflora synthetic run", "started_utc": "2026-01-01"}))
    orig = p.read_bytes()
    if kind == "symlink_out":
        target = ctx.outside(p.name, orig)
        p.unlink()
        p.symlink_to(target)
        return
    if kind == "directory":
        p.unlink()
        p.mkdir()
        (p / "keep.txt").write_text("a folder where a file should be\n")
        return
    data = {"empty": b"", "garbage": GARBAGE, "json_list": b"[1, 2, 3]\n",
            "json_null": b"null\n", "truncated": orig[: len(orig) // 2]}.get(kind)
    if kind == "non_utf8":
        data = orig.replace(b'"', b'"\xff\xfe', 1) if b'"' in orig[:4096] else \
            b"\xff\xfe\xfd" + orig[3:]
    assert data is not None, kind
    p.write_bytes(data)


def damage_expect(fname: str, dmg: str, cmd: str) -> Expect:
    """The right behaviour for ``cmd`` on a run whose ``fname`` is damaged by ``dmg``.

    A file the command reads: any damage is a one-line refusal (a symbolic link out of the run
    included: a run directory holds only its own files). A file the command rewrites
    (checks.json for ``check``; checks.json and the lock for ``resume``): damaged content is
    replaced (success); a folder in its place is refused. A file the command does not read:
    either answer, but never a traceback or a change outside."""
    reads = {
        "resume": {"config.toml", "meta.json", "manifest.json", "progress.json",
                   "metrics.jsonl", "checkpoint"},
        "check": {"config.toml", "meta.json", "manifest.json", "metrics.parquet"},
        "report": {"config.toml", "meta.json", "metrics.parquet", "checkpoint"},
        "export": {"config.toml", "meta.json", "metrics.parquet"},
    }[cmd]
    if fname in reads:
        return REFUSE()
    if cmd == "resume" and fname == "lock":
        return REFUSE() if dmg in ("symlink_out", "directory") else EITHER()
    if cmd == "resume" and fname == "checks.json":
        return OK() if dmg not in ("symlink_out", "directory") else EITHER()
    if cmd == "check" and fname == "checks.json":
        return REFUSE() if dmg == "directory" else EITHER() if dmg == "symlink_out" else OK()
    return EITHER()


def _damage_setup(fname: str, dmg: str, cmd: str) -> Callable[[Ctx], list[str]]:
    template = "stopped" if cmd == "resume" else "done"

    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use(template)
        p = file_path(ctx, run, fname, template)
        if fname == "checks.json" and not p.exists():
            shutil.copy(ctx.templates["done"] / "checks.json", p)
        damage(ctx, p, dmg)
        return COMMANDS[cmd](ctx, run)
    return setup


#: the files a command does not read get three damages (content, link, folder), not eight
_NOT_READ_DAMAGES = ("garbage", "symlink_out", "directory")


def _gen_damage() -> None:
    for cmd in ("resume", "check", "report", "export"):
        for fname in FILES:
            if cmd == "resume" and fname == "metrics.parquet":
                continue   # resume rebuilds it from the rows
            every = (cmd == "resume" or damage_expect(fname, "garbage", cmd).outcome == "refuse"
                     or (cmd, fname) == ("check", "checks.json"))
            for dmg in DAMAGES if every else _NOT_READ_DAMAGES:
                add(f"damage-{fname}-{dmg}-{cmd}", "damaged file",
                    _damage_setup(fname, dmg, cmd), damage_expect(fname, dmg, cmd))


_gen_damage()


# ------------------------------------------------------------------------------ manifest escapes
def _escapes(ctx: Ctx, base: Path) -> dict[str, tuple[list, list]]:
    """name -> (files, patterns) that reach outside ``base`` (the folder holding the manifest)."""
    absroot = str(ctx.root)
    return {
        "dotdot-file": (["../victims/victim.txt"], []),
        "absolute-file": ([f"{absroot}/a/victims/victim.txt"], []),
        "through-subdir": (["checkpoints/../../victim"], []),
        "dotdot-glob": ([], ["../victims/sub/*.txt"]),
        "dotdot-recursive-glob": ([], ["../../victims/**/victim.txt"]),
        "absolute-glob": ([], [f"{absroot}/victims/*.txt"]),
        "symlinked-folder-file": (["linkdir/victim.txt"], []),
        "symlinked-folder-glob": ([], ["linkdir/*.txt"]),
        "recursive-glob-through-link": ([], ["**/victim.txt"]),
        "non-string-entries": ([123, None, ["../victims/victim.txt"]], []),
        "files-is-a-string": ("../victims/victim.txt", []),
    }


ESCAPES = ("dotdot-file", "absolute-file", "through-subdir", "dotdot-glob",
           "dotdot-recursive-glob", "absolute-glob", "symlinked-folder-file",
           "symlinked-folder-glob", "recursive-glob-through-link", "non-string-entries",
           "files-is-a-string")


def _plant_escape(ctx: Ctx, folder: Path, esc: str) -> None:
    files, patterns = _escapes(ctx, folder)[esc]
    mp = folder / "manifest.json"
    m = json.loads(mp.read_text()) if mp.exists() else {"kind": "report", "files": [],
                                                         "patterns": []}
    if isinstance(files, str):
        m["files"] = files
    else:
        m["files"] = [*m.get("files", []), *files]
    m["patterns"] = [*m.get("patterns", []), *patterns]
    mp.write_text(json.dumps(m))
    if "link" in esc:
        (folder / "linkdir").symlink_to(ctx.victims)


def _plant_report_escape(ctx: Ctx, folder: Path, esc: str) -> None:
    """Add the escape to the list of files a report wrote (``report_files.json``)."""
    files, patterns = _escapes(ctx, folder)[esc]
    lp = folder / "report_files.json"
    listed = json.loads(lp.read_text())
    if isinstance(files, str):
        listed = files
    elif isinstance(listed, dict):   # {"files": {path: sha256}}: the escape goes in there
        target = listed["files"] if isinstance(listed.get("files"), dict) else listed
        for e in [*files, *patterns]:
            target[e if isinstance(e, str) else json.dumps(e)] = None
    else:
        listed = [*listed, *files, *patterns]
    lp.write_text(json.dumps(listed))
    if "link" in esc:
        (folder / "linkdir").symlink_to(ctx.victims)


def _escape_setup(esc: str, cmd: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("stopped" if cmd == "resume" else "done")
        if cmd == "report":
            # the folder of a report someone else wrote: its list of files names the escape
            shutil.copytree(ctx.templates["report"], ctx.report, symlinks=True)
            _plant_report_escape(ctx, ctx.report, esc)
            return cmd_report(ctx, run)
        if cmd == "report-manifest":
            # a folder written through claim_outputs (kind report): its manifest.json lists it
            ctx.report.mkdir()
            (ctx.report / "meta.json").write_text(json.dumps({"kind": "report",
                                                              "status": "done"}))
            (ctx.report / "index.html").write_text("<html>old report</html>")
            (ctx.report / "manifest.json").write_text(json.dumps(
                {"kind": "report", "files": ["manifest.json", "meta.json", "index.html"],
                 "patterns": []}))
            _plant_escape(ctx, ctx.report, esc)
            return cmd_report(ctx, run)
        _plant_escape(ctx, run, esc)
        return COMMANDS[cmd](ctx, run)
    return setup


for _esc in ESCAPES:
    for _cmd in ("overwrite", "report", "report-manifest", "resume"):
        # report_files.json maps names to hashes: JSON keys are strings, so the planted
        # non-strings become odd but plain names inside the folder (never acted on outside)
        exp = EITHER() if (_esc, _cmd) == ("non-string-entries", "report") else REFUSE()
        add(f"escape-{_esc}-{_cmd}", "manifest escape", _escape_setup(_esc, _cmd), exp)


def _report_files_escape(rel: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        ctx.report.mkdir()
        r = rel.replace("ROOT", str(ctx.root))
        (ctx.report / "report_files.json").write_text(json.dumps([r, "index.html"]))
        if "linkdir" in r:
            (ctx.report / "linkdir").symlink_to(ctx.victims)
        return cmd_report(ctx, run)
    return setup


for _n, _rel in (("dotdot", "../victims/victim.txt"), ("absolute", "ROOT/victims/victim.txt"),
                 ("symlinked-folder", "linkdir/victim.txt")):
    add(f"escape-report-files-{_n}", "manifest escape", _report_files_escape(_rel), EITHER())


# ------------------------------------------------------------------------------ symlinks & links
@case("symlink-checkpoints-folder-overwrite", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    out = ctx.victims / "ckpts"
    shutil.copytree(run / "checkpoints", out)
    (out / "my-model.pt").write_bytes(b"the user's own model")
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(out)
    return cmd_overwrite(ctx, run)


@case("symlink-checkpoints-folder-resume", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("stopped")
    out = ctx.victims / "ckpts"
    shutil.copytree(run / "checkpoints", out)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(out)
    return cmd_resume(ctx, run)


@case("symlink-checkpoints-folder-report", "symlink", EITHER())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    out = ctx.victims / "ckpts"
    shutil.copytree(run / "checkpoints", out)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(out)
    return cmd_report(ctx, run)


def _lock_link(ctx: Ctx, run: Path, hard: bool = False) -> None:
    target = ctx.outside("precious.txt", b"an outside file the lock points at\n")
    (run / LOCK).unlink(missing_ok=True)
    if hard:
        os.link(target, run / LOCK)
    else:
        (run / LOCK).symlink_to(target)


for _cmd, _tpl in (("resume", "stopped"), ("overwrite", "done")):
    def _mk(cmd=_cmd, tpl=_tpl, hard=False):
        def setup(ctx: Ctx) -> list[str]:
            run = ctx.use(tpl)
            _lock_link(ctx, run, hard)
            return COMMANDS[cmd](ctx, run)
        return setup
    add(f"symlink-lock-{_cmd}", "symlink", _mk(), REFUSE())
    add(f"hardlink-lock-{_cmd}", "symlink", _mk(hard=True), REFUSE())


@case("symlink-lock-only-folder-new", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.run.mkdir(parents=True)
    _lock_link(ctx, ctx.run)
    return cmd_new(ctx)


@case("hardlink-lock-only-folder-new", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.run.mkdir(parents=True)
    _lock_link(ctx, ctx.run, hard=True)
    return cmd_new(ctx)


@case("symlink-lock-to-outside-folder-resume", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("stopped")
    (run / LOCK).symlink_to(ctx.victims / "sub")
    return cmd_resume(ctx, run)


def _log_link(name: str, cmd: str, hard: bool) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("stopped" if cmd == "resume" else "done")
        target = ctx.outside(name, (run / name).read_bytes())
        (run / name).unlink()
        if hard:
            os.link(target, run / name)
        else:
            (run / name).symlink_to(target)
        return COMMANDS[cmd](ctx, run)
    return setup


add("symlink-log-resume", "symlink", _log_link("log.txt", "resume", False), REFUSE())
add("symlink-log-overwrite", "symlink", _log_link("log.txt", "overwrite", False), EITHER())
add("hardlink-log-resume", "symlink", _log_link("log.txt", "resume", True), REFUSE())
# a hard link to an outside file: appending through it changes that file; replacing the name
# (an atomic rewrite) does not. Either is fine as long as the outside file stays as it was.
add("hardlink-metrics-resume", "symlink", _log_link("metrics.jsonl", "resume", True), EITHER())
add("hardlink-constants-resume", "symlink", _log_link("constants.jsonl", "resume", True),
    EITHER())
add("symlink-constants-resume", "symlink", _log_link("constants.jsonl", "resume", False),
    REFUSE())
add("hardlink-meta-check", "symlink", _log_link("meta.json", "check", True), EITHER())


@case("symlink-variant-label-newline", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    p = ctx.root / "nl.toml"
    p.write_text(config_text(extra='[[variants]]\nlabel = "a\\nerror: forged line"\nlr = 0.05\n'
                                   '[[variants]]\nlabel = "b"\nlr = 0.1\n'))
    return cmd_new(ctx, cfg=p)


@case("symlink-variant-label-dotdot-export", "symlink", EITHER())
def _(ctx: Ctx) -> list[str]:
    p = ctx.root / "dd.toml"
    p.write_text(config_text(extra='[[variants]]\nlabel = "../../../../escape"\nlr = 0.05\n'
                                   '[[variants]]\nlabel = "b"\nlr = 0.1\n',
                             rounds=2, checkpoint_every=0))
    from adflora_analysis.config import load_config
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    try:
        run_study(load_config(SyntheticConfig, p), ctx.run, progress=False)
    except AdfloraError:   # refused at the start: plant the rows by hand
        ctx.use("done")
        _rename_rows(ctx.run, variant="../../../../escape")
    return cmd_export(ctx, ctx.run)


@case("symlink-out-dangling-run", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.a.mkdir(exist_ok=True)
    ctx.run.symlink_to(ctx.root / "nowhere" / "run")
    ctx.targets = [ctx.run]
    return cmd_new(ctx)


@case("symlink-out-dangling-report", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    ctx.report.symlink_to(ctx.root / "nowhere" / "report")
    return cmd_report(ctx, run)


@case("symlink-logdir-dangling-export", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    ctx.tb.symlink_to(ctx.root / "nowhere" / "tb")
    return cmd_export(ctx, run)


@case("symlink-resume-dangling", "symlink", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.a.mkdir(exist_ok=True)
    ctx.run.symlink_to(ctx.root / "nowhere")
    return cmd_resume(ctx)


# ------------------------------------------------------------------------------ export names
def _rename_rows(run: Path, **cols: str) -> None:
    """Rewrite the rows of adf-lora in metrics.parquet and metrics.jsonl with ``cols``."""
    import pandas as pd

    df = pd.read_parquet(run / "metrics.parquet")
    sel = df["method"] == "adf-lora"
    for k, v in cols.items():
        df[k] = df[k].astype(str) if k in df else None
        df.loc[sel, k] = v
    df.to_parquet(run / "metrics.parquet", index=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    with open(run / "metrics.jsonl", "w") as f:
        for r in rows:
            if r.get("method") == "adf-lora":
                r.update(cols)
            else:
                r.update({k: str(r[k]) for k in cols if k in r})
            f.write(json.dumps(r) + "\n")


def _export_name(**cols: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        _rename_rows(run, **{k: v.replace("ROOT", str(ctx.root)) for k, v in cols.items()})
        return cmd_export(ctx, run)
    return setup


for _n, _cols in (("method-dotdot", {"method": "../../../escape"}),
                  ("method-absolute", {"method": "ROOT/victims/abs"}),
                  ("method-dotdot-deep", {"method": "../../../../../../../../escape"}),
                  ("method-newline", {"method": "a\nb"}),
                  ("variant-dotdot", {"variant": "../../../escape"}),
                  ("seed-dotdot", {"seed": "/../../../../escape"})):
    add(f"export-name-{_n}", "export names", _export_name(**_cols), EITHER())


# ------------------------------------------------------------------------------ report --out
def _report_out(files: dict[str, str]) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        for rel, text in files.items():
            p = ctx.report / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        # the user's files must survive: watch them from outside the target
        ctx.targets = [ctx.report]
        return cmd_report(ctx, run)
    return setup


for _n, _files in (("index-html", {"index.html": "<h1>my page</h1>"}),
                   ("report-md", {"report.md": "# my report"}),
                   ("both", {"index.html": "<h1>mine</h1>", "report.md": "# mine"}),
                   ("figures-folder", {"figures/fig1.png": "my figure"}),
                   ("tables-folder", {"tables/t.csv": "a,b\n1,2\n"})):
    add(f"report-out-user-{_n}", "report --out", _report_out(_files),
        REFUSE(error="not empty|already|not written by adflora|holds|refus|user|exist"))


@case("report-out-is-the-run", "report --out", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    argv = cmd_report(ctx, run, run)
    ctx.targets = [ctx.report]   # the run itself must not change
    return argv


@case("report-out-inside-run-checkpoints", "report --out", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    argv = cmd_report(ctx, run, run / "checkpoints")
    ctx.targets = [ctx.report]
    return argv


@case("report-out-previous-report-replaced", "report --out", OK())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    code, crash = call_main(cmd_report(ctx, run))   # a report adflora wrote there before
    assert code == 0 and not crash, (code, crash)
    return cmd_report(ctx, run)


# ------------------------------------------------------------------------------ resume: not its own
def _jsonl_lines(p: Path) -> list[str]:
    return [x for x in p.read_text().split("\n") if x]


def _is_row(line: str, **kw) -> bool:
    try:
        r = json.loads(line)
    except ValueError:
        return False
    return isinstance(r, dict) and all(r.get(k) == v for k, v in kw.items())


def _mix(kind: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("stopped")
        other = ctx.templates["lr2"]
        m = run / "metrics.jsonl"
        lines = _jsonl_lines(m)
        if kind == "dup-all-row-appended":
            dup = next(x for x in lines if _is_row(x, job="adf-lora", round=1, layer="all"))
            m.write_text("\n".join([*lines, dup]) + "\n")
        elif kind == "dup-layer-row-appended":
            dup = next(x for x in lines if _is_row(x, job="adf-lora", round=1)
                       and json.loads(x).get("layer") not in (None, "all"))
            m.write_text("\n".join([*lines, dup]) + "\n")
        elif kind == "dup-line-in-place":
            i = next(i for i, x in enumerate(lines) if _is_row(x, job="rolora", round=0))
            m.write_text("\n".join(lines[: i + 1] + [lines[i]] + lines[i + 1:]) + "\n")
        elif kind == "dup-last-line":
            m.write_text("\n".join([*lines, lines[-1]]) + "\n")
        elif kind == "metrics-of-other-lr":
            shutil.copy(other / "metrics.jsonl", m)
        elif kind == "checkpoint-of-other-lr":
            shutil.copy(other / CKPT["stopped"], run / CKPT["stopped"])
        elif kind == "metrics-and-checkpoints-of-other-lr":
            shutil.copy(other / "metrics.jsonl", m)
            shutil.rmtree(run / "checkpoints")
            shutil.copytree(other / "checkpoints", run / "checkpoints")
        elif kind == "config-of-other-lr":
            shutil.copy(other / "config.toml", run / "config.toml")
        elif kind == "checkpoint-of-other-job":
            shutil.copy(run / "checkpoints/adf-lora.r000001.rank0.pt", run / CKPT["stopped"])
        elif kind == "checkpoint-round-mismatch":
            import torch

            ck = torch.load(run / "checkpoints/adf-lora.r000003.rank0.pt", weights_only=True)
            ck["job"] = "rolora"
            torch.save(ck, run / CKPT["stopped"])
        elif kind == "rows-of-other-seed":
            out = []
            for x in lines:
                if _is_row(x, job="adf-lora", seed=1):
                    r = json.loads(x)
                    r["seed"] = 7
                    x = json.dumps(r)
                out.append(x)
            m.write_text("\n".join(out) + "\n")
        elif kind == "progress-claims-unfinished-job-done":
            (run / "progress.json").write_text(json.dumps({"done": ["adf-lora", "rolora"]}))
        elif kind == "progress-names-unknown-job":
            (run / "progress.json").write_text(json.dumps({"done": ["adf-lora", "ghost"]}))
        elif kind == "stray-job-rows":
            r = json.loads(next(x for x in lines if _is_row(x, job="adf-lora")))
            r["job"] = "other-run"
            m.write_text("\n".join([*lines, json.dumps(r)]) + "\n")
        elif kind == "meta-of-other-run":
            shutil.copy(other / "meta.json", run / "meta.json")
        else:
            raise AssertionError(kind)
        return cmd_resume(ctx, run)
    return setup


for _k in ("dup-all-row-appended", "dup-layer-row-appended", "dup-line-in-place",
           "dup-last-line", "metrics-of-other-lr", "checkpoint-of-other-lr",
           "metrics-and-checkpoints-of-other-lr", "config-of-other-lr",
           "checkpoint-of-other-job", "checkpoint-round-mismatch", "rows-of-other-seed",
           "progress-claims-unfinished-job-done", "stray-job-rows", "meta-of-other-run"):
    add(f"mix-{_k}", "not its own", _mix(_k), REFUSE())
# progress.json naming a job this run does not have mixes no result: either refuse, or end
# with exactly the uninterrupted run's rows
add("mix-progress-names-unknown-job", "not its own", _mix("progress-names-unknown-job"),
    EITHER(), verify=same_rows_as(lambda ctx: ctx.templates["done"]))


XY_VARIANTS = ('[[variants]]\nlabel = "x y"\nlr = 0.05\n'
               '[[variants]]\nlabel = "x_y"\nlr = 0.1\n')


def _xy_stopped(ctx: Ctx) -> bool:
    """An uninterrupted run of the ``x y`` / ``x_y`` study at root/ref and a stopped one at
    ``ctx.run``; False where the study is refused at the start."""
    from adflora_analysis.config import load_config
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    p = ctx.root / "xy.toml"
    p.write_text(config_text(extra=XY_VARIANTS))
    try:
        cfg = load_config(SyntheticConfig, p)
        run_study(cfg, ctx.root / "ref", progress=False)
        run_study(cfg, ctx.run, progress=False, stop_after=STOP_AFTER + 4)
        return True
    except AdfloraError:   # refused at the start already: a run written by an older version
        shutil.rmtree(ctx.run, ignore_errors=True)
        ctx.use("stopped")
        shutil.copy(p, ctx.run / "config.toml")
        return False


# The brief asks for a refusal (the labels shared checkpoint file names); a fix that makes
# the names distinct may instead resume correctly: then the rows must be exactly those of the
# uninterrupted run.
@case("mix-variants-x-space-y-and-x_y-resume", "not its own", EITHER(),
      verify=same_rows_as(lambda ctx: ctx.root / "ref"))
def _(ctx: Ctx) -> list[str]:
    _xy_stopped(ctx)
    return cmd_resume(ctx)


@case("mix-variants-x-space-y-and-x_y-old-colliding-names-resume", "not its own", EITHER(),
      verify=same_rows_as(lambda ctx: ctx.root / "ref"))
def _(ctx: Ctx) -> list[str]:
    """A run an older version wrote: both variants' checkpoints under one name, the later
    job's overwriting the earlier's."""
    import re as _re

    from adflora_analysis.rundir import job_slug

    if _xy_stopped(ctx):
        ck = ctx.run / "checkpoints"
        for key in ("x y/adf-lora", "x y/rolora", "x_y/adf-lora", "x_y/rolora"):
            old = _re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)
            for f in sorted(ck.glob(f"{job_slug(key)}.r*.rank*.pt")):
                f.replace(ck / (old + f.name[len(job_slug(key)):]))
    return cmd_resume(ctx)


@case("mix-variants-x-space-y-and-x_y-new", "not its own", EITHER())
def _(ctx: Ctx) -> list[str]:
    p = ctx.root / "xy.toml"
    p.write_text(config_text(extra=XY_VARIANTS))
    return cmd_new(ctx, cfg=p)


# ------------------------------------------------------------------------------ verdicts
def _verdict(template: str, cmd: str, *more: str, hold: bool = False):
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use(template)
        if hold:
            ctx.hold_lock(run)
        argv = COMMANDS[cmd](ctx, run)
        return [*argv, *more]
    return setup


add("verdict-check-json-killed", "unfinished run", _verdict("killed", "check"),
    OK(banner="stopped", where="json"))
add("verdict-check-json-running", "unfinished run",
    _verdict("killed", "check", "--no-save", hold=True), OK(banner="running", where="json"))
add("verdict-check-json-diverged", "unfinished run", _verdict("diverged", "check"),
    OK(banner="diverged", where="json"))
add("verdict-check-text-killed", "unfinished run",
    lambda ctx: [a for a in _verdict("killed", "check")(ctx) if a != "--json"],
    OK(banner="stopped"))
add("verdict-check-strict-killed", "unfinished run", _verdict("killed", "check", "--strict"),
    REFUSE(error="stopped"))
add("verdict-report-killed", "unfinished run", _verdict("killed", "report"),
    OK(banner="stopped", where="report"))
add("verdict-report-running", "unfinished run", _verdict("killed", "report", hold=True),
    OK(banner="running", where="report"))
add("verdict-report-failed", "unfinished run", _verdict("failed", "report"),
    OK(banner="failed", where="report"))
add("verdict-export-killed", "unfinished run", _verdict("killed", "export"),
    OK(banner="stopped", where="out"))
add("verdict-export-running", "unfinished run", _verdict("killed", "export", hold=True),
    OK(banner="running", where="out"))
add("verdict-export-diverged", "unfinished run", _verdict("diverged", "export"),
    OK(banner="diverged", where="out"))


# ------------------------------------------------------------------------ one line, no traceback
LONG = "r" * 300


def _long(cmd: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        if cmd == "new":
            return cmd_new(ctx, ctx.a / LONG)
        if cmd == "resume":
            ctx.a.mkdir(exist_ok=True)
            return cmd_resume(ctx, ctx.a / LONG)
        run = ctx.use("done")
        if cmd == "check-file":
            return cmd_check(ctx, run, "--checks", str(ctx.root / (LONG + ".py")))
        if cmd == "report":
            return cmd_report(ctx, run, ctx.a / LONG)
        return cmd_export(ctx, run, ctx.a / LONG)
    return setup


for _c in ("new", "resume", "report", "export", "check-file"):
    add(f"oneline-300-char-name-{_c}", "traceback", _long(_c), REFUSE())


def _labels(data: bytes | None) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        p = run / "label_counts.csv"
        if data is None:
            p.mkdir()
        else:
            p.write_bytes(data)
        return cmd_report(ctx, run)
    return setup


add("oneline-label-counts-empty-report", "traceback", _labels(b""), REFUSE())
add("oneline-label-counts-garbage-report", "traceback", _labels(GARBAGE), REFUSE())
add("oneline-label-counts-folder-report", "traceback", _labels(None), REFUSE())


@case("oneline-label-counts-empty-export", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    (run / "label_counts.csv").write_bytes(b"")
    return cmd_export(ctx, run)


@case("oneline-out-through-a-file", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.a.mkdir(exist_ok=True)
    (ctx.a / "afile").write_text("x")
    return cmd_new(ctx, ctx.a / "afile" / "run")


@case("oneline-report-of-a-file", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.a.mkdir(exist_ok=True)
    f = ctx.a / "afile"
    f.write_text("x")
    return cmd_report(ctx, f)


@case("oneline-check-of-missing-run", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    return cmd_check(ctx, ctx.a / "missing")


@case("oneline-export-without-rows", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    for f in ("metrics.parquet", "metrics.jsonl"):
        (run / f).unlink()
    return cmd_export(ctx, run)


@case("oneline-meta-json-list-report", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    (run / "meta.json").write_text(json.dumps([{"kind": "synthetic", "status": "done"}]))
    return cmd_report(ctx, run)


@case("oneline-manifest-json-list-overwrite", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    (run / "manifest.json").write_text(json.dumps(["config.toml", "meta.json"]))
    return cmd_overwrite(ctx, run)


@case("oneline-resume-of-a-file", "traceback", REFUSE())
def _(ctx: Ctx) -> list[str]:
    ctx.a.mkdir(exist_ok=True)
    (ctx.a / "afile").write_text("x")
    return cmd_resume(ctx, ctx.a / "afile")


# ------------------------------------------------------------------------------ sizes
def _sized(kind: str, *over: str, cfg: str | None = None) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        ctx.absent = [ctx.run]
        if kind == "glue":
            ctx.targets = [ctx.run]
            return ["glue", "run", cfg or "smoke", "--out", str(ctx.run), *over]
        p = ctx.cfg
        if cfg is not None:
            p = ctx.root / "big.toml"
            p.write_text(cfg)
        return cmd_new(ctx, ctx.run, p, *over)
    return setup


SIZE_MAX_S = 10.0
for _n, _args in (("seeds-1e9", ("seeds=1000000000",)), ("seeds-2e7", ("seeds=20000000",)),
                  # at the setting (bounds: d_in = 64, 274 GB); at the template's
                  # d_in = 5 a d_out of 1e6 needs ~2 GB, which fits this case's 3 GB: a run
                  ("d_out-1e6-float", ("d_out=1e6", "d_in=64")),
                  ("d_out-1e6", ("d_out=1000000", "d_in=64")),
                  ("d_in-1e6", ("d_in=1000000",)),
                  ("n_clients-1e9", ("n_clients=1000000000",)),
                  ("rounds-1e12", ("rounds=1000000000000",)),
                  ("samples_per_client-1e10", ("samples_per_client=10000000000",)),
                  ("n_layers-1e7", ("n_layers=10000000",)),
                  ("topology_samples-1e9-float-n10", ("topology_samples=1e9", "n_clients=10")),
                  ("topology_samples-1e9-n10", ("topology_samples=1000000000", "n_clients=10"))):
    add(f"size-{_n}", "sizes", _sized("synthetic", *_args),
        REFUSE(absent=("run",), max_s=SIZE_MAX_S), mode="fork", timeout=SIZE_MAX_S + 2)

for _n, _args in (("batch_size-1e9-float", ("batch_size=1e9",)),
                  ("batch_size-1e9", ("batch_size=1000000000",)),
                  ("max_length-1e8-float", ("max_length=1e8",)),
                  ("max_length-1e8", ("max_length=100000000",)),
                  ("n_clients-1e8", ("n_clients=100000000",)),
                  ("seeds-1e9", ("seeds=1000000000",))):
    add(f"size-glue-{_n}", "sizes", _sized("glue", *_args),
        REFUSE(absent=("run",), max_s=SIZE_MAX_S), mode="fork", timeout=SIZE_MAX_S + 2)

_SWEEP = "sweep = {lr = [" + ", ".join(f"{0.01 + i * 1e-7:.7f}" for i in range(50_000)) + "]}\n"
_SWEEP2 = ('sweep = {lr = [' + ", ".join(f"{0.01 + i * 1e-5:.5f}" for i in range(300)) + '], '
           '"topology.weights" = ["metropolis", "max-degree"], local_steps = ['
           + ", ".join(str(i) for i in range(1, 101)) + "]}\n")
add("size-sweep-50000-values", "sizes",
    _sized("synthetic", cfg=config_text().replace("[topology]", _SWEEP + "[topology]")),
    REFUSE(absent=("run",), max_s=SIZE_MAX_S), mode="fork", timeout=SIZE_MAX_S + 2)
add("size-sweep-60000-combinations", "sizes",
    _sized("synthetic", cfg=config_text().replace("[topology]", _SWEEP2 + "[topology]")),
    REFUSE(absent=("run",), max_s=SIZE_MAX_S), mode="fork", timeout=SIZE_MAX_S + 2)
add("size-variants-20000", "sizes",
    _sized("synthetic", cfg=config_text() + "".join(
        f"[[variants]]\nlabel = \"v{i}\"\nlr = {0.01 + i * 1e-6:.6f}\n" for i in range(20_000))),
    REFUSE(absent=("run",), max_s=SIZE_MAX_S), mode="fork", timeout=SIZE_MAX_S + 2)

_DEEP = 400
for _n, _text in (
        ("toml-inline-tables-400-deep",
         config_text() + "deep = " + "{a = " * _DEEP + "1" + "}" * _DEEP + "\n"),
        ("toml-arrays-400-deep", "deep = " + "[" * _DEEP + "1" + "]" * _DEEP + "\n"
         + config_text()),
        ("toml-dotted-key-400-deep", config_text() + ".".join(["a"] * _DEEP) + " = 1\n"),
        ("toml-tables-400-deep", config_text() + "[" + ".".join(["t"] * _DEEP) + "]\nx = 1\n")):
    add(f"size-{_n}", "sizes", _sized("synthetic", cfg=_text), REFUSE(absent=("run",)))


@case("size-override-400-deep", "sizes", REFUSE(absent=("run",)))
def _(ctx: Ctx) -> list[str]:
    return cmd_new(ctx, ctx.run, ctx.cfg, ".".join(["topology"] * 400) + "=1")


@case("size-override-value-400-deep", "sizes", REFUSE(absent=("run",)))
def _(ctx: Ctx) -> list[str]:
    return cmd_new(ctx, ctx.run, ctx.cfg, "topology.params=" + "[" * 400 + "]" * 400)


@case("size-topology-inspect-samples-1e9", "sizes", REFUSE(max_s=SIZE_MAX_S), mode="fork",
      timeout=SIZE_MAX_S + 2)
def _(ctx: Ctx) -> list[str]:
    ctx.targets = []
    return ["topology", "inspect", "--graph", "encounter", "--n", "10", "--q", "0.1",
            "--samples", "1000000000"]


@case("size-topology-inspect-n-1e9", "sizes", REFUSE(max_s=SIZE_MAX_S), mode="fork",
      timeout=SIZE_MAX_S + 2)
def _(ctx: Ctx) -> list[str]:
    ctx.targets = []
    return ["topology", "inspect", "--graph", "ring", "--n", "1000000000"]


# ------------------------------------------------------------------------------ bad option values
BAD = {"nan": "nan", "inf": "inf", "neg": "-1", "zero": "0", "nonnum": "abc"}


def _opt_check(opt: str, value: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        return cmd_check(ctx, run, opt, value)
    return setup


def _opt_run(key: str, value: str, glue: bool = False) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        ctx.absent = [ctx.run]
        if glue:
            ctx.targets = [ctx.run]
            return ["glue", "run", "smoke", "--out", str(ctx.run), f"{key}={value}"]
        return cmd_new(ctx, ctx.run, ctx.cfg, f"{key}={value}")
    return setup


def _opt_topo(opt: str, value: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        ctx.targets = []
        base = {"--graph": "encounter", "--n": "10", "--q": "0.1", "--samples": "500"}
        base[opt] = value
        return ["topology", "inspect", *[x for kv in base.items() for x in kv]]
    return setup


_NO_OPT = ("No such option",)
for _opt in ("--z", "--effect", "--check-timeout"):
    for _vn, _v in {**BAD, "huge": "1e300"}.items():
        exp = REFUSE(forbid=_NO_OPT)
        if _vn == "huge" or (_opt == "--check-timeout" and _vn == "inf"):
            exp = EITHER(forbid=_NO_OPT)
        add(f"option-check{_opt[1:]}-{_vn}", "bad option value", _opt_check(_opt, _v), exp)

for _key in ("rounds", "seeds", "n_clients", "lr", "topology_samples", "local_steps",
             "checkpoint_every"):
    for _vn, _v in BAD.items():
        if _key == "checkpoint_every" and _vn == "zero":
            continue   # 0 = no checkpoints: valid
        diverges = _key == "lr" and _vn == "inf"
        add(f"option-run-{_key}-{_vn}", "bad option value", _opt_run(_key, _v),
            REFUSE(absent=() if diverges else ("run",)))
add("option-run-lr-huge", "bad option value", _opt_run("lr", "1e300"), REFUSE())
for _key in ("batch_size", "max_length", "rounds", "lr", "n_clients"):
    for _vn, _v in BAD.items():
        add(f"option-glue-{_key}-{_vn}", "bad option value", _opt_run(_key, _v, glue=True),
            REFUSE(absent=("run",)))
for _opt in ("--q", "--participation", "--samples", "--n"):
    for _vn, _v in {**BAD, "huge": "1e300"}.items():
        if _opt in ("--samples", "--n") and _vn == "huge":
            continue   # covered by the size cases (isolated)
        exp = EITHER() if (_opt == "--q" and _vn == "zero") else REFUSE()
        add(f"option-topology{_opt[1:]}-{_vn}", "bad option value", _opt_topo(_opt, _v), exp)


# ------------------------------------------------------------------------------ user checks
def _user_check(body: str, at_import: str = "", *more: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        run = ctx.use("done")
        f = ctx.root / "my_checks.py"
        f.write_text(
            "import os, signal, sys, time\n"
            "from adflora_analysis.theory import register_check\n"
            f"{at_import}\n"
            "@register_check('campaign-user-check')\n"
            "def campaign_user_check(ctx):\n"
            f"    {body}\n")
        return cmd_check(ctx, run, "--strict", "--checks", str(f), *more)
    return setup


_T = ("--check-timeout", "2")
add("usercheck-sys-exit-0-strict", "user checks", _user_check("sys.exit(0)"), REFUSE())
add("usercheck-sys-exit-0-at-import", "user checks",
    _user_check("return None", "sys.exit(0)"), REFUSE())
add("usercheck-raise-systemexit-none", "user checks", _user_check("raise SystemExit"),
    REFUSE())
add("usercheck-keyboardinterrupt", "user checks", _user_check("raise KeyboardInterrupt"),
    REFUSE())
add("usercheck-keyboardinterrupt-at-import", "user checks",
    _user_check("return None", "raise KeyboardInterrupt"), REFUSE())
add("usercheck-baseexception-subclass", "user checks",
    _user_check("raise GeneratorExit('x')"), REFUSE())
add("usercheck-loop-forever", "user checks", _user_check("while True: pass", "", *_T),
    REFUSE(max_s=80, forbid=_NO_OPT), mode="subprocess", timeout=90)
add("usercheck-loop-forever-at-import", "user checks",
    _user_check("return None", "while True: pass", *_T),
    REFUSE(max_s=80, forbid=_NO_OPT), mode="subprocess", timeout=90)
add("usercheck-sleep-ignoring-alarm", "user checks",
    _user_check("signal.signal(signal.SIGALRM, signal.SIG_IGN); time.sleep(600)", "", *_T),
    REFUSE(max_s=80, forbid=_NO_OPT), mode="subprocess", timeout=90)
add("usercheck-os-exit-0", "user checks", _user_check("os._exit(0)"), REFUSE(),
    mode="subprocess", timeout=60)


@case("usercheck-file-is-a-folder", "user checks", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    (ctx.root / "checks_dir.py").mkdir()
    return cmd_check(ctx, run, "--checks", str(ctx.root / "checks_dir.py"))


@case("usercheck-file-not-utf8", "user checks", REFUSE())
def _(ctx: Ctx) -> list[str]:
    run = ctx.use("done")
    (ctx.root / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    return cmd_check(ctx, run, "--checks", str(ctx.root / "bad.py"))


# ------------------------------------------------------------------------------ data-borne code
def _evil(cmd: str, form: str, where: str | None = None) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        tpl = "stopped" if cmd == "resume" else "done"
        run = ctx.use(tpl)
        rel = where or CKPT[tpl]
        (run / rel).write_bytes(evil_bytes(ctx.marker, form))
        return COMMANDS[cmd](ctx, run)
    return setup


for _form in ("raw", "zip", "nested"):
    add(f"code-checkpoint-{_form}-resume", "code execution", _evil("resume", _form), REFUSE())
    add(f"code-checkpoint-{_form}-report", "code execution", _evil("report", _form), REFUSE())
add("code-checkpoint-finished-job-resume", "code execution",
    _evil("resume", "zip", "checkpoints/adf-lora.r000003.rank0.pt"), REFUSE())
add("code-checkpoint-foreign-name-report", "code execution",
    _evil("report", "raw", "checkpoints/evil.r000001.rank0.pt"), EITHER())
add("code-checkpoint-check", "code execution", _evil("check", "zip"), EITHER())
add("code-checkpoint-export", "code execution", _evil("export", "zip"), EITHER())
add("code-checkpoint-overwrite", "code execution", _evil("overwrite", "raw"), OK())


# ------------------------------------------------------------------------------ the disk
@contextlib.contextmanager
def failing_writes(under: Path, err: int) -> Iterator[None]:
    """Every write under ``under`` fails with ``err``: EROFS refuses creating, renaming,
    removing and opening for writing; ENOSPC lets empty files be created but refuses data
    (writes through ``open``, appends, renames into place), as a full disk does."""
    import builtins

    root = os.path.abspath(under)
    saved = {}

    def inside(p) -> bool:
        if isinstance(p, int):
            return False
        try:
            s = os.path.abspath(os.fsdecode(p))
        except TypeError:
            return False
        return s == root or s.startswith(root + os.sep)

    def boom(p):
        raise OSError(err, os.strerror(err), os.fsdecode(p))

    o_open, o_replace, o_rename, o_mkdir = os.open, os.replace, os.rename, os.mkdir
    o_unlink, o_rmdir, b_open = os.unlink, os.rmdir, builtins.open
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def f_open(path, flags, mode=0o777, *, dir_fd=None):
        if inside(path) and flags & W:
            if err == errno.EROFS or flags & (os.O_APPEND | os.O_TRUNC):
                boom(path)
        return o_open(path, flags, mode, dir_fd=dir_fd)

    def f_replace(src, dst, *a, **k):
        if inside(dst):
            boom(dst)
        return o_replace(src, dst, *a, **k)

    def f_rename(src, dst, *a, **k):
        if inside(dst):
            boom(dst)
        return o_rename(src, dst, *a, **k)

    def f_mkdir(path, mode=0o777, *a, **k):
        if inside(path) and err == errno.EROFS:
            boom(path)
        return o_mkdir(path, mode, *a, **k)

    def f_unlink(path, *a, **k):
        if inside(path) and err == errno.EROFS:
            boom(path)
        return o_unlink(path, *a, **k)

    def f_rmdir(path, *a, **k):
        if inside(path) and err == errno.EROFS:
            boom(path)
        return o_rmdir(path, *a, **k)

    def f_bopen(file, mode="r", *a, **k):
        if inside(file) and any(c in mode for c in "wax+"):
            boom(file)
        return b_open(file, mode, *a, **k)

    saved = {(os, "open"): o_open, (os, "replace"): o_replace, (os, "rename"): o_rename,
             (os, "mkdir"): o_mkdir, (os, "unlink"): o_unlink, (os, "remove"): os.remove,
             (os, "rmdir"): o_rmdir, (builtins, "open"): b_open, (io, "open"): io.open}
    os.open, os.replace, os.rename, os.mkdir = f_open, f_replace, f_rename, f_mkdir
    os.unlink, os.remove, os.rmdir = f_unlink, f_unlink, f_rmdir
    builtins.open, io.open = f_bopen, f_bopen
    try:
        yield
    finally:
        for (mod, name), fn in saved.items():
            setattr(mod, name, fn)


def _disk(cmd: str, err: int) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        if cmd == "new":
            argv = cmd_new(ctx)
            where = ctx.run
        else:
            run = ctx.use("stopped" if cmd == "resume" else "done")
            argv = COMMANDS[cmd](ctx, run)
            where = {"report": ctx.report, "export": ctx.tb}.get(cmd, run)
        ctx.fault = lambda: failing_writes(where, err)
        return argv
    return setup


DISK_FULL = "full|space|available"
for _en, _err, _rx in (("read-only", errno.EROFS, "read-only"),
                       ("disk-full", errno.ENOSPC, DISK_FULL)):
    for _c in ("new", "resume", "overwrite", "check", "report", "export"):
        add(f"disk-{_en}-{_c}-simulated", "disk", _disk(_c, _err), REFUSE(error=_rx))


def _tmpfs(cmd: str, kind: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        mnt = ctx.mount(ctx.a / "mnt", "size=2m" if kind == "ro" else "size=1m")
        run = mnt / "run"
        if cmd not in ("new",):
            ctx.use("stopped" if cmd == "resume" else "done", run)
            for f in ("checks.json", "check_curves.parquet"):   # so that a check must write
                (run / f).unlink(missing_ok=True)
        argv = {"new": lambda: cmd_new(ctx, run), "resume": lambda: cmd_resume(ctx, run),
                "check": lambda: cmd_check(ctx, run),
                "check-no-save": lambda: cmd_check(ctx, run, "--no-save"),
                "report": lambda: cmd_report(ctx, run, mnt / "report"),
                "export": lambda: cmd_export(ctx, run, mnt / "tb")}[cmd]()
        ctx.targets = [mnt]
        if kind == "ro":
            ctx.remount_ro(mnt)
        else:
            ctx.fill(mnt)
        return argv
    return setup


for _c in ("new", "resume", "check", "check-no-save", "report", "export"):
    add(f"disk-tmpfs-read-only-{_c}", "disk", _tmpfs(_c, "ro"),
        OK() if _c == "check-no-save" else REFUSE(error="read-only"))
for _c in ("new", "check", "report", "export"):
    add(f"disk-tmpfs-full-{_c}", "disk", _tmpfs(_c, "full"), REFUSE(error=DISK_FULL))


# ------------------------------------------------------------------------------ running a case
@dataclass
class Result:
    code: object
    out: str
    err: str
    seconds: float
    crash: str | None = None   # a Python exception that escaped main, or a timeout


class CaseTimeout(BaseException):
    """Raised by the watchdog of an in-process case."""


def call_main(argv: list[str]) -> tuple[object, str | None]:
    """``main(argv)``: (exit code, traceback of an exception that escaped it, or None)."""
    from adflora_analysis.cli import main

    try:
        main(list(argv))
    except SystemExit as e:
        c = e.code
        if c is None:
            return 0, None
        if isinstance(c, int):
            return c, None
        print(c, file=sys.stderr)
        return 1, None
    except CaseTimeout:
        raise
    except BaseException:  # noqa: BLE001 - anything escaping main is a finding
        return "exception", traceback.format_exc()
    return "returned", None


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    def fire(signum, frame):
        raise CaseTimeout(f"still running after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_inproc(case: Case, ctx: Ctx, argv: list[str], capsys) -> Result:
    reg = None
    with contextlib.suppress(ImportError):
        from adflora_analysis.theory import registry as reg
    saved = dict(reg.REGISTRY) if reg else None
    capsys.readouterr()
    t0 = time.perf_counter()
    crash = None
    try:
        with watchdog(case.timeout), (ctx.fault() if ctx.fault else contextlib.nullcontext()):
            code, crash = call_main(argv)
    except CaseTimeout as e:
        code, crash = "timeout", str(e)
    finally:
        if reg is not None:
            reg.REGISTRY.clear()
            reg.REGISTRY.update(saved)
    dt = time.perf_counter() - t0
    got = capsys.readouterr()
    return Result(code, got.out, got.err, dt, crash)


def _vmsize() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


FORK_EXTRA_MEMORY = 3 << 30


def run_forked(case: Case, ctx: Ctx, argv: list[str]) -> Result:
    """``main(argv)`` in a forked child limited to FORK_EXTRA_MEMORY more address space and
    ``case.timeout`` seconds: a size that is not refused fails there, not on the machine."""
    d = Path(tempfile.mkdtemp(prefix="campaign-fork-"))
    outp, errp, resp = d / "out", d / "err", d / "res"
    limit = _vmsize() + FORK_EXTRA_MEMORY
    sys.stdout.flush()
    sys.stderr.flush()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:   # the child: never returns into pytest
        try:
            fo, fe = open(outp, "w", buffering=1), open(errp, "w", buffering=1)
            os.dup2(fo.fileno(), 1)
            os.dup2(fe.fileno(), 2)
            sys.stdout, sys.stderr = fo, fe
            resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(
                resource.RLIMIT_AS)[1]))
            import torch

            torch.set_num_threads(1)
            code, crash = call_main(argv)
            if crash:
                fe.write(crash)
            fo.flush()
            fe.flush()
            resp.write_text(json.dumps(code))
        except BaseException:  # noqa: BLE001
            with contextlib.suppress(BaseException):
                sys.stderr.write(traceback.format_exc())
                sys.stderr.flush()
        finally:
            os._exit(0)
    crash = None
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.perf_counter() - t0 > case.timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            crash = f"still running after {case.timeout:.0f} s (killed)"
            break
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    out = outp.read_text(errors="replace") if outp.exists() else ""
    err = errp.read_text(errors="replace") if errp.exists() else ""
    if crash is None and resp.exists():
        code = json.loads(resp.read_text())
    elif crash is None:
        code, crash = "died", f"the child died (wait status {status}): {err[-300:]}"
    else:
        code = "timeout"
    shutil.rmtree(d, ignore_errors=True)
    if code == "exception":
        crash = err
    return Result(code, out, err, dt, crash)


def run_subprocess(case: Case, ctx: Ctx, argv: list[str]) -> Result:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **ctx.env}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "adflora_analysis", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    crash = None
    try:
        out, err = p.communicate(timeout=case.timeout)
        code = p.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        code, crash = "timeout", f"still running after {case.timeout:.0f} s (killed)"
    return Result(code, out, err, time.perf_counter() - t0, crash)


# ------------------------------------------------------------------------------ judging
def snapshot(root: Path, exclude: list[Path]) -> dict[str, tuple]:
    """Every path under ``root`` outside ``exclude``: type, mode, content hash, link target."""
    ex = [os.path.abspath(e) for e in exclude]

    def excluded(p: str) -> bool:
        return any(p == e or p.startswith(e + os.sep) for e in ex)

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        keep = []
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            if excluded(p):
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
                keep.append(name)
            elif stat.S_ISREG(st.st_mode):
                try:
                    with open(p, "rb") as f:
                        h = hashlib.sha1(f.read()).hexdigest()
                except OSError:
                    h = "unreadable"
                out[rel] = ("file", stat.S_IMODE(st.st_mode), h)
            else:
                out[rel] = ("other", st.st_mode)
        dirnames[:] = [d for d in dirnames if d in keep]
    return out


def diff(before: dict, after: dict) -> list[str]:
    out = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            out.append(f"removed {k}")
        elif k not in before:
            out.append(f"created {k}")
        elif before[k] != after[k]:
            out.append(f"changed {k}")
    return out


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def judge(case: Case, ctx: Ctx, r: Result, before: dict, after: dict) -> list[str]:
    """What is wrong with result ``r`` of ``case`` (empty: handled)."""
    e = case.expect
    problems: list[str] = []
    text = r.out + "\n" + r.err
    if r.crash:
        last = [ln for ln in r.crash.strip().splitlines() if ln.strip()]
        problems.append(f"crashed: {last[-1][:200] if last else r.crash[:200]}")
    elif "Traceback (most recent call last)" in text:
        tb = [ln for ln in r.err.strip().splitlines() if ln.strip()]
        problems.append(f"traceback on stderr: {tb[-1][:200] if tb else ''}")
    if ctx.marker.exists():
        problems.append("CODE FROM DATA RAN: the marker file was written")
    changed = diff(before, after)
    if changed:
        problems.append("changed outside the target: " + ", ".join(changed[:6])
                        + (f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""))
    for name in e.absent:
        p = getattr(ctx, name)
        if os.path.lexists(p):
            problems.append(f"{name} was created although the command must refuse before "
                            "anything is spent")
    if e.max_s is not None and r.seconds > e.max_s:
        problems.append(f"took {r.seconds:.1f} s (limit {e.max_s:.0f} s)")
    errs = error_lines(r.err)
    nonblank = [ln for ln in r.err.splitlines() if ln.strip()]

    def one_line() -> None:
        if len(errs) != 1:
            problems.append(f"{len(errs)} error lines on stderr (need exactly 1): "
                            + " | ".join(x[:120] for x in errs[:3]))
            return
        if nonblank and nonblank[-1] != errs[0]:
            problems.append(f"the error line is not the last line of stderr: {nonblank[-1][:120]}")
        if "(hint: " not in errs[0]:
            problems.append(f"the error line has no hint: {errs[0][:160]}")
        if e.error and not re.search(e.error, errs[0], flags=re.IGNORECASE):
            problems.append(f"the error line does not say /{e.error}/: {errs[0][:200]}")
        for bad in e.forbid:
            if re.search(bad, errs[0]):
                problems.append(f"refused for the wrong reason: {errs[0][:200]}")

    if e.outcome == "refuse":
        if r.code != e.code:
            problems.append(f"exit code {r.code}, expected {e.code}"
                            + (f" ({errs[-1][:160]})" if errs else ""))
        if not r.crash:
            one_line()
    elif e.outcome == "ok":
        if r.code != 0:
            problems.append(f"exit code {r.code}, expected 0"
                            + (f": {errs[-1][:200]}" if errs else ""))
        elif errs:
            problems.append(f"succeeded but printed error lines: {errs[0][:160]}")
        if e.banner and r.code == 0:
            hay = {"stderr": r.err, "out": text,
                   "report": _read(ctx.targets[0] / "report.md") if ctx.targets else "",
                   "json": _json_text(r.out)}[e.where]
            if hay is None:
                problems.append("stdout is not JSON")
            elif not re.search(e.banner, hay):
                problems.append(f"no {e.banner!r} in the {e.where}")
    else:
        if r.code not in (0, 2):
            problems.append(f"exit code {r.code}, expected 0 or 2"
                            + (f" ({errs[-1][:160]})" if errs else ""))
        elif r.code == 2 and not r.crash:
            one_line()
        elif r.code == 0 and errs:
            problems.append(f"succeeded but printed error lines: {errs[0][:160]}")
    if case.verify is not None and r.code == 0 and not r.crash:
        problems += case.verify(ctx)
    return problems


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def _json_text(out: str) -> str | None:
    try:
        return json.dumps(json.loads(out))
    except ValueError:
        return None


FAMILIES = sorted({c.family for c in CASES})
