"""The notebook surface: ``import adflora_analysis as af`` (docs/architecture.md §11).

A handful of functions over the layers, each returning plain data (a sampler, a dict, a
DataFrame, a path); everything else stays in the layer modules. The package root loads this
module only when one of its names is first used, so ``adflora --help`` stays fast.

- :func:`build_topology`, :func:`topology_constants`: a W^t sampler and its constants
  (p, second-moment rate, spectral gap, ...).
- :func:`synthetic_config`, :func:`run_synthetic`: a synthetic study, run in memory into a
  DataFrame, or into a run directory; ``callbacks=[...]`` see every round
  (:class:`adflora_analysis.tracking.Callback`; ``track=["tensorboard", "mlflow"]`` the
  built-in live trackers).
- :func:`run_checks`: the theory checks of a synthetic run directory, as a DataFrame.
- :func:`make_report`: Markdown + HTML report of run directories.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.topology import Sampler

__all__ = ["build_topology", "make_report", "run_checks", "run_synthetic", "synthetic_config",
           "topology_constants"]


def build_topology(graph: str, n: int, *, weights: str = "metropolis", q: float | None = None,
                   params: dict[str, Any] | None = None, matrix: str | None = None,
                   seed: int = 0) -> Sampler:
    """A sampler of the mixing matrices W^t, as a ``[topology]`` table describes it.

    Parameters
    ----------
    graph : a graph family (``ring``, ``torus``, ``complete``, ``erdos-renyi``, ...) or a
        time-varying sampler (``encounter``, ``matching``, ``one-peer-exponential``).
    n : number of clients.
    weights : weight rule (``metropolis``, ``max-degree``, ``server``, ...).
    q : encounter probability per pair and round (``graph = "encounter"`` only).
    params : graph parameters (``degree``, ``p``, ...). matrix : a user's W (``.npy``/CSV).
    seed : draws a static random graph.

    Returns
    -------
    Sampler; ``sampler.sample(t, rng)`` is W^t, an (n, n) array whose rows are receivers
    (one gossip step is ``X <- W @ X``).

    Examples
    --------
    >>> import numpy as np
    >>> import adflora_analysis as af
    >>> s = af.build_topology("encounter", 10, q=0.1)
    >>> W = s.sample(0, np.random.default_rng(0))
    >>> s.kind, W.shape, np.allclose(W.sum(0), 1), np.allclose(W.sum(1), 1)
    ('encounter', (10, 10), True, True)
    """
    from adflora_analysis.topology import TopologyConfig, build_sampler

    cfg = TopologyConfig(graph=graph, weights=weights, q=q, params=dict(params or {}),
                         matrix=matrix)
    return build_sampler(cfg, n, seed=seed)


def topology_constants(sampler: Sampler, *, samples: int = 20000, seed: int = 0
                       ) -> dict[str, Any]:
    """The constants the theory uses: ``p`` (expected consensus rate, Koloskova et al. 2020)
    with ``p_stderr``, ``second_moment_rate``, ``spectral_gap`` of E[W], ``connected``, ...

    Monte Carlo over ``samples`` draws (seeded) for a random sampler; exact for a static W.

    Examples
    --------
    >>> import math
    >>> import adflora_analysis as af
    >>> c = af.topology_constants(af.build_topology("ring", 8))
    >>> round(c["p"], 4), round(c["spectral_gap"], 4), c["connected"], c["p_stderr"]
    (0.3524, 0.1953, True, 0.0)

    A static symmetric W has ``p = 1 - lambda2^2`` (here ``lambda2 = 1/3 + 2/3 cos(pi/4)``):

    >>> round(1 - (1 / 3 + 2 / 3 * math.cos(math.pi / 4)) ** 2, 4)
    0.3524
    """
    from adflora_analysis.topology import topology_constants as _constants

    return _constants(sampler, samples=samples, seed=seed)


def synthetic_config(path: str | Path | None = None, **keys: Any) -> SyntheticConfig:
    """A validated synthetic study: the TOML file ``path`` (or the defaults), with ``keys`` set
    on top (nested tables as dicts, e.g. ``topology={"graph": "ring"}``, which replaces the
    file's table; dotted names need ``**{"topology.q": 0.2}``).

    Examples
    --------
    >>> import adflora_analysis as af
    >>> cfg = af.synthetic_config(n_clients=4, rounds=5, methods=["adf-lora", "rolora"])
    >>> cfg.n_clients, cfg.methods, cfg.topology.graph, cfg.topology.q
    (4, ['adf-lora', 'rolora'], 'encounter', 0.1)
    >>> af.synthetic_config(n_client=4)
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown config key 'n_client'; valid: ...
    """
    from adflora_analysis.config import from_dict, read_toml
    from adflora_analysis.configs import resolve_config
    from adflora_analysis.synthetic.config import SyntheticConfig

    data = read_toml(resolve_config(str(path))) if path is not None else {}
    for key, value in keys.items():
        node = data
        *head, last = key.split(".")
        for h in head:
            node = node.setdefault(h, {})
        node[last] = value
    return from_dict(SyntheticConfig, data)


def run_synthetic(config: SyntheticConfig | str | Path | None = None, *,
                  out: str | Path | None = None, callbacks: list[Any] | None = None,
                  track: list[str] | None = None, logdir: str | Path | None = None,
                  **keys: Any) -> pd.DataFrame:
    """Run a synthetic study; return its metrics table.

    ``config`` is a :class:`~adflora_analysis.synthetic.config.SyntheticConfig`, a TOML path
    (or a shipped study's name, e.g. ``"bounds"``), or None for the defaults; ``keys`` are set
    on top as in :func:`synthetic_config`. Without ``out`` the study runs in memory and writes
    nothing (no topology constants, checkpoints or theory-check inputs); with ``out`` it is
    ``adflora synthetic run`` into that run directory (then :func:`run_checks` and
    :func:`make_report` apply).

    ``callbacks``: :class:`~adflora_analysis.tracking.Callback` objects; their
    ``on_round_end(info)`` sees every round of every job (the rows just computed, wall-clock
    time). One that raises stops the study with one
    :class:`~adflora_analysis.tracking.CallbackError` (a run directory is left ``stopped``,
    resumable with ``adflora synthetic run --resume``). ``track``: the built-in live trackers
    (``"tensorboard"`` into ``<out>/tb`` or ``logdir``, ``"mlflow"`` into ``<out>/mlruns``),
    added after ``callbacks``; they need ``out`` (TensorBoard: or ``logdir``).

    Returns
    -------
    DataFrame, one row per (variant, method, seed, round, layer): ``xi_A``, ``xi_B``,
    ``cross_term``, ``product_consensus``, ``loss``, ``grad_norm_sq``, ``bytes_sent``, ...;
    layer ``all`` holds totals over layers.

    Examples
    --------
    >>> import adflora_analysis as af
    >>> df = af.run_synthetic(n_clients=4, rounds=4, seeds=2, d_in=4, d_out=4,
    ...                       methods=["adf-lora", "lora"], topology={"graph": "ring"})
    >>> tot = df[df.layer == "all"]
    >>> tot.groupby("method")["round"].count().to_dict()
    {'adf-lora': 8, 'lora': 8}
    >>> bool((tot.cross_term <= (tot.xi_A * tot.xi_B) ** 0.5 + 1e-12).all())  # Cauchy-Schwarz
    True
    """
    from adflora_analysis.synthetic.config import SyntheticConfig

    if isinstance(config, SyntheticConfig):
        cfg = config
        if keys:
            from adflora_analysis.config import to_dict

            base = {k: v for k, v in to_dict(config).items() if v is not None}
            cfg = synthetic_config(None, **{**base, **keys})
    else:
        cfg = synthetic_config(config, **keys)
    cbs = list(callbacks or [])
    if track:
        from adflora_analysis.errors import AdfloraError
        from adflora_analysis.tracking import make_trackers

        if out is None and (logdir is None or "mlflow" in track):
            raise AdfloraError(f"track={list(track)} needs a run directory (out=...)",
                               "pass out=DIR (TensorBoard alone: or logdir=DIR)")

        cbs += make_trackers(track, logdir=logdir)
    if out is None:
        from adflora_analysis.synthetic.runner import study_rows

        return study_rows(cfg, callbacks=cbs)
    from adflora_analysis.synthetic.runner import run_study

    return run_study(cfg, out, progress=False, callbacks=cbs)


def run_checks(run_dir: str | Path) -> pd.DataFrame:
    """The theory checks (docs/architecture.md §5, docs/theory.md) of a synthetic run
    directory, one row per (check, method, variant): ``status`` (whether the bound held) and
    the numbers behind it (see :class:`adflora_analysis.theory.CheckResult`).

    Examples
    --------
    >>> import tempfile
    >>> import adflora_analysis as af
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = af.run_synthetic(out=d, n_clients=4, rounds=6, seeds=3, d_in=4, d_out=4,
    ...                          methods=["adf-lora"], constants_every=0,
    ...                          topology_samples=200, switch_interval=2)
    ...     checks = af.run_checks(d)
    >>> {"check", "method", "variant", "status"} <= set(checks.columns)
    True
    >>> set(checks.method), set(checks.variant), len(checks) >= 6
    ({'adf-lora'}, {'base'}, True)
    """
    import pandas as pd

    from adflora_analysis.theory import run_checks as _run_checks

    return pd.DataFrame([r.to_dict() for r in _run_checks(run_dir)])


def make_report(run_dirs: list[str | Path] | str | Path, out: str | Path,
                title: str = "adflora-analysis report") -> Path:
    """Write ``out/report.md`` and a self-contained ``out/index.html`` (figures embedded) for
    one or more run directories (synthetic, GLUE, topology sweep); return the HTML path.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import adflora_analysis as af
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = af.run_synthetic(out=Path(d) / "run", n_clients=4, rounds=4, seeds=2,
    ...                          d_in=4, d_out=4, methods=["adf-lora"], constants_every=0,
    ...                          topology_samples=200)
    ...     html = af.make_report([Path(d) / "run"], Path(d) / "report")
    ...     print(html.name, (html.parent / "report.md").is_file())
    index.html True
    """
    from adflora_analysis.reports import make_report as _make_report

    dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
    return _make_report(dirs, out, title=title)
