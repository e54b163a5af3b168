"""Fault-injection harness for tests/test_reliability.py, run as a subprocess:

    python tests/_faults.py FAULT N -- adflora ARGS...

arms FAULT at its N-th occurrence, then runs ``adflora ARGS`` through the CLI entry point.
Faults: ``kill-replace`` (SIGKILL just before the N-th atomic rename: a temp file is written,
the destination not yet replaced), ``kill-append`` (SIGKILL before the N-th row append),
``sigint-append`` / ``sigterm-append`` (the signal before the N-th append).
"""

from __future__ import annotations

import os
import signal
import sys


def arm(fault: str, n: int) -> None:
    from adflora_analysis import fileio

    sig = {"kill": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}[
        fault.split("-")[0]]
    where = fault.split("-")[1]
    module, name = (os, "replace") if where == "replace" else (fileio, "append_jsonl")
    orig = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == n:
            os.kill(os.getpid(), sig)
        return orig(*args, **kwargs)

    setattr(module, name, wrapped)


if __name__ == "__main__":
    fault, n = sys.argv[1], int(sys.argv[2])
    argv = sys.argv[sys.argv.index("--") + 2:]
    arm(fault, n)
    from adflora_analysis.cli import main

    main(argv)
