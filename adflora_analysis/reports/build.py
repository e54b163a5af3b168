"""Turn loaded runs into report sections (what to show depends on what the runs contain)."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd

from adflora_analysis.reports import figures
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
    rows = []
    for r in runs:
        flat = _flat(r.config)
        row = {"run": r.name, "kind": r.kind}
        for k in SETUP_KEYS:
            if k in flat:
                row[k] = _cfg_value(flat[k])
        for k, v in flat.items():
            if k.startswith("topology."):
                row[k] = _cfg_value(v)
        topo = r.meta.get("topology") or {}
        for k in TOPO_KEYS:
            if k in topo:
                row[k] = topo[k]
        row["git"] = (r.meta.get("git_revision") or "")[:12]
        versions = r.meta.get("versions") or {}
        row["torch"] = versions.get("torch")
        rows.append(row)
    return Section("Setup", ["Configuration and topology constants of each run (p: expected "
                             "consensus rate of Koloskova et al. 2020, Assumption 4)."],
                   tables={"runs": pd.DataFrame(rows)})


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
    return out.reset_index()


def dynamics_section(title: str, metrics: pd.DataFrame, bounds: pd.DataFrame | None,
                     checks: pd.DataFrame | None) -> list[Section]:
    secs = []
    if checks is not None and not checks.empty:
        counts = checks["status"].value_counts()
        summary = ", ".join(f"{v} {k}" for k, v in counts.items())
        secs.append(Section(f"{title}: theory checks", [
            f"{len(checks)} checks: {summary}. Slack is (bound − measured) / bound of the seed "
            "means at the worst point (negative: the mean exceeded the bound); a check holds "
            "when no point exceeds its bound beyond Monte Carlo error across seeds (see "
            "docs/theory.md). 'finding (fails as expected)' marks a bound the method is not "
            "claimed to meet, e.g. frozen-block consensus under rolora."],
            tables={"theory checks": checks.drop(columns=["held"])}))
    figs = {
        "consensus error": figures.consensus(metrics, bounds),
        "frozen block": figures.frozen_block(metrics),
        "cross term C": figures.per_round(metrics, "cross_term", "cross term C = ‖mean B_iA_i "
                                          "− B̄Ā‖_F"),
        "product consensus": figures.per_round(metrics, "product_consensus",
                                               "product consensus (1/n)Σ‖B_iA_i − P̄‖²"),
        "gradient norm": figures.per_round(metrics, "grad_norm_sq",
                                           "‖∇f(Ā, B̄)‖² at the averaged model"),
        "loss": figures.per_round(metrics, "loss", "loss"),
        "local loss": figures.per_round(metrics, "local_loss",
                                        "mean local training loss of the round"),
    }
    figs = {k: v for k, v in figs.items() if v is not None}
    secs.append(Section(f"{title}: dynamics", [
        "Totals over layers per round; lines are seed means, bands the 90% interval over "
        "seeds. The frozen-block panel shows the consensus error of the factor that is not "
        "trained in a round: ADF-LoRA gossips it (it contracts), RoLoRA does not (it stays)."],
        figures=figs, tables={"final round": summary_table(metrics)}))
    extra: dict = {}
    for by, label in (("switch_interval", "T ablation"), ("heterogeneity",
                                                           "heterogeneity stress"),
                      ("p", "topology sweep")):
        # a study variable: some method ran with several values of it (not merely methods
        # with different defaults, e.g. T = 5 for adf-lora and 1 for rolora in one GLUE run)
        if by in metrics and metrics.groupby("method")[by].nunique().max() > 1:
            for col in ("grad_norm_sq", "cross_term", "loss"):
                f = figures.final_vs(metrics, by, col, f"final {col} against {by}")
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
    """Paper-shaped table: method x task of the final mean client metric (%), their average,
    and the paper's decentralized average beside it, labelled."""
    ev = evals[(evals["client"].astype(str) == "mean")]
    ev = ev[ev["round"] == ev.groupby(["method", "run"])["round"].transform("max")]
    task_of = {r.name: r.config.get("task", "?") for r in runs}
    by_run = ev["run"].map(task_of)  # a study over several tasks has a task column
    ev = ev.assign(task=ev["task"].fillna(by_run) if "task" in ev else by_run)
    primary = ev[ev["metric"].isin(["accuracy", "matched_accuracy", "mcc", "pearson"])]
    if primary.empty:
        primary = ev
    tab = primary.groupby(["method", "task"])["value"].mean().unstack("task") * 100
    tab["average"] = tab.mean(axis=1)
    tab["paper DFL average (roberta-large)"] = [PAPER_DFL_AVERAGE.get(m, np.nan)
                                               for m in tab.index]
    models = {str(r.config.get("model")) for r in runs}
    ours = sorted(set(ev["task"]))
    matches = set(ours) == set(PAPER_TASKS) and any("roberta-large" in m for m in models)
    setting = "matches" if matches else (
        f"differs (ours: model {', '.join(sorted(models))}; tasks {', '.join(ours)})")
    note = ("Paper numbers: ADF-LoRA (arXiv 2511.18291), decentralized, average over SST-2, "
            f"QNLI, QQP, MNLI. Setting {setting}.")
    return tab.reset_index(), note


def report_sections(runs: list[Run], checks_fn: CheckFn | None = None) -> list[Section]:
    """All sections for ``runs``: setup, then per study what its tables support."""
    secs = [setup_section(runs)]
    for group in group_runs(runs):
        title = group[0].name if len(group) == 1 else f"{group[0].name} (+{len(group) - 1})"
        kind = group[0].kind
        if kind == "topology-sweep":
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
            secs.append(Section(f"{title}: topology sweep", [
                "Expected consensus rate p (Koloskova et al. 2020, Assumption 4) against the "
                "encounter probability q per combination rule; dotted: static graphs."],
                figures={"p against q": fig} if fig is not None else {},
                tables=tables))
            continue
        metrics = _concat(group, "metrics")
        if metrics is None:
            continue
        metrics = _with_p(metrics, group)
        checks, bounds = None, None
        if checks_fn is not None:
            parts = [checks_fn(r) for r in group]
            parts = [p for p in parts if p is not None]
            if parts:
                checks = pd.concat([p[0].assign(run=r.name) for p, r in
                                    zip(parts, group, strict=False)], ignore_index=True)
                bl = [p[1] for p in parts if p[1] is not None]
                bounds = pd.concat(bl, ignore_index=True) if bl else None
        secs += dynamics_section(title, metrics, bounds, checks)
        if kind == "glue":
            evals = _concat(group, "eval")
            if evals is not None:
                fig = figures.evaluation(evals)
                sec = Section(f"{title}: evaluation", [
                    "Validation metric of each client's adapter averaged over clients (the "
                    "paper's number) and of the averaged adapter."],
                    figures={"evaluation": fig} if fig is not None else {})
                tab, note = glue_table(evals, group)
                sec.tables["GLUE table (%)"] = tab
                sec.table_notes["GLUE table (%)"] = note
                labels = [r.labels for r in group if r.labels is not None]
                if labels:
                    sec.tables["per-client label counts"] = labels[0]
                secs.append(sec)
    if any("switch_interval" in (r.metrics.columns if r.metrics is not None else [])
           for r in runs):
        secs.append(Section("Paper: T ablation", [
            "ADF-LoRA average accuracy (%) against T as reported in the paper (arXiv "
            "2511.18291), for comparison with the T sweeps above."],
            tables={"paper T ablation": pd.DataFrame(
                {"T": list(PAPER_T_ABLATION), "paper accuracy (%)":
                 list(PAPER_T_ABLATION.values())})}))
    return secs
