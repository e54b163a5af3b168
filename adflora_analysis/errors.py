"""User-facing errors: one line saying what is wrong and how to fix it.

The CLI turns every :class:`AdfloraError` into a one-line message on stderr and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdfloraError(ValueError):
    """Bad input or a state the user can fix. ``str(err)`` is the one-line message;
    ``exit_code`` what the CLI exits with (2).

    >>> err = AdfloraError("n_clients = 0 must be at least 1", "use n_clients = 2 or more")
    >>> str(err), err.exit_code
    ('n_clients = 0 must be at least 1 (hint: use n_clients = 2 or more)', 2)
    """

    exit_code = 2

    def __init__(self, problem: str, hint: str | None = None):
        self.problem = problem
        self.hint = hint
        super().__init__(problem if not hint else f"{problem} (hint: {hint})")


class DivergenceError(AdfloraError):
    """A run produced a non-finite value; what was written so far stays on disk."""


class StoppedError(AdfloraError):
    """A run was stopped by SIGINT or SIGTERM; it is resumable. Exits 128 + the signal
    number (130 for Ctrl-C), as a shell expects of an interrupted program."""

    def __init__(self, problem: str, hint: str | None = None, signum: int = 2):
        super().__init__(problem, hint)
        self.exit_code = 128 + signum


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> AdfloraError:
    """Error for an unknown name, listing the valid ones and the closest match.

    >>> str(unknown_name("graph", "rign", ["ring", "star"]))
    "unknown graph 'rign'; valid: ring, star (hint: did you mean 'ring'?)"
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"use one of the valid {kind}s"
    return AdfloraError(f"unknown {kind} {str(name)[:80]!r}; valid: {', '.join(valid)}", hint)
