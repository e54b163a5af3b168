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


configs_app = typer.Typer(help="The shipped study configs (package data): list, show, copy.",
                          no_args_is_help=True)


@configs_app.command("list")
def configs_list() -> None:
    """List the shipped configs (GROUP/NAME and the first line of each file's comment).

    Example: adflora configs list
    """
    from adflora_analysis.configs import list_configs

    for c in list_configs():
        typer.echo(f"{c.qualified:28s} {c.summary}")


@configs_app.command("show")
def configs_show(name: str = typer.Argument(..., help="A shipped config: bounds, "
                                            "synthetic/bounds, glue_runs/smoke.toml ...")) -> None:
    """Print a shipped config's TOML.

    Example: adflora configs show bounds
    """
    from adflora_analysis.configs import find_shipped

    typer.echo(find_shipped(name).path.read_text(encoding="utf-8"), nl=False)


@configs_app.command("copy")
def configs_copy(
    name: str = typer.Argument(..., help="A shipped config, e.g. smoke."),
    dest: str = typer.Argument(..., help="File to write, or a folder to put NAME.toml in."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy a shipped config to DEST, to edit and run.

    Example: adflora configs copy smoke my_smoke.toml
    """
    from adflora_analysis.configs import copy_config

    typer.echo(f"wrote {copy_config(name, dest, force=force)}", err=True)


def _register() -> None:
    from adflora_analysis.demo import demo
    from adflora_analysis.glue.cli import app as glue_app
    from adflora_analysis.reports.cli import report
    from adflora_analysis.synthetic.cli import app as synthetic_app
    from adflora_analysis.topology.cli import app as topology_app

    app.add_typer(topology_app, name="topology")
    app.add_typer(synthetic_app, name="synthetic")
    app.add_typer(glue_app, name="glue")
    app.add_typer(configs_app, name="configs")
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
