"""Turn loaded runs into report sections (what to show depends on what the runs contain)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from adflora_analysis.reports import figures
from adflora_analysis.reports.checks import compact_checks
from adflora_analysis.reports.collect import Run
from adflora_analysis.reports.paper import PAPER_DFL_AVERAGE, PAPER_T_ABLATION, PAPER_TASKS
from adflora_analysis.reports.render import Section

SETUP_KEYS = ("task", "model", "n_clients", "rounds", "local_steps", "lr", "rank",
              "switch_interval", "seeds", "methods", "heterogeneity", "partition")
TOPO_KEYS = ("p", "p_stderr", "spectral_gap", "lambda2", "second_moment_rate", "connected")

# A hook the synthetic layer fills: run -> (check table, bound curves) or None.
CheckFn = Callable[[Run], tuple[pd.DataFrame, pd.DataFrame | None] | None]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _cfg_value(v) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs of one study (same kind and config but for seeds) are combined; others apart."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        cfg = {k: v for k, v in _flat(r.config).items() if k not in ("seeds", "seed")}
        groups.setdefault(json.dumps([r.kind, cfg], sort_keys=True, default=str), []).append(r)
    return list(groups.values())


def _concat(runs: list[Run], attr: str) -> pd.DataFrame | None:
    parts = []
    for r in runs:
        df = getattr(r, attr)
        if df is not None and not df.empty:
            parts.append(df.assign(run=r.name))
    return pd.concat(parts, ignore_index=True) if parts else None


def setup_section(runs: list[Run]) -> Section:
    """Configuration and topology constants: one row per setting, one column per run (keys no
    run has are left out)."""
    rows = []
    for r in runs:
        flat = _flat(r.config)
        row = {"kind": r.kind}
        for k in SETUP_KEYS:
            if k in flat:
                row[k] = _cfg_value(flat[k])
        for k, v in flat.items():
            if k.startswith("topology.") and not isinstance(v, dict):
                row[k] = _cfg_value(v)
        topo = r.meta.get("topology") or {}
        for k in TOPO_KEYS:
            if k in topo:
                row[k] = _cfg_value(topo[k])
        row["status"] = r.meta.get("status", "")
        row["git"] = (r.meta.get("git_revision") or "")[:12]
        row["torch"] = (r.meta.get("versions") or {}).get("torch", "")
        rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row))
    tab = pd.DataFrame({"setting": keys, **{r.name: [str(row.get(k, "")) for k in keys]
                                            for r, row in zip(runs, rows, strict=True)}})
    return Section("Setup", ["Configuration and topology constants of each run (p: expected "
                             "consensus rate of Koloskova et al. 2020, Assumption 4)."],
                   tables={"runs": tab})


def summary_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Final-round totals per method (and study variable): mean and sd over seeds."""
    df = metrics[metrics["layer"] == "all"]
    keys = ["method"] + [c for c in ("variant", "switch_interval", "heterogeneity", "q",
                                     "graph") if c in df and df[c].nunique() > 1]
    last = df[df["round"] == df.groupby(keys)["round"].transform("max")]
    cols = [c for c in ("xi_A", "xi_B", "cross_term", "product_consensus", "grad_norm_sq",
                        "loss") if c in last and last[c].notna().any()]
    g = last.groupby(keys)[cols]
    out = g.mean().add_suffix(" mean").join(g.std().add_suffix(" sd"))
    out.insert(0, "seeds", last.groupby(keys)["seed"].nunique())
    out.insert(0, "round", last.groupby(keys)["round"].max())
    out = out.reset_index()
    order = sorted(range(len(out)), key=lambda i: tuple(
        figures.natural_key(out.iloc[i][k]) if k != "method" else
        (figures.METHOD_ORDER.index(out.iloc[i][k]) if out.iloc[i][k] in figures.METHOD_ORDER
         else 99, str(out.iloc[i][k])) for k in keys))
    return out.iloc[order].reset_index(drop=True)


def dynamics_section(title: str, metrics: pd.DataFrame, bounds: pd.DataFrame | None,
                     checks: pd.DataFrame | None,
                     cross: pd.DataFrame | None = None,
                     saved_notes: list[str] | None = None) -> list[Section]:
    """The theory-check table (with ``saved_notes``: why a run's saved ``checks.json`` is not
    what is shown), the dynamics figures and the final-round table; sweeps where a study
    variable varies."""
    secs = []
    if checks is not None and not checks.empty:
        counts = checks["status"].value_counts()
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        saved = [f"Saved verdicts not shown: {n}. The verdicts here are computed from the "
                 "run's current rows." for n in saved_notes or []]
        secs.append(Section(f"{title}: theory checks", [*saved,
            f"{len(checks)} checks: {summary}. ratio = bound ÷ measured of the pooled seed "
            "sums (≥ 1 when an upper bound holds, ≈ 1 for an identity) with its interval "
            "ratio ± threshold × stderr; z = (1 − ratio) / stderr beside its threshold; mde = "
            "the smallest relative violation the seeds could detect with 80 % power. 'held' "
            "means no violation beyond Monte Carlo error and mde ≤ 20 %; otherwise "
            "'underpowered'. 'finding' marks a bound the method is not claimed to meet (rolora's "
            "frozen block); see docs/theory.md."],
            tables={k: v for k, v in (("theory checks (compact)", compact_checks(checks)),
                                      ("theory checks", checks.drop(columns=["held"])))
                    if k == "theory checks" or not v.empty}))
    frozen_src = metrics.assign(variant=metrics["cmp"]) if "cmp" in metrics else metrics
    loss_col = "loss_gap" if "loss_gap" in metrics and metrics["loss_gap"].notna().any() \
        else "loss"
    figs = {
        "consensus error": figures.consensus(metrics, bounds),
        "frozen block": figures.frozen_block(frozen_src),
        "loss difference to adf-lora": figures.difference(metrics, loss_col),
        "consensus difference to adf-lora": figures.difference(
            metrics.assign(**{"Ξ_A+Ξ_B": metrics.get("xi_A", 0) + metrics.get("xi_B", 0)}),
            "Ξ_A+Ξ_B", relative=True) if "xi_A" in metrics else None,
        "cross term C": figures.per_round(metrics, "cross_term", "cross term C = ‖mean B_iA_i "
                                          "− B̄Ā‖_F"),
        "product consensus": figures.per_round(metrics, "product_consensus",
                                               "product consensus (1/n)Σ‖B_iA_i − P̄‖²"),
        "gradient norm": figures.per_round(metrics, "grad_norm_sq",
                                           r"$\|\nabla f(\bar A, \bar B)\|^2$ at the "
                                           "averaged model"),
        "loss": figures.per_round(metrics, "loss", "loss"),
        "excess loss f − f*": figures.per_round(metrics, "loss_gap", "excess loss f − f*"),
        "local loss": figures.per_round(metrics, "local_loss",
                                        "mean local training loss of the round"),
    }
    if cross is not None:
        figs["cross terms ‖B_i A_j‖_F"] = figures.cross_heatmap(cross)
    figs = {k: v for k, v in figs.items() if v is not None}
    secs.append(Section(f"{title}: dynamics", [
        "Totals over layers per round, rounds numbered from 0 as in the files; lines are "
        "seed means, bands the 90% interval over seeds; a series that is identically zero "
        "is listed in its panel as '≡ 0'. The frozen-block panels show, for every variant, "
        "the consensus error of each factor with the stretches in which it is frozen shaded: "
        "ADF-LoRA gossips the frozen factor (it contracts), RoLoRA does not (it stays). The "
        "difference panels subtract adf-lora's value from each other method's on the same "
        "seed (same data and initialisation), so an effect smaller than the spread over seeds "
        "shows. The cross-term heatmaps (where the run kept checkpoints) show ‖B_i A_j‖_F at "
        "the checkpoint rounds: the diagonal is what each client computed, the rest are "
        "update directions no client computed."],
        figures=figs, tables={"final round": summary_table(metrics)}))
    extra: dict = {}
    for by, label in (("switch_interval", "T ablation"), ("heterogeneity",
                                                           "heterogeneity stress"),
                      ("p", "topology sweep")):
        # a study variable: some method ran with several values of it (not merely methods
        # with different defaults, e.g. T = 5 for adf-lora and 1 for rolora in one GLUE run)
        if by in metrics and metrics.groupby("method")[by].nunique().max() > 1:
            for col in ("grad_norm_sq", "cross_term", loss_col):
                f = figures.final_vs(metrics, by, col, f"final {figures.label(col)} "
                                     f"against {figures.label(by)}")
                if f is not None:
                    extra[f"{label}: {col}"] = f
    if extra:
        secs.append(Section(f"{title}: sweeps", figures=extra))
    return secs


def _with_p(metrics: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """Add each row's consensus rate p (per study variant, from meta.json) as a column."""
    p_of: dict[str, float] = {}
    for r in runs:
        for label, v in (r.meta.get("variants") or {}).items():
            p = (v.get("topology") or {}).get("p", v.get("p"))
            if p is not None:
                p_of[label] = float(p)
    if "variant" in metrics and p_of:
        return metrics.assign(p=metrics["variant"].map(p_of))
    p = next((r.meta.get("p", (r.meta.get("topology") or {}).get("p")) for r in runs), None)
    return metrics.assign(p=p) if p is not None else metrics


def glue_table(evals: pd.DataFrame, runs: list[Run]) -> tuple[pd.DataFrame, str]:
    """Paper-shaped table: method x task of the final mean client metric (%, the mean over
    seeds), their average, the standard deviation over seeds of each (``<task> sd``), the
    number of seeds, and the paper's decentralized average beside it, labelled."""
    tab, sd, seeds, note = _glue_parts(evals, runs)
    out = tab.join(sd.add_suffix(" sd"))
    out.insert(0, "seeds", seeds)
    if "paper DFL average (roberta-large)" in tab:
        out = out[[c for c in out if c != "paper DFL average (roberta-large)"]
                  + ["paper DFL average (roberta-large)"]]
    out.columns.name = None
    return out.reset_index(), note


def glue_pm_table(evals: pd.DataFrame, runs: list[Run]) -> pd.DataFrame:
    """The GLUE table as a paper prints it: ``mean ± sd`` over seeds (%) per task and their
    average, and the number of seeds (``± –``: one seed, no spread)."""
    tab, sd, seeds, _ = _glue_parts(evals, runs)
    out = pd.DataFrame(index=tab.index)
    out["seeds"] = seeds
    for c in tab:
        if c in sd:
            out[c] = [f"{m:.2f} ± " + ("–" if pd.isna(d) else f"{d:.2f}")
                      for m, d in zip(tab[c], sd[c], strict=True)]
        else:
            out[c] = tab[c]
    out.columns.name = None
    return out.reset_index()


def _glue_parts(evals: pd.DataFrame, runs: list[Run]):
    ev = evals[(evals["client"].astype(str) == "mean")]
    ev = ev[ev["round"] == ev.groupby(["method", "run"])["round"].transform("max")]
    task_of = {r.name: r.config.get("task", "?") for r in runs}
    by_run = ev["run"].map(task_of)  # a study over several tasks has a task column
    ev = ev.assign(task=ev["task"].fillna(by_run) if "task" in ev else by_run)
    if "seed" not in ev:
        ev = ev.assign(seed=0)
    primary = ev[ev["metric"].isin(["accuracy", "matched_accuracy", "mcc", "pearson"])]
    if primary.empty:
        primary = ev
    per_seed = primary.groupby(["method", "task", "seed"])["value"].mean().unstack("task") * 100
    per_seed["average"] = per_seed.mean(axis=1)
    g = per_seed.groupby(level="method")
    tab, sd = g.mean(), g.std()
    tasks = [c for c in tab.columns if c != "average"]
    counts = primary.groupby(["method", "task"])["seed"].nunique().unstack("task")
    seeds = [f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}"
             for lo, hi in zip(counts.min(axis=1), counts.max(axis=1), strict=True)]
    seeds = pd.Series(seeds, index=counts.index).reindex(tab.index)
    tab, sd = tab[tasks + ["average"]], sd[tasks + ["average"]]
    order = figures.method_order(tab.index)
    tab, sd, seeds = tab.loc[order], sd.loc[order], seeds.loc[order]
    models = {str(r.config.get("model")) for r in runs}
    ours = sorted(set(ev["task"]))
    if paper_setting_matches(runs, ours):
        tab["paper DFL average (roberta-large)"] = [PAPER_DFL_AVERAGE.get(m, np.nan)
                                                   for m in tab.index]
        note = ("Paper numbers: ADF-LoRA (arXiv 2511.18291), decentralized, average over "
                "SST-2, QNLI, QQP, MNLI; the setting matches.")
    else:
        note = (f"Setting differs from the paper's (ours: model {', '.join(sorted(models))}; "
                f"tasks {', '.join(ours)}; the paper: roberta-large on "
                f"{', '.join(PAPER_TASKS)}), so its numbers are not shown beside these.")
    return tab, sd, seeds, note


def paper_setting_matches(runs: list[Run], tasks: list[str]) -> bool:
    """The paper's numbers go only beside runs of its setting: roberta-large on its four
    tasks, LoRA in every layer (no ``adapt_layers``) and the frozen shared head."""
    models = {str(r.config.get("model")) for r in runs}
    return (set(tasks) == set(PAPER_TASKS) and all("roberta-large" in m for m in models)
            and not any(r.config.get("adapt_layers") or r.config.get("train_head")
                        for r in runs))


def compare_labels(runs: list[Run]) -> dict[str, str]:
    """Per run, ``key=value`` of the config keys that differ between ``runs`` (seeds aside).

    >>> from pathlib import Path
    >>> a = Run(Path("a"), "synthetic", {"lr": 0.1, "t": {"q": 0.1}}, {})
    >>> b = Run(Path("b"), "synthetic", {"lr": 0.1, "t": {"q": 0.2}}, {})
    >>> compare_labels([a, b])
    {'a': 't.q=0.1', 'b': 't.q=0.2'}
    """
    flats = {r.name: _flat(r.config) for r in runs}
    keys = sorted({k for f in flats.values() for k in f} - {"seeds", "seed"})
    differ = [k for k in keys if len({_cfg_value(f.get(k)) for f in flats.values()}) > 1]
    return {name: ", ".join(f"{k}={_cfg_value(f.get(k))}" for k in differ) or name
            for name, f in flats.items()}


def _comparison_groups(runs: list[Run]) -> list[list[Run]]:
    """For ``adflora report --compare``: runs of one kind drawn together (topology sweeps
    apart)."""
    by_kind: dict[str, list[Run]] = {}
    for r in runs:
        by_kind.setdefault(r.kind, []).append(r)
    out = []
    for kind, rs in by_kind.items():
        out += [[r] for r in rs] if kind == "topology-sweep" else [rs]
    return out


def should_compare(runs: list[Run]) -> bool:
    """The default of ``--compare``: every run is of one kind (synthetic or GLUE), none is a
    sweep of its own, and their configs differ beyond seeds."""
    kinds = {r.kind for r in runs}
    if len(runs) < 2 or len(kinds) != 1 or kinds & {"topology-sweep"}:
        return False
    if any(r.config.get("sweep") or r.config.get("variants") for r in runs):
        return False
    return len(group_runs(runs)) > 1


def report_sections(runs: list[Run], checks_fn: CheckFn | None = None,
                    compare: bool | None = None) -> list[Section]:
    """All sections for ``runs``: per study what its tables support, then the setup.

    ``compare`` (default :func:`should_compare`): runs whose configs differ are drawn in the
    same figures, a line style per run labelled by the keys that differ."""
    if compare is None:
        compare = should_compare(runs)
    secs = []
    groups = _comparison_groups(runs) if compare else group_runs(runs)
    for group in groups:
        labels = compare_labels(group) if compare and len(group) > 1 else None
        title = group[0].name if len(group) == 1 else (
            "comparison of " + ", ".join(r.name for r in group) if labels
            else f"{group[0].name} (+{len(group) - 1})")
        kind = group[0].kind
        if kind == "topology-sweep":
            secs.append(_sweep_section(title, group))
            continue
        metrics = _concat(group, "metrics")
        if metrics is None:
            continue
        if labels:
            metrics = metrics.assign(cmp=metrics["run"].map(labels))
        metrics = _with_p(metrics, group)
        checks, bounds, notes = None, None, []
        if checks_fn is not None:
            parts = [(checks_fn(r), r) for r in group]
            parts = [(p, r) for p, r in parts if p is not None]
            if parts:
                checks = pd.concat([p[0].assign(run=r.name) for p, r in parts],
                                   ignore_index=True)
                bl = [p[1] for p, _ in parts if p[1] is not None]
                bounds = pd.concat(bl, ignore_index=True) if bl and not labels else None
                from adflora_analysis.reports.checks import saved_note

                notes = [n for _, r in parts if (n := saved_note(r))]
        cross = None
        if len(group) == 1:
            from adflora_analysis.reports.cross import cross_matrices

            cross = cross_matrices(group[0].path, group[0].metrics)
        secs += dynamics_section(title, metrics, bounds, checks, cross, notes)
        from adflora_analysis.reports.async_figures import async_sections

        secs += async_sections(title, metrics, [r.path for r in group],
                               [r.meta for r in group])
        if checks is not None:
            from adflora_analysis.reports.checks import overlay_sections

            secs += overlay_sections(title, group)
        if kind == "glue":
            secs += _glue_sections(title, group, labels)
        elif kind == "lm":
            secs += _lm_sections(title, group)
    from adflora_analysis.reports.measure_figures import measures_sections

    syn = [r for r in runs if r.kind == "synthetic"]
    secs += measures_sections([r.path for r in syn], [r.meta for r in syn])
    secs.append(setup_section(runs))
    return secs


def _sweep_section(title: str, group: list[Run]) -> Section:
    sw = _concat(group, "sweep")
    fig = figures.sweep(sw)
    tables = {}
    if "rule" in sw and "q" in sw:
        enc = sw[sw["q"].notna()]
        piv = enc.pivot_table(index="rule", columns="q", values="p")
        piv.columns = [f"q={q:g}" for q in piv.columns]
        tables["p by rule and q"] = piv.reset_index()
        static = sw[sw["q"].isna()]
        keep = [c for c in ("graph", "rule", "n", "p", "second_moment_rate",
                            "spectral_gap") if c in static]
        tables["static and other references"] = static[keep]
    tables["full sweep"] = sw
    return Section(f"{title}: topology sweep", [
        "Expected consensus rate p (Koloskova et al. 2020, Assumption 4) against the "
        "encounter probability q per combination rule; grey: static graphs of the same n."],
        figures={"p against q": fig} if fig is not None else {}, tables=tables)


def lm_table(evals: pd.DataFrame) -> pd.DataFrame:
    """Final-round perplexity of an lm run per method: the mean over clients and the averaged
    adapter (mean ± sd over seeds, and the seed count); perplexity as it is, no % scaling.

    >>> ev = pd.DataFrame({"method": ["lora"] * 4, "seed": [0, 0, 1, 1], "round": [2] * 4,
    ...                    "client": ["mean", "averaged"] * 2, "metric": ["perplexity"] * 4,
    ...                    "value": [10.0, 9.0, 12.0, 11.0]})
    >>> lm_table(ev).to_dict("records")[0]["mean-client perplexity"]
    '11.00 ± 1.41'
    """
    ev = evals[evals["metric"] == "perplexity"]
    ev = ev[ev["round"] == ev["round"].max()]
    rows = []
    for m in figures.method_order(ev["method"].unique()):
        e = ev[ev["method"] == m]
        row = {"method": m, "round": int(e["round"].max()), "seeds": e["seed"].nunique()}
        for who, col in (("mean", "mean-client perplexity"),
                         ("averaged", "averaged-adapter perplexity")):
            v = e[e["client"].astype(str) == who].groupby("seed")["value"].mean()
            row[col] = (f"{v.mean():.2f} ± {v.std():.2f}" if len(v) > 1 else
                        f"{v.mean():.2f}" if len(v) else "")
        rows.append(row)
    return pd.DataFrame(rows)


def _lm_sections(title: str, group: list[Run]) -> list[Section]:
    """The causal-LM evaluation: final perplexity per method (mean client and the averaged
    adapter)."""
    evals = _concat(group, "eval")
    if evals is None or "metric" not in evals or "perplexity" not in set(evals["metric"]):
        return []
    name = "perplexity (final round; mean ± sd over seeds)"
    sec = Section(f"{title}: evaluation", [
        "Validation perplexity (exp of the token-weighted next-token loss) of each client's "
        "adapter averaged over clients, and of the averaged adapter, at the final evaluation "
        "round."], tables={name: lm_table(evals)})
    return [sec]


def _glue_sections(title: str, group: list[Run], labels: dict | None) -> list[Section]:
    evals = _concat(group, "eval")
    secs = []
    if evals is not None:
        if labels:
            evals = evals.assign(method=evals["method"] + " | " + evals["run"].map(labels))
        fig = figures.evaluation(evals)
        sec = Section(f"{title}: evaluation", [
            "Validation metric of each client's adapter averaged over clients (the paper's "
            "number, solid) and of the averaged adapter (dashed), at every evaluation round."],
            figures={"evaluation": fig} if fig is not None else {})
        tab, note = glue_table(evals, group)
        pm = "GLUE table (mean ± sd over seeds, %)"
        sec.tables[pm] = glue_pm_table(evals, group)
        sec.table_notes[pm] = note + " Final evaluation round, mean over clients."
        sec.tables["GLUE table (%)"] = tab
        sec.table_notes["GLUE table (%)"] = note
        labs = [r.labels for r in group if r.labels is not None]
        if labs:
            f = figures.label_distribution(labs[0])
            if f is not None:
                sec.figures["label distribution per client"] = f
            sec.tables["per-client label counts"] = labs[0]
        secs.append(sec)
        m = _concat(group, "metrics")
        if (m is not None and "switch_interval" in m
                and m[m["method"] == "adf-lora"]["switch_interval"].nunique() > 1
                and paper_setting_matches(group, sorted(set(
                    str(r.config.get("task")) for r in group)))):
            secs.append(Section(f"{title}: the paper's T ablation", [
                "ADF-LoRA average accuracy (%) against T as reported in the paper (arXiv "
                "2511.18291), beside this run's T sweep of the same setting."],
                tables={"paper T ablation": pd.DataFrame(
                    {"T": list(PAPER_T_ABLATION), "paper accuracy (%)":
                     list(PAPER_T_ABLATION.values())})}))
    return secs


def summary_lines(runs: list[Run], sections: list[Section], note: str | None = None
                  ) -> list[str]:
    """The report's opening: five lines on what the runs show (runs, verdicts, headline
    numbers, and what is a demo or partial setting)."""
    kinds = ", ".join(f"{r.name} ({r.kind}, {_size(r)})" for r in runs)
    lines = [f"Runs: {kinds}."]
    checks = [t for s in sections for n, t in s.tables.items() if n == "theory checks"]
    if checks:
        c = pd.concat(checks)["status"].value_counts()
        lines.append("Theory checks: " + ", ".join(f"{v} {k}" for k, v in c.items()) + ".")
    else:
        lines.append("Theory checks: none evaluated (no synthetic or GLUE metrics).")
    lines.append(_headline_synthetic(runs) or "Synthetic testbed: not in these runs.")
    lines.append(_headline_glue(runs) or "GLUE: no evaluation in these runs.")
    bad = [f"{r.name} is {r.status}" for r in runs if r.status not in ("unknown", "done")]
    tail = (note + " ") if note else ""
    lines.append(tail + ("Partial: " + "; ".join(bad) + " (figures show the rounds written)."
                         if bad else "Every run completed."))
    return [ln for ln in lines if ln]


def _size(r: Run) -> str:
    c = r.config
    if r.kind == "topology-sweep":
        return "p against q"
    m = r.metrics if r.metrics is not None else pd.DataFrame()
    seeds = c.get("seeds", m["seed"].nunique() if "seed" in m else None)
    n_seeds = seeds if isinstance(seeds, int) else len(seeds or [0])
    methods = c.get("methods") or (sorted(set(m["method"])) if "method" in m else [])
    rounds = c.get("rounds") or (int(m["round"].max()) + 1 if "round" in m else "?")
    return (f"{len(methods)} methods, n = {c.get('n_clients', '?')}, {rounds} rounds, "
            f"{n_seeds} seed(s)")


def _final(df: pd.DataFrame, col: str) -> pd.Series:
    df = df[df["layer"] == "all"] if "layer" in df else df
    last = df[df["round"] == df.groupby("method")["round"].transform("max")]
    return last.groupby("method")[col].mean()


def _headline_synthetic(runs: list[Run]) -> str:
    r = next((r for r in runs if r.kind == "synthetic" and r.metrics is not None), None)
    if r is None or "xi_A" not in r.metrics:
        return ""
    m = r.metrics
    if "variant" in m and m["variant"].nunique() > 1:
        m = m[m["variant"] == m["variant"].iloc[0]]
    xi = _final(m, "xi_A") + _final(m, "xi_B")
    order = figures.method_order(xi.index)
    gap = _final(m, "loss_gap") if "loss_gap" in m else None
    return (f"{r.name}, final round: consensus error Ξ_A + Ξ_B "
            + ", ".join(f"{k} {xi[k]:.3g}" for k in order)
            + ("; excess loss f − f* " + ", ".join(f"{k} {gap[k]:.3g}" for k in order)
               if gap is not None else "") + " (seed means).")


def _headline_glue(runs: list[Run]) -> str:
    r = next((r for r in runs if r.kind == "glue" and r.eval is not None
              and not r.eval.empty), None)
    if r is None:
        return ""
    ev = r.eval[r.eval["client"].astype(str) == "mean"]
    metric = next((m for m in ("accuracy", "matched_accuracy", "mcc", "pearson")
                   if m in set(ev["metric"])), ev["metric"].iloc[0])
    ev = ev[ev["metric"] == metric]
    last = ev[ev["round"] == ev["round"].max()].groupby("method")["value"].mean()
    return (f"{r.name} ({r.config.get('task')}, {r.config.get('model')}): mean-client "
            f"{metric} at round {int(ev['round'].max())}: "
            + ", ".join(f"{k} {last[k]:.3f}" for k in figures.method_order(last.index)) + ".")


def report_verdict(runs: list[Run], sections: list[Section]) -> list[str]:
    """The report's opening verdict (:mod:`adflora_analysis.reports.verdict`): per method the
    check families by verdict, then each method against adf-lora at the final round (synthetic:
    excess loss and consensus error; GLUE: the mean-client metric), paired by seed, and a
    warning where compared methods ran at different settings."""
    from adflora_analysis.reports.verdict import SETTINGS, verdict_lines

    checks = [t for s in sections for n, t in s.tables.items() if n == "theory checks"]
    studies: list[tuple[str, pd.DataFrame, dict[str, str]]] = []
    for group in group_runs(runs):
        name = group[0].name + (f" (+{len(group) - 1})" if len(group) > 1 else "")
        m = _concat(group, "metrics")
        if group[0].kind == "synthetic" and m is not None:
            if "xi_A" in m and "xi_B" in m:
                m = m.assign(xi_sum=m["xi_A"] + m["xi_B"])
            studies.append((name, m, {"loss_gap": "final excess loss f − f*",
                                      "xi_sum": "final consensus error Ξ_A + Ξ_B"}))
        elif group[0].kind == "glue":
            ev = _concat(group, "eval")
            if ev is None or "metric" not in ev:
                continue
            ev = ev[ev["client"].astype(str) == "mean"]
            metric = next((x for x in ("accuracy", "matched_accuracy", "mcc", "pearson")
                           if x in set(ev["metric"])), None)
            if metric is None:
                continue
            ev = ev[ev["metric"] == metric]
            if m is not None:   # the settings each method ran with, for the warnings
                for key in SETTINGS:
                    if key in m and key not in ev:
                        ev = ev.assign(**{key: ev["method"].map(
                            m.dropna(subset=[key]).groupby("method")[key].first())})
            studies.append((name, ev.assign(value=ev["value"] * 100),
                            {"value": f"final mean-client {metric} (%)"}))
    return verdict_lines(pd.concat(checks, ignore_index=True) if checks else None, studies)
