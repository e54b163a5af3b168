"""``adflora lm``: decentralized LoRA on causal language models, logging consensus, cross term
and perplexity.

Examples::

    adflora lm run lm_runs/tiny_llama.toml --out runs/tiny_llama
    adflora lm run lm_runs/tiny_llama.toml --out runs/qwen model=Qwen/Qwen2.5-0.5B \\
        dtype=bfloat16 gradient_checkpointing=true device=cuda
    adflora lm run --resume runs/tiny_llama
"""

from __future__ import annotations

import sys

import typer

from adflora_analysis import run_options as opt

app = typer.Typer(help="Causal-LM testbed: ADF-LoRA and baselines on any causal LM (tiny "
                  "offline Llama/Qwen2/Mistral/GPT-2, or a hub model), logging consensus, "
                  "cross term and perplexity.", no_args_is_help=True)


@app.command("run")
def run(
    args: list[str] = typer.Argument(None, metavar="[CONFIG] [KEY=VALUE]...",
                                     help="An lm_runs/*.toml file, then key=value overrides "
                                     "(e.g. rounds=20 model=tiny-qwen2)."),
    out: opt.Out = None,
    resume: opt.Resume = None,
    overwrite: opt.Overwrite = False,
    quiet: bool = typer.Option(False, "--quiet", help="No per-evaluation lines on stderr."),
    progress: opt.Progress = None,
    dry_run: opt.DryRun = False,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as a JSON object "
                                 "(with --dry-run: the resolved config and the jobs)."),
    track: opt.Track = None,
    logdir: opt.Logdir = None,
) -> None:
    """Run a causal-LM study (every variant x method x seed) into --out, or resume one.

    Example: adflora lm run lm_runs/tiny_llama.toml --out runs/tiny rounds=5
    """
    opt.run_command("lm", args, out, resume, overwrite, progress=progress,
                          dry_run=dry_run, as_json=as_json, track=track, logdir=logdir,
                          check=_preflight, log=not quiet, show=opt.print_summary)


def _preflight(cfg) -> None:
    """A dry run's checks: model config, targets and context of every variant, no weights."""
    from adflora_analysis.lm.model import preflight
    from adflora_analysis.study.runconfig import expand_study

    for _, v in expand_study(cfg):
        preflight(v)


@app.command("families")
def families() -> None:
    """List the model families with default LoRA targets (attention; + MLP with lora_mlp).

    Example: adflora lm families
    """
    from adflora_analysis.lm.model import DEFAULT_TARGETS

    for fam, (attn, mlp) in DEFAULT_TARGETS.items():
        print(f"{fam:8s} {','.join(attn):28s} lora_mlp adds: {','.join(mlp)}")


def main(argv: list[str] | None = None) -> int:
    """Run ``app`` with one-line errors (as ``adflora``'s entry point does); the exit code."""
    from adflora_analysis.errors import AdfloraError

    try:
        app(argv, standalone_mode=False)
    except AdfloraError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":   # python -m adflora_analysis.lm.cli run ... (also under torchrun)
    sys.exit(main())
