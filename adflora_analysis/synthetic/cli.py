"""``adflora synthetic``: CLI of the synthetic layer."""

import typer

app = typer.Typer(help="The synthetic layer.", no_args_is_help=True)
