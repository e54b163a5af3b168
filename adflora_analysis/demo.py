"""``adflora demo``: the one-command tour on an embedded default."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(
    out: str = typer.Option("reports/demo", help="Where the demo writes its outputs."),
    quick: bool = typer.Option(False, "--quick", help="A ~1-minute version (what tests run)."),
    seed: int = typer.Option(0, help="Seed of every random draw."),
) -> None:
    """Run the demo: for now the topology study (p against q at n = 10) under OUT/topology/."""
    from adflora_analysis.topology.sweep import run_topology_study

    root = Path(out)
    paths = run_topology_study(root / "topology", quick=quick, seed=seed)
    print(f"topology study written to {root / 'topology'}:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
