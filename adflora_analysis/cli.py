"""The ``adflora`` command line: one sub-command per layer (docs/architecture.md §8).

Every user error is one line on stderr (``error: ...``) and exit code 2; see
:class:`adflora_analysis.errors.AdfloraError`.
"""

from __future__ import annotations

import sys

import typer

from adflora_analysis.errors import AdfloraError

app = typer.Typer(
    name="adflora",
    help="Check whether decentralized federated LoRA (ADF-LoRA and baselines) behaves as its "
    "theory says: topology constants, a synthetic testbed with theory checks, GLUE runs, "
    "reports.\n\nExample: adflora demo --quick",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from adflora_analysis.demo import demo
    from adflora_analysis.glue.cli import app as glue_app
    from adflora_analysis.reports.cli import report
    from adflora_analysis.synthetic.cli import app as synthetic_app
    from adflora_analysis.topology.cli import app as topology_app

    app.add_typer(topology_app, name="topology")
    app.add_typer(synthetic_app, name="synthetic")
    app.add_typer(glue_app, name="glue")
    app.command("report")(report)
    app.command("demo")(demo)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``adflora`` console script."""
    try:
        app(args=argv, standalone_mode=True)
    except AdfloraError as e:
        print(f"error: {e}", file=sys.stderr)
        _exit_distributed(2)
        sys.exit(2)


def _exit_distributed(code: int) -> None:
    """In a torch.distributed process whose peers are gone, exit without running the process
    group's destructors (they abort with 'terminate called without an active exception')."""
    if "torch.distributed" not in sys.modules:
        return
    import os

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
