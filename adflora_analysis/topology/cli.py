"""``adflora topology``: inspect a topology's constants, sweep p against q.

Examples::

    adflora topology inspect --graph ring --n 10 --weights metropolis
    adflora topology inspect --graph encounter --q 0.1 --n 10 --json
    adflora topology inspect --graph random-regular --param degree=3 --n 20
    adflora topology inspect --matrix W.npy
    adflora topology sweep --n 10 --out runs/topology-sweep
"""

from __future__ import annotations

import json
import math
from typing import Any

import typer

from adflora_analysis.errors import AdfloraError

app = typer.Typer(help="The topology layer: graphs, mixing matrices, consensus rates.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


LABELS = {
    "connected": "connected (graph of E[W]: clients mix over time)",
    "connected_draws": "connected draws (fraction of W^t whose own graph is connected)",
    "effective_neighbours": "effective neighbours n_W(γ) (Vogels et al. 2022)",
    "effective_neighbours_gamma": "γ of n_W(γ)",
    "async_rate": "predicted rate of E Ξ with staleness τ, participation π (theory §9)",
    "async_rate_method": "how: exact / monte-carlo, -reduced = exchangeable reduction",
    "async_rate_moments": "where its expectation comes from",
}
"""Row labels of ``inspect``'s table that say what a key measures."""


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    from adflora_analysis.config import parse_override

    params: dict[str, Any] = {}
    for item in items or []:
        keys, value = parse_override(item)
        if len(keys) != 1:
            raise AdfloraError(f"--param {item!r} must be a plain key=value",
                               "write e.g. --param degree=4")
        params[keys[0]] = value
    return params


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in obj.items()}


@app.command()
def inspect(
    graph: str = typer.Option("complete", help="Graph family, or encounter / matching / "
                              "one-peer-exponential."),
    n: int | None = typer.Option(None, help="Number of clients (>= 2); taken from --matrix."),
    weights: str = typer.Option("metropolis", help="Weight rule (encounter: combination "
                                "rule, also 'pairwise')."),
    q: float | None = typer.Option(None, help="Encounter probability per pair and round."),
    samples: int = typer.Option(20000, help="Monte Carlo draws for time-varying samplers."),
    seed: int = typer.Option(0, help="Seed of random graphs and Monte Carlo draws."),
    matrix: str | None = typer.Option(None, help="A user W (.npy or CSV); replaces --graph."),
    param: list[str] | None = typer.Option(None, "--param", help="Graph parameter key=value "
                                           "(repeatable), e.g. --param degree=4."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    staleness: int = typer.Option(0, help="Gossip staleness τ (rounds): also report the "
                                  "predicted consensus rate of stale gossip."),
    participation: float = typer.Option(1.0, help="Gossip participation π in (0, 1]: also "
                                        "report the predicted rate of partial gossip."),
) -> None:
    """Constants of one topology: validity, λ2, λn, spectral gap, p, second-moment rate
    (and, with --staleness or --participation, the predicted rate of stale/partial gossip,
    docs/theory.md §9).

    Example: adflora topology inspect --graph encounter --n 10 --weights metropolis --q 0.1 --json
    """
    from adflora_analysis.topology.config import TopologyConfig, build_sampler, topology_constants

    if samples < 2:
        raise AdfloraError(f"--samples {samples} is too few", "pass --samples 100 or more")
    cfg = TopologyConfig(graph=graph, weights=weights, q=q, params=_parse_params(param),
                         matrix=matrix)
    if matrix is None and n is None:
        raise AdfloraError("--n is missing", "pass --n N (number of clients), or --matrix FILE")
    sampler = build_sampler(cfg, n, seed=seed)
    out = topology_constants(sampler, samples=samples, seed=seed)
    out.update(graph="matrix" if matrix else graph, q=q, params=cfg.params, matrix=matrix,
               samples=samples, seed=seed)
    if staleness != 0 or participation != 1:
        from adflora_analysis.topology.async_rates import async_consensus_rate

        r = async_consensus_rate(sampler, staleness=staleness, participation=participation,
                                 samples=min(samples, 4000), seed=seed)
        out.update(staleness=staleness, participation=participation, async_rate=r.rate,
                   async_rate_stderr=r.stderr, async_rate_method=r.method,
                   async_rate_moments=r.moments)
    out = _jsonable(out)
    if json_out:
        print(json.dumps(out, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{out['graph']} / {out['weights']}, n = {out['n']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in out.items():
        if k in ("p_stderr", "effective_neighbours_stderr", "async_rate_stderr"):
            continue
        if k == "async_rate" and out["async_rate_stderr"]:
            v = f"{v:.6f} ± {out['async_rate_stderr']:.6f}"
        if k == "p" and out["p_stderr"]:
            v = f"{v:.6f} ± {out['p_stderr']:.6f}"
        elif k == "effective_neighbours" and v is not None:
            se = out.get("effective_neighbours_stderr") or 0.0
            v = f"{v:.4f}" + (f" ± {se:.4f}" if se else "")
        elif isinstance(v, float):
            v = f"{v:.6g}"
        table.add_row(LABELS.get(k, k), "-" if v is None else str(v))
    Console().print(table)


@app.command()
def sweep(
    out: str = typer.Option(..., help="Output folder (new or empty)."),
    n: int = typer.Option(10, help="Number of clients (>= 2)."),
    samples: int = typer.Option(20000, help="Monte Carlo draws per point."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier sweep in "
                                   "--out (removes only the files adflora wrote there)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object: p per rule "
                                  "and q, the static references and the files written."),
) -> None:
    """p against the encounter probability q (0.01 to 0.5) per rule, with static references.

    Example: adflora topology sweep --n 10 --out runs/sweep
    """
    import pandas as pd
    from rich.console import Console

    from adflora_analysis.progress import status
    from adflora_analysis.topology.sweep import check_sweep_args, p_table, run_sweep

    check_sweep_args(n, samples)   # bad input is one line, before any progress output
    with status(f"topology sweep: p against q at n = {n} ({samples} draws per point)"):
        paths = run_sweep(out, n=n, samples=samples, seed=seed, overwrite=overwrite)
    df = pd.read_parquet(paths["parquet"])
    if json_out:
        table = p_table(df)
        refs = df[df["graph"] != "encounter"][["graph", "n", "p", "second_moment_rate"]]
        print(json.dumps({"n": n, "samples": samples,
                          "p": {str(rule): {f"{q:g}": v for q, v in row.items()}
                                for rule, row in table.iterrows()},
                          "references": json.loads(refs.to_json(orient="records")),
                          "files": {k: str(v) for k, v in paths.items()}}))
        return
    console = Console()
    with pd.option_context("display.width", 120, "display.precision", 4):
        console.print(f"expected consensus rate p (n = {n}, {samples} samples):")
        console.print(p_table(df).to_string(), markup=False)
        refs = df[df["graph"] != "encounter"][["graph", "n", "p", "second_moment_rate"]]
        console.print(refs.to_string(index=False), markup=False)
    for name, path in paths.items():
        console.print(f"{name}: {path}", markup=False)
