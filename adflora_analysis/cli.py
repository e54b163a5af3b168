"""The ``adflora`` command line: one sub-command per layer (docs/architecture.md §8).

Every user error is one line on stderr (``error: ...``) and exit code 2; see
:class:`adflora_analysis.errors.AdfloraError`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from adflora_analysis.errors import AdfloraError

#: Sub-commands loaded on first use, so that ``adflora --help`` imports no torch, pandas or
#: matplotlib: name -> ("module:attribute", the one-line help shown in ``adflora --help``).
#: An attribute is a Typer app (a command group) or a command function.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "topology": ("adflora_analysis.topology.cli:app",
                 "The topology layer: graphs, mixing matrices, consensus rates."),
    "synthetic": ("adflora_analysis.synthetic.cli:app",
                  "Synthetic quadratic LoRA testbed: run studies and check the theory."),
    "glue": ("adflora_analysis.glue.cli:app",
             "GLUE runner: ADF-LoRA and baselines on RoBERTa/MiniLM over simulated clients, "
             "logging consensus and cross-term errors."),
    "lm": ("adflora_analysis.lm.cli:app",
           "Causal-LM testbed: ADF-LoRA and baselines on any causal LM (tiny offline "
           "Llama/Qwen2/Mistral/GPT-2, or a hub model), logging consensus, cross term and "
           "perplexity."),
    "plan": ("adflora_analysis.plan:plan",
             "Predict memory per device, clients per device and time per round of an lm "
             "study, from the model's config only (no weights are read; formulas in "
             "docs/plan.md)."),
    "report": ("adflora_analysis.reports.cli:report",
               "Write OUT/report.md and OUT/index.html (opens from disk) from finished runs."),
    "export": ("adflora_analysis.export:app", "Export a run to other tools (TensorBoard)."),
    "demo": ("adflora_analysis.demo:demo",
             "Run the tour: topology sweep, synthetic bounds + checks, T ablation, a small "
             "offline GLUE run (MiniLM on Rotten Tomatoes), and an HTML report at "
             "OUT/index.html."),
}


def load_command(name: str):
    """The click command of lazy sub-command ``name`` (imports its module)."""
    target, _ = LAZY_COMMANDS[name]
    module, attr = target.split(":")
    obj = getattr(importlib.import_module(module), attr)
    if not isinstance(obj, typer.Typer):
        single = typer.Typer(add_completion=False)
        single.command(name)(obj)
        obj = single
    obj._add_completion = False   # completion is offered once, by `adflora` itself
    cmd = typer.main.get_command(obj)
    cmd.name = name
    return cmd


class LazyGroup(TyperGroup):
    """The top-level group: lists the lazy sub-commands by their stored one-line help and
    imports one only when it is run (or its own ``--help`` is asked for)."""

    _listing = False

    def list_commands(self, ctx) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in LAZY_COMMANDS if n not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in self.commands or cmd_name not in LAZY_COMMANDS:
            return super().get_command(ctx, cmd_name)
        if self._listing:  # the top-level help needs names and one-line help only
            import click

            return click.Command(cmd_name, short_help=LAZY_COMMANDS[cmd_name][1])
        self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx, formatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="adflora",
    cls=LazyGroup,
    help="Check whether decentralized federated LoRA (ADF-LoRA and baselines) behaves as its "
    "theory says: topology constants, a synthetic testbed with theory checks, GLUE runs, "
    "reports.\n\nExample: adflora demo --quick",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},   # inherited by every command
)


def _version(value: bool) -> None:
    if value:
        from adflora_analysis import __version__

        typer.echo(f"adflora-analysis {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True,
                                        callback=_version,
                                        help="Print the version and exit.")) -> None:
    """Root options (the group's help is the Typer's)."""


configs_app = typer.Typer(help="The shipped study configs (package data): list, show, copy.",
                          no_args_is_help=True)


@configs_app.command("list")
def configs_list(as_json: bool = typer.Option(False, "--json", help="Print a JSON array: "
                                              "name, group, path and the full description "
                                              "of each config.")) -> None:
    """List the shipped configs (GROUP/NAME and the first sentence of each file's comment).

    Example: adflora configs list
    """
    from adflora_analysis.configs import list_configs, short_summary

    if as_json:
        import json

        typer.echo(json.dumps([{"name": c.qualified, "group": c.group, "path": str(c.path),
                                "description": c.summary} for c in list_configs()], indent=1))
        return
    for c in list_configs():
        typer.echo(f"{c.qualified:28s} {short_summary(c.summary)}")


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


app.add_typer(configs_app, name="configs")


def resume_done(where: Path, kind: str, config: str | None, overrides: list[str]) -> bool:
    """For ``adflora KIND run --resume DIR`` (no CONFIG, no overrides) on a run whose status is
    ``done``: print so in one line on stderr and return True (the caller exits 0, writing
    nothing)."""
    if config is not None or overrides:
        return False   # the runner compares them with the run's config and says what differs
    from adflora_analysis.rundir import load_run

    if load_run(where, kind).status != "done":
        return False
    nxt = (f"adflora synthetic check {where}" if kind == "synthetic"
           else f"adflora report {where} --out reports/NAME")
    typer.echo(f"run {where} is already done: nothing to resume (hint: read it with `{nxt}`, "
               "or run it again with --overwrite)", err=True)
    return True


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``adflora`` console script: a user error (an :class:`AdfloraError`
    or a usage error of the command line) is one ``error: ... (hint: ...)`` line, exit 2
    (130/143 for a run stopped by SIGINT/SIGTERM)."""
    try:  # typer vendors click (its own exception classes) since 0.2x
        from typer._click import exceptions as click
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions as click
    abort = getattr(click, "Abort", KeyboardInterrupt)  # typer's vendored click has no Abort
    _interrupt_once()
    interrupted = ("error: interrupted (hint: a run stopped this way continues with "
                   "--resume DIR)")
    try:
        rc = app(args=argv, standalone_mode=False)
    except AdfloraError as e:
        print(f"error: {e}", file=sys.stderr)
        _exit_distributed(e.exit_code)
        sys.exit(e.exit_code)
    except click.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except click.ClickException as e:
        print(f"error: {_usage_line(e)}", file=sys.stderr)
        sys.exit(2)
    except (abort, KeyboardInterrupt):
        print(interrupted, file=sys.stderr)
        sys.exit(130)
    if rc == 130:   # typer turns a KeyboardInterrupt (Ctrl-C during set-up) into Exit(130)
        print(interrupted, file=sys.stderr)
    sys.exit(rc if isinstance(rc, int) else 0)


def _interrupt_once() -> None:
    """The first SIGINT raises KeyboardInterrupt as usual; any further one is ignored while
    the command winds down (writes its status, prints its one line), so a second Ctrl-C never
    ends the process in a traceback or with no line."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return   # ignored by the parent (a background job) or set by a host program

    def once(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, once)


def _usage_line(e) -> str:
    """A click error as one line with a hint naming the command's ``--help``."""
    msg = " ".join(e.format_message().split())
    names, ctx = [], getattr(e, "ctx", None)
    while ctx is not None and ctx.parent is not None:  # the root's name is the program's
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    return f"{msg} (hint: see `{' '.join(['adflora', *names])} --help`)"


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
