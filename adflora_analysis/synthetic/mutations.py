"""The mutation harness (issue 20 item 5): planted bugs that every theory check must catch.

Each :class:`Bug` is a small patch at a public interface (the problem's local update or
gradient, the synchronous mixer, the mixing schedule, the topology constants written to
``meta.json``, the round metrics) applied by a context manager while a small study runs; the
logs stay as the code writes them. :func:`run_harness` runs :data:`HARNESS_CONFIG` clean and
under each bug, evaluates every registered check on each run directory and returns the table
bug × check → status (``adflora synthetic mutate``). A bug is *caught* when some check that
should hold is ``violated`` (or ``error``) on it; the clean run must have none.

A patch replaces the attribute wherever the original object is bound (every loaded module that
imported it), so it reaches the round loop however the runner imports it, and is undone on
exit.

>>> sorted(BUGS)[:3]
['bytes-undercount', 'client-left-out', 'cross-term-before-gossip']
>>> len(BUGS) >= 12
True
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adflora_analysis.errors import AdfloraError

HARNESS_CONFIG: dict[str, Any] = {
    "n_clients": 10, "rounds": 30, "local_steps": 5, "lr": 0.05, "rank": 2,
    "switch_interval": 5, "methods": ["adf-lora"], "d_in": 8, "d_out": 8,
    "target_rank": 2, "heterogeneity": 0.3, "noise_kind": "minibatch", "batch_size": 16,
    "samples_per_client": 32, "label_noise": 0.1, "topology_samples": 4000,
    "topology": {"graph": "encounter", "weights": "metropolis", "q": 0.3},
}
"""The small study every bug runs on (seeds set by the harness): 10 clients meeting by
encounter with Metropolis weights, adf-lora (a frozen factor per phase) and ffa-lora."""

DEFAULT_SEEDS = 4


@contextlib.contextmanager
def patched(module: str, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """Replace ``module.name`` by ``make(original)`` in every loaded module (or class) that
    binds the original object under ``name``; restore on exit."""
    import importlib

    owner: Any = importlib.import_module(module)
    parts = name.split(".")
    for p in parts[:-1]:
        owner = getattr(owner, p)
    attr = parts[-1]
    orig = getattr(owner, attr)
    new = make(orig)
    spots = [owner] if len(parts) > 1 else [
        m for m in list(sys.modules.values())
        if m is not None and getattr(m, attr, None) is orig]
    for s in spots:
        setattr(s, attr, new)
    try:
        yield
    finally:
        for s in spots:
            setattr(s, attr, orig)


def _lr(problem: Any, t: int) -> float:
    from adflora_analysis.core.lr_schedules import lr_at

    c = problem.cfg
    return lr_at(t, c.lr, c.lr_schedule, t0=c.lr_t0, rounds=c.rounds, lr_min=c.lr_min)


# ---------------------------------------------------------------------------------- the bugs
def step_scaled(c: float) -> contextlib.AbstractContextManager:
    """The local update moves c times the step it computes (and logs η as before)."""
    def make(orig):
        def local_update(self, state, blocks, t, disp=None, **kw):
            before = {b: [x.clone() for x in state.block(b)] for b in blocks}
            new, measured = orig(self, state, blocks, t, disp, **kw)
            for b in blocks:
                for x, x0 in zip(new.block(b), before[b], strict=True):
                    x.copy_(x0 + c * (x - x0))
            return new, measured
        return local_update
    return patched("adflora_analysis.synthetic.problem", "QuadraticProblem.local_update", make)


def previous_gradient() -> contextlib.AbstractContextManager:
    """Each SGD step uses the minibatch gradient of the previous step (the first one its own)."""
    def make(orig):
        def grads(self, A, B, idx, blocks):
            g = orig(self, A, B, idx, blocks)
            prev = getattr(self, "_mutant_prev_grad", None)
            self._mutant_prev_grad = g
            if prev is not None and prev.keys() == g.keys() and all(
                    prev[k].shape == g[k].shape for k in g):
                return prev
            return g
        return grads
    return patched("adflora_analysis.synthetic.problem", "QuadraticProblem._minibatch_grads",
                   make)


def frozen_trained(frac: float) -> contextlib.AbstractContextManager:
    """The factor the method freezes this round also moves, by ``frac`` of a K-step full-batch
    SGD step, without being reported (no displacement, no column)."""
    def make(orig):
        def local_update(self, state, blocks, t, disp=None, **kw):
            A = torch.stack(state.A, 2)
            B = torch.stack(state.B, 2)
            frozen = tuple(b for b in ("A", "B") if b not in blocks)
            g = self.full_grads(A, B, self.Sig, self.C, frozen) if frozen else {}
            new, measured = orig(self, state, blocks, t, disp, **kw)
            step = frac * self.K_run * _lr(self, t)
            moved = {b: list((X - step * g[b]).unbind(2)) for b, X in (("A", A), ("B", B))
                     if b in g}
            from adflora_analysis.core.state import LoraState

            return LoraState(moved.get("A", new.A), moved.get("B", new.B), list(new.layers),
                             new.extra), measured
        return local_update
    return patched("adflora_analysis.synthetic.problem", "QuadraticProblem.local_update", make)


def swapped_data(i: int = 0, j: int = 1) -> contextlib.AbstractContextManager:
    """Clients i and j train on each other's data (evaluation and logs use the right data)."""
    def swap(problem) -> None:
        seen = set()
        for name in ("XR", "X", "R", "Sig", "C"):
            t = getattr(problem, name, None)
            if not isinstance(t, Tensor) or t.dim() < 2 or t.shape[1] != problem.n:
                continue
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.stride())
            if key in seen or any(k[0] == key[0] for k in seen):
                continue          # a view of a tensor already swapped
            seen.add(key)
            t[:, [i, j]] = t[:, [j, i]]

    def make(orig):
        def local_update(self, state, blocks, t, disp=None, **kw):
            swap(self)
            try:
                return orig(self, state, blocks, t, disp, **kw)
            finally:
                swap(self)
        return local_update
    return patched("adflora_analysis.synthetic.problem", "QuadraticProblem.local_update", make)


def _sync_mutant(fn: Callable[..., tuple]) -> contextlib.AbstractContextManager:
    """Replace the synchronous mixer by ``fn(mix, carry, state, blocks, W, t, **kw)``, where
    ``mix`` is the real synchronous mix (the mixer keeps its name)."""
    def make(orig):
        def synchronous():
            real = orig()

            def mix(carry, state, blocks, W, t, **kw):
                return fn(real.mix, carry, state, blocks, W, t, **kw)
            return type(real)(real.name, init=real.init, mix=mix,
                              **{k: getattr(real, k) for k in getattr(real, "__dataclass_fields__",
                                                                      {})
                                 if k not in ("name", "init", "mix")})
        return synchronous
    return patched("adflora_analysis.core.mixers", "synchronous", make)


def _relabel(W: Tensor, t: int) -> Tensor:
    """An independent-looking draw: W with its clients relabelled by a permutation of round t."""
    g = torch.Generator().manual_seed(7919 * t + 1)
    perm = torch.randperm(W.shape[-1], generator=g)
    return W[..., perm, :][..., :, perm]


def gossip_twice() -> contextlib.AbstractContextManager:
    """Gossip applies W^t, then a second, independently drawn matrix (W^t relabelled)."""
    def fn(mix, carry, state, blocks, W, t, **kw):
        state, carry, sent = mix(carry, state, blocks, W, t, **kw)
        state, carry, _ = mix(carry, state, blocks, _relabel(W, t), t, **kw)
        return state, carry, sent
    return _sync_mutant(fn)


def client_left_out(k: int = 0) -> contextlib.AbstractContextManager:
    """Client k is left out of every gossip (its row and column of W^t set to the identity's);
    bytes_sent is counted from W^t as before."""
    def fn(mix, carry, state, blocks, W, t, **kw):
        from adflora_analysis.core.mixers import participating

        act = torch.ones(W.shape[:-1], dtype=torch.bool, device=W.device)
        act[..., k] = False
        state, carry, _ = mix(carry, state, blocks, participating(W, act), t, **kw)
        _, _, sent = mix(carry, state.clone(), blocks, W, t, **kw)
        return state, carry, sent
    return _sync_mutant(fn)


def bytes_undercount(frac: float = 0.5) -> contextlib.AbstractContextManager:
    """bytes_sent reports ``frac`` of the bytes the messages carry."""
    def fn(mix, carry, state, blocks, W, t, **kw):
        state, carry, sent = mix(carry, state, blocks, W, t, **kw)
        return state, carry, sent * frac
    return _sync_mutant(fn)


def metropolis_off_by_one(k: int = 0) -> contextlib.AbstractContextManager:
    """Metropolis weights with client k's degree counted one too high (w_kj = 1 / (1 +
    max(d_k + 1, d_j)), self-weight the rest of its row): rows sum to 1, columns do not."""
    def mutate(W: Tensor) -> Tensor:
        W = W.clone()
        off = (W != 0) & ~torch.eye(W.shape[-1], dtype=torch.bool, device=W.device)
        deg = off.sum(-1).to(W.dtype)                               # (*batch, n)
        row = 1.0 / (1.0 + torch.maximum(deg[..., k:k + 1] + 1, deg))
        W[..., k, :] = torch.where(off[..., k, :], row, torch.zeros_like(row))
        W[..., k, k] = 1 - W[..., k, :].sum(-1)
        return W

    def make(orig):
        def mixing_schedule(*a, **kw):
            sched = orig(*a, **kw)
            return lambda t: mutate(sched(t))
        return mixing_schedule
    return patched("adflora_analysis.core.gossip", "mixing_schedule", make)


def p_reported_high(factor: float = 1.2) -> contextlib.AbstractContextManager:
    """The topology constants written to meta.json report p ``factor`` times too high."""
    def make(orig):
        def topology_constants(*a, **kw):
            tc = orig(*a, **kw)
            tc = dict(tc)
            tc["p"] = factor * tc["p"]
            return tc
        return topology_constants
    return patched("adflora_analysis.topology.config", "topology_constants", make)


def cross_term_before_gossip() -> contextlib.AbstractContextManager:
    """The logged cross term C is computed on the pre-gossip state."""
    held: dict[str, Tensor] = {}

    def make(orig):
        def round_metrics(state, backend=None, full=True):
            kw = {} if backend is None else {"backend": backend}
            if not full:
                held["C"] = orig(state, **kw)["cross_term"].clone()
                return orig(state, full=False, **kw)
            out = orig(state, **kw)
            if "C" in held:
                out["cross_term"] = held.pop("C")
            return out
        return round_metrics
    return patched("adflora_analysis.core.metrics", "round_metrics", make)


@dataclass(frozen=True)
class Bug:
    """A planted bug: ``patch()`` is its context manager (None: a setting, ``overrides``);
    ``expect`` names the checks meant to catch it (documentation, and the harness reports
    whether they did)."""

    name: str
    what: str
    patch: Callable[[], contextlib.AbstractContextManager] | None
    expect: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


_BUGS = [
    *(Bug(f"step-x{c:g}", f"the step taken is {c:g} × the logged η·g",
          lambda c=c: step_scaled(c), ("step-audit", "stationarity"))
      for c in (0.5, 0.95, 1.5, 3.0)),
    Bug("previous-gradient", "each step uses the previous step's gradient", previous_gradient,
        ("step-audit",)),
    *(Bug(f"frozen-trained-{f:g}", f"the frozen factor is trained at {f:g} of the step",
          lambda f=f: frozen_trained(f), ("frozen-audit", "frozen-block"))
      for f in (0.1, 0.02)),
    Bug("gossip-twice", "gossip applies W^t and then an independent draw", gossip_twice,
        ("gossip-audit", "gossip-contraction")),
    Bug("client-left-out", "client 0 never gossips (bytes counted as if it did)",
        client_left_out, ("gossip-audit",)),
    Bug("metropolis-degree", "Metropolis weights with client 0's degree off by one",
        metropolis_off_by_one, ("mixing-validity",)),
    Bug("p-high", "p in meta.json reported 20 % high", p_reported_high,
        ("gossip-contraction", "frozen-block")),
    Bug("cross-term-before-gossip", "the logged cross term is taken before gossip",
        cross_term_before_gossip, ("cross-term-invariant",)),
    Bug("data-swapped", "clients 0 and 1 train on each other's data", swapped_data,
        ("step-audit",)),
    Bug("bytes-undercount", "bytes_sent reports half the bytes sent", bytes_undercount,
        ("bytes-audit",)),
    # 100 rounds whatever the harness size: that a run does not converge is a statement
    # about its long run (at 16-30 rounds the decay fit cannot tell, and check 5 says
    # underpowered)
    Bug("non-converging", "heterogeneity 1 and encounter q = 0.02 (a setting that does not "
        "converge), 100 rounds", None, ("stationarity",),
        {"heterogeneity": 1.0, "topology": {"q": 0.02}, "rounds": 100}),
]
BUGS: dict[str, Bug] = {b.name: b for b in _BUGS}
"""Every planted bug by name."""


def select_bugs(names: list[str] | None) -> list[Bug]:
    """The bugs named (all when None or empty); an unknown name is one AdfloraError with a
    did-you-mean.

    >>> [b.name for b in select_bugs(["p-high"])]
    ['p-high']
    >>> try:
    ...     select_bugs(["gossip-twise"])
    ... except AdfloraError as e:
    ...     print(e.problem, "|", e.hint.split(";")[0])
    unknown bug 'gossip-twise' | did you mean 'gossip-twice'?
    """
    if not names:
        return list(BUGS.values())
    out = []
    for n in names:
        for part in (p.strip() for p in n.split(",") if p.strip()):
            if part not in BUGS:
                close = difflib.get_close_matches(part, list(BUGS), n=1)
                hint = (f"did you mean {close[0]!r}?; " if close else "") + \
                    "known: " + ", ".join(BUGS)
                raise AdfloraError(f"unknown bug {part!r}", hint)
            out.append(BUGS[part])
    return out


def harness_config(seeds: int, overrides: dict[str, Any] | None = None,
                   size: dict[str, Any] | None = None):
    """:data:`HARNESS_CONFIG` with ``seeds`` seeds, then ``size`` (e.g. fewer rounds for CI),
    then a bug's setting overrides."""
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig

    data = {**HARNESS_CONFIG, "seeds": int(seeds),
            "topology": dict(HARNESS_CONFIG["topology"])}
    for k, v in {**(size or {}), **(overrides or {})}.items():
        if isinstance(v, dict):
            data[k] = {**data.get(k, {}), **v}
        else:
            data[k] = v
    return load_config(SyntheticConfig, data=data)


@dataclass
class HarnessRun:
    """One row of the table: the bug (``clean`` for none) and its check results."""

    bug: str
    results: list[Any]
    expect: tuple[str, ...] = ()

    def status(self, check: str) -> str:
        """The check's worst status over methods: violated > error > held > finding >
        underpowered > n/a (``-`` when it gave none)."""
        order = ("violated", "error", "held", "finding", "underpowered", "n/a")
        got = [r for r in self.results if r.check == check]
        viol = [r for r in got if r.unexpected_violation]
        if viol:
            return viol[0].status
        ss = [r.status for r in got]
        return next((s for s in order[2:] if s in ss), "-")

    @property
    def caught_by(self) -> list[str]:
        return sorted({r.check for r in self.results if r.unexpected_violation})


def run_one(bug: Bug | None, seeds: int, out: Path,
            size: dict[str, Any] | None = None) -> HarnessRun:
    """Run the harness study clean (``bug`` None) or under ``bug`` into ``out``, then every
    registered check (no user checks) on it. ``size``: config keys for every run (e.g.
    ``{"rounds": 16}``)."""
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import run_checks

    cfg = harness_config(seeds, bug.overrides if bug else None, size)
    ctx = bug.patch() if bug and bug.patch else contextlib.nullcontext()
    with ctx:
        run_study(cfg, out, overwrite=out.exists(), progress=False)
    results = run_checks(out, entry_points=False)
    return HarnessRun(bug.name if bug else "clean", results, bug.expect if bug else ())


def run_harness(bugs: list[Bug], seeds: int, out: Path,
                size: dict[str, Any] | None = None) -> list[HarnessRun]:
    """The clean run, then one run per bug, each in ``out/<name>``."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(None, seeds, out / "clean", size)]
    for b in bugs:
        runs.append(run_one(b, seeds, out / b.name, size))
    return runs


def check_names(runs: list[HarnessRun]) -> list[str]:
    """The checks that gave a result, in registry order."""
    names: dict[str, None] = {}
    for r in runs:
        for x in r.results:
            names.setdefault(x.check, None)
    return list(names)


_ABBR = {"held": "ok", "violated": "VIOL", "error": "ERR", "finding": "find",
         "underpowered": "low", "n/a": "n/a", "-": "-"}


def format_table(runs: list[HarnessRun]) -> str:
    """The table bug × check → status (columns numbered, legend below): ``VIOL`` a check that
    should hold is violated, ``ok`` held, ``find`` finding, ``low`` underpowered; the last
    column lists the checks that caught the bug (``NOTHING`` when none)."""
    names = check_names(runs)
    w = max(len(r.bug) for r in runs)
    head = f"{'bug':<{w}}  " + " ".join(f"{i + 1:>4}" for i in range(len(names))) + "  caught by"
    lines = [head]
    for r in runs:
        cells = " ".join(f"{_ABBR.get(r.status(c), r.status(c)[:4]):>4}" for c in names)
        caught = ", ".join(r.caught_by)
        if r.bug == "clean":
            caught = f"(unexpected: {caught})" if caught else "(no unexpected violation)"
        lines.append(f"{r.bug:<{w}}  {cells}  {caught or 'NOTHING'}")
    lines.append("")
    lines.append("columns: " + "; ".join(f"{i + 1} {n}" for i, n in enumerate(names)))
    return "\n".join(lines)


def summary(runs: list[HarnessRun]) -> tuple[list[str], list[str]]:
    """(bugs caught by nothing, the clean run's unexpected violations)."""
    missed = [r.bug for r in runs if r.bug != "clean" and not r.caught_by]
    clean = next((r.caught_by for r in runs if r.bug == "clean"), [])
    return missed, clean


def notes(runs: list[HarnessRun]) -> list[str]:
    """One line per caught bug: the note (its named cause) of the check meant to catch it, or
    else of the first check that did."""
    out = []
    for r in runs:
        if r.bug == "clean":
            continue
        v = [x for x in r.results if x.unexpected_violation]
        v.sort(key=lambda x: (x.check not in r.expect, r.expect.index(x.check)
                              if x.check in r.expect else 0))   # the intended catcher first
        if v:
            note = v[0].note if len(v[0].note) < 320 else v[0].note[:317] + "..."
            out.append(f"{r.bug}: [{v[0].check}, {v[0].method}] {note}")
    return out


__all__ = ["BUGS", "DEFAULT_SEEDS", "HARNESS_CONFIG", "Bug", "HarnessRun", "format_table",
           "harness_config", "notes", "patched", "run_harness", "run_one", "select_bugs",
           "summary"]

