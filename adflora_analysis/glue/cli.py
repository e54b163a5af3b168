"""``adflora glue``: CLI of the glue layer."""

import typer

app = typer.Typer(help="The glue layer.", no_args_is_help=True)
