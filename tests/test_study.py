"""One study expansion for every runner (runconfig.expand_study): sweeps and variants over any
key, nested keys included, values kept typed; GLUE studies with sweeps; the shipped files."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from adflora_analysis import fileio
from adflora_analysis.config import load_config, parse_override
from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.config import GlueConfig
from adflora_analysis.study.runconfig import expand_study
from adflora_analysis.synthetic.config import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]


def test_nested_and_dotted_variant_keys_agree_and_keep_dict_values():
    """A nested table (``[[variants]]`` with ``topology.params = {...}`` unquoted) and the
    dotted spelling give the same variant; a new graph resets the encounter's q."""
    base = {"n_clients": 10, "topology": {"graph": "encounter", "q": 0.1}}
    nested = load_config(SyntheticConfig, data={**base, "variants": [
        {"topology": {"graph": "random-regular", "params": {"degree": 4}}}]})
    dotted = load_config(SyntheticConfig, data={**base, "variants": [
        {"topology.graph": "random-regular", "topology.params": {"degree": 4}}]})
    (ln, vn), = expand_study(nested)
    (ld, vd), = expand_study(dotted)
    assert vn == vd and ln == ld
    assert vn.topology.params == {"degree": 4} and vn.topology.q is None
    assert vn.sweep == {} and vn.variants == []


def test_values_stay_typed():
    """A string that reads as a number stays a string (a round trip through ``key=value``
    text would turn it into a float, which this key refuses); numbers are coerced as in a
    file."""
    study = load_config(GlueConfig, data={"model": "minilm", "variants": [
        {"label": "local", "data": "local", "data_dir": "0.5"}],
        "sweep": {"lr": [1, 0.001]}})
    assert [lbl for lbl, _ in expand_study(study)] == ["lr=1, local", "lr=0.001, local"]
    v = expand_study(study)[0][1]
    assert v.data_dir == "0.5" and v.lr == 1.0 and isinstance(v.lr, float)
    # the defect this guards against: text parsing of the same value
    assert parse_override("data_dir=0.5")[1] == 0.5
    with pytest.raises(AdfloraError, match="data_dir"):
        load_config(GlueConfig, data={"model": "minilm"}, overrides=["data_dir=0.5"])


@pytest.mark.parametrize("data, match", [
    ({"sweep": {"rounds": [1, 2]}}, "sweep over 'rounds' is not supported"),
    ({"sweep": {"lr": []}}, "sweep.lr must be a non-empty list"),
    ({"variants": [{"seeds": 3}]}, "a variant sets seeds"),
    ({"variants": [{"checkpoint_every": 3}]}, "a variant sets checkpoint_every"),
    ({"variants": ["ring"]}, "each \\[\\[variants\\]\\] entry must be a table"),
])
def test_study_keys_every_job_shares_are_refused(data, match):
    with pytest.raises(AdfloraError, match=match):
        load_config(GlueConfig, data={"model": "minilm", **data})


def test_a_bad_variant_is_named():
    study = load_config(GlueConfig, data={"model": "minilm", "sweep": {"task": ["sst2",
                                                                               "sst3"]}})
    with pytest.raises(AdfloraError, match="variant 'task=sst3': unknown task 'sst3'"):
        expand_study(study)


def test_glue_plan_is_variant_x_method_x_seed():
    from adflora_analysis.glue.runner import plan_jobs

    cfg = load_config(GlueConfig, data={
        "model": "minilm", "methods": ["adf-lora", "rolora", "lora"], "seeds": 2,
        "sweep": {"topology.q": [0.05, 0.5]},
        "variants": [{"label": "T1", "switch_interval": 1}, {"label": "T5"}]})
    plan = plan_jobs(cfg)
    assert len(plan) == 2 * 2 * 3 * 2 and plan.job.is_unique
    t1 = plan[plan.variant.str.endswith("T1")]
    assert set(t1.switch_interval) == {1} and set(t1.q) == {0.05, 0.5}
    t5 = plan[plan.variant.str.endswith("T5")].groupby("method").switch_interval.first()
    assert t5.to_dict() == {"adf-lora": 5, "lora": 1, "rolora": 1}  # the methods' defaults


# ------------------------------------------------------------------ the shipped GLUE studies
PAPER_LR = {"sst2": 4e-4, "qnli": 2e-4, "qqp": 3e-4, "mnli": 3e-4}


def _plan(name: str) -> pd.DataFrame:
    from adflora_analysis.glue.runner import plan_jobs

    return plan_jobs(load_config(GlueConfig, ROOT / "glue_runs" / f"{name}.toml"))


def test_shipped_glue_studies_expand_to_the_paper_experiments():
    files = {p.stem for p in (ROOT / "glue_runs").glob("*.toml")}
    assert {"ablation_T", "paper", "qsweep", "server", "smoke"} <= files
    assert not {f for f in files if f.startswith(("paper_", "server_", "qsweep_q", "ablation_T"))
                and f != "ablation_T"}  # the 16 one-variant files are gone
    paper = _plan("paper")
    assert len(paper) == 4 * 4 * 3  # tasks x methods x seeds
    assert (paper.groupby("task").lr.first().to_dict() == PAPER_LR)
    assert set(paper.graph) == {"encounter"} and set(paper.q) == {0.1}
    server = _plan("server")
    assert len(server) == 48 and set(server.weights) == {"server"}
    assert server.q.isna().all() and server.groupby("task").lr.first().to_dict() == PAPER_LR
    abl = _plan("ablation_T")
    assert len(abl) == 4 * 2 * 3 and set(abl.method) == {"adf-lora", "rolora"}
    assert sorted(set(abl.switch_interval)) == [1, 5, 10, 20] and set(abl.task) == {"sst2"}
    qs = _plan("qsweep")
    assert len(qs) == 4 * 4 * 3 and sorted(set(qs.q)) == [0.05, 0.2, 0.5, 1.0]
    assert set(qs.switch_interval[qs.method == "adf-lora"]) == {5}
    assert len(_plan("smoke")) == 4 and set(_plan("smoke").variant) == {"base"}


def test_glue_run_with_variants_on_tiny_roberta(tiny, tmp_path):
    """Two variants (two tasks) in one run directory: keyed jobs, variant/task columns, per
    variant partitions and fixtures, one shared model; stopped in the second variant and
    resumed, it ends with the rows of the uninterrupted run."""
    import json

    from adflora_analysis.glue.runner import run_glue

    cfg = load_config(GlueConfig, data=dict(
        task="rotten_tomatoes", model=str(tiny), n_clients=3, rounds=3, local_steps=1,
        batch_size=4, max_length=16, max_train_examples=90, max_eval_examples=20,
        eval_every=2, checkpoint_every=1, methods=["adf-lora"], threads=1,
        variants=[{"label": "rt"}, {"label": "qnli", "task": "qnli", "data": "fixture",
                                     "max_train_examples": 60}]))
    out = tmp_path / "run"
    summary = run_glue(cfg, out)
    m = pd.read_parquet(out / "metrics.parquet")
    assert set(m.job) == {"rt/adf-lora/seed=0", "qnli/adf-lora/seed=0"}
    assert m.groupby("variant").task.first().to_dict() == {"rt": "rotten_tomatoes",
                                                            "qnli": "qnli"}
    e = pd.read_parquet(out / "eval.parquet")
    assert set(zip(e.variant, e.task, strict=True)) == {("rt", "rotten_tomatoes"),
                                                        ("qnli", "qnli")}
    assert sorted(summary.variant) == ["qnli", "rt"]
    counts = pd.read_csv(out / "label_counts.csv")
    assert set(counts.variant) == {"rt", "qnli"}
    assert (out / "fixture" / "qnli" / "train.tsv").is_file()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["variants"]["qnli"]["task"] == "qnli"
    assert meta["variants"]["rt"]["data"]["train_rows"] == 90
    part = tmp_path / "part"
    run_glue(cfg, part, stop_after=4)  # rt's 3 rounds, then round 0 of qnli
    # metrics.jsonl starts with a header line (the run's config hash): read rows through fileio
    assert {r["job"] for r in fileio.read_jsonl(part / "metrics.jsonl")} == set(m.job)
    run_glue(cfg, part, resume=True)
    key = ["job", "round", "layer"]
    pd.testing.assert_frame_equal(
        m.sort_values(key).reset_index(drop=True),
        pd.read_parquet(part / "metrics.parquet").sort_values(key).reset_index(drop=True))
    ekey = ["job", "round", "client", "split", "metric"]
    pd.testing.assert_frame_equal(
        e.sort_values(ekey).reset_index(drop=True),
        pd.read_parquet(part / "eval.parquet").sort_values(ekey).reset_index(drop=True))


def test_distributed_glue_study_needs_one_client_count(tmp_path):
    """Processes split the clients once: variants with another n_clients are refused before
    any data or model is loaded."""
    from adflora_analysis.glue.runner import _studies

    class TwoRanks:
        rank, world_size = 0, 2

    cfg = load_config(GlueConfig, data={"model": "minilm", "n_clients": 4,
                                        "sweep": {"n_clients": [4, 6]}})
    with pytest.raises(AdfloraError, match="one n_clients for every variant"):
        _studies(cfg, tmp_path, None, TwoRanks())


def test_report_table_takes_tasks_from_a_study_over_tasks():
    """One run directory holding two tasks: the paper-shaped table has a column per task (its
    config names only the base task)."""
    from adflora_analysis.reports.build import glue_table
    from adflora_analysis.reports.collect import Run

    rows = [{"run": "paper", "method": m, "round": 9, "client": "mean", "split": "validation",
             "metric": "accuracy", "value": v, "task": task, "variant": task}
            for m, task, v in [("adf-lora", "sst2", 0.9), ("adf-lora", "qnli", 0.8),
                               ("lora", "sst2", 0.7), ("lora", "qnli", 0.6)]]
    run = Run(Path("paper"), "glue", {"task": "sst2", "model": "minilm"}, {})
    tab, _ = glue_table(pd.DataFrame(rows), [run])
    tab = tab.set_index("method")
    assert tab.loc["adf-lora", "qnli"] == pytest.approx(80.0)
    assert tab.loc["lora", "sst2"] == pytest.approx(70.0)
    assert tab.loc["adf-lora", "average"] == pytest.approx(85.0)
