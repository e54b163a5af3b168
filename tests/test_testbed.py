"""Testbeds as declarations (study/testbed.py) and the one run sequence (study/sequence.py).

A third testbed is written here, in this file alone: a tiny problem, its config and one
registration. It runs through the same sequence as the shipped kinds (claim, meta with topology
and gossip entries, jobs, rows, resume) and the theory checks it declares judge its run. Bad
declarations and an unknown kind are one ``error:`` line each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from adflora_analysis.config import load_config
from adflora_analysis.core import LoraState, Problem, get_method
from adflora_analysis.core.gossip import mixing_schedule
from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import torch_generator
from adflora_analysis.study.experiment import Job
from adflora_analysis.study.runconfig import FederationConfig, expand_study
from adflora_analysis.study.schedule_config import schedule_and_mixer
from adflora_analysis.study.sequence import run_testbed, topology_meta
from adflora_analysis.study.testbed import (
    Built,
    Testbed,
    get_testbed,
    of_run,
    register_testbed,
    unregister_testbed,
)

ROOT = Path(__file__).resolve().parents[1]
KIND = "toy-drift"   # the third testbed's kind: named in this file only


# --- the third testbed: a problem, a config, one registration -------------------------------


class DriftProblem(Problem):
    """Every trained block takes a step towards 0 plus noise keyed by (seed, t); evaluate
    reports the squared norm of the clients' A and B as the loss."""

    def __init__(self, seeds: list[int], lr: float):
        self.seeds, self.lr = seeds, lr

    def local_update(self, state, blocks, t, disp=None, **kw):
        def step(X):
            noise = torch.stack([torch.randn(X.shape[1:], generator=torch_generator(s, "d", t),
                                             dtype=X.dtype) for s in self.seeds])
            return (1 - self.lr) * X + 0.05 * noise
        new = state.map_blocks(step, blocks)
        if disp is not None:
            disp.add_states(state, new, blocks)
        return new

    def evaluate(self, state, t):
        return {"loss": sum(a.pow(2).sum((-3, -2, -1)) + b.pow(2).sum((-3, -2, -1))
                            for a, b in zip(state.A, state.B, strict=True))}


@dataclass
class DriftConfig(FederationConfig):
    """n_clients, rounds, seeds, methods, topology, gossip as every kind; ``dim``: the
    factors' size."""

    n_clients: int = 6
    rounds: int = 8
    seeds: int | list[int] = 3
    methods: list[str] = field(default_factory=lambda: ["adf-lora", "lora"])
    lr: float = 0.2
    dim: int = 3

    def __post_init__(self) -> None:
        self.check_federation()


def build(cfg: DriftConfig, ctx) -> Built:
    jobs, samplers = [], {}
    for label, v in expand_study(cfg):
        seeds = v.seed_list
        samplers[label], _ = topology_meta(v)
        for m in v.methods:
            def make(v=v, seeds=seeds, sampler=samplers[label]):
                S, n, d = len(seeds), v.n_clients, v.dim
                g = torch.Generator().manual_seed(0)
                A = torch.randn(S, n, 2, d, generator=g, dtype=torch.float64)
                B = torch.randn(S, n, d, 2, generator=g, dtype=torch.float64)
                sched = mixing_schedule(sampler, seeds, dtype=torch.float64, sparse=False)
                return DriftProblem(seeds, v.lr), LoraState([A], [B], ["q"]), sched
            schedule, mixer, extra = schedule_and_mixer(v, samplers[label], seeds, method=m)
            jobs.append(Job(m, get_method(m), seeds, make, switch_interval=v.switch_for(m),
                            extra={"variant": label, **extra}, schedule=schedule, mixer=mixer))
    return Built(jobs, samplers=samplers, state=cfg)


def meta(cfg: DriftConfig, built: Built, backend) -> dict:
    _, tc = topology_meta(cfg)
    return {"p": tc["p"], "p_stderr": tc["p_stderr"],
            "second_moment_rate": tc["second_moment_rate"], "topology": tc}


@pytest.fixture
def toy():
    tb = register_testbed(Testbed(KIND, DriftConfig, build=build, meta=meta,
                                  checks=("mixing-validity", "gossip-contraction")))
    yield tb
    unregister_testbed(KIND)


def drift(**kw) -> DriftConfig:
    return load_config(DriftConfig, data={"topology": {"graph": "ring"}, **kw})


# --- it runs through the machinery ---------------------------------------------------------


def test_a_third_testbed_runs_resumes_and_is_checked(toy, tmp_path):
    from adflora_analysis.theory import run_checks

    cfg = drift()
    full = run_testbed(KIND, cfg, tmp_path / "full", progress=False)
    assert len(full) == 2 * 3 * 8 * 2   # methods x seeds x rounds x (layer q + all)
    meta_ = json.loads((tmp_path / "full" / "meta.json").read_text())
    assert meta_["kind"] == KIND and meta_["status"] == "done"
    assert 0 < meta_["p"] <= 1 and "gossip" not in meta_   # synchronous: no gossip entry
    assert of_run(tmp_path / "full") is toy

    # resume after a stop equals the uninterrupted run (the sequence's resume, not the kind's)
    part = tmp_path / "part"
    run_testbed(KIND, cfg, part, progress=False, stop_after=11)
    again = run_testbed(KIND, cfg, part, progress=False, resume=True)
    cols = ["job", "seed", "round", "layer", "xi_A", "xi_B", "loss"]
    key = ["job", "seed", "round", "layer"]
    assert again[cols].sort_values(key).reset_index(drop=True).equals(
        full[cols].sort_values(key).reset_index(drop=True))

    results = run_checks(tmp_path / "full", entry_points=False)
    judged = {r.check for r in results if r.status not in ("error", "n/a")}
    assert "gossip-contraction" in judged, [(r.check, r.status, r.note) for r in results]
    assert not [r for r in results if r.status == "error"]


def test_gossip_meta_is_written_for_every_kind(toy, tmp_path):
    """The sequence, not the kind, writes ``gossip`` and ``async_rate`` (checks 2, 3, 7 read
    them): a kind that says nothing about gossip gets them."""
    run_testbed(KIND, drift(gossip={"staleness": 1}, rounds=4), tmp_path, progress=False)
    meta_ = json.loads((tmp_path / "meta.json").read_text())
    assert meta_["gossip"] == {"staleness": 1, "participation": 1.0}
    assert 0 < meta_["async_rate"]["rate"] < 1


def test_a_glue_run_records_its_gossip_for_the_checks(tiny, tmp_path):
    """GLUE's meta.json had no gossip entry, so checks 2, 3 judged stale gossip as synchronous
    and check 7 said nothing: now the sequence writes it, and check 7 reads it."""
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.runner import run_glue
    from adflora_analysis.theory import run_checks

    cfg = load_config(GlueConfig, data=dict(
        task="rotten_tomatoes", model=str(tiny), n_clients=4, rounds=8, local_steps=1,
        batch_size=8, max_length=32, max_train_examples=120, max_eval_examples=16,
        eval_every=0, checkpoint_every=0, methods=["adf-lora"], switch_interval=8, seeds=2,
        per_client_init=True, threads=1,   # A differs per client, frozen and gossiped
        topology={"graph": "ring"}, gossip={"staleness": 1}))
    run_glue(cfg, tmp_path)
    meta_ = json.loads((tmp_path / "meta.json").read_text())
    assert meta_["kind"] == "glue" and meta_["gossip"]["staleness"] == 1
    assert 0 < meta_["async_rate"]["rate"] < 1
    seven = [r for r in run_checks(tmp_path, entry_points=False)
             if r.check == "stale-gossip-rate"]
    assert seven and all(r.status != "n/a" for r in seven), [(r.status, r.note) for r in seven]


def test_adding_the_testbed_touched_only_this_file():
    users = sorted(str(p.relative_to(ROOT)) for d in ("adflora_analysis", "tests", "docs")
                   for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md", ".toml")
                   and KIND in p.read_text(errors="replace"))
    assert users == ["tests/test_testbed.py"]


def test_shipped_kinds_are_declarations():
    for kind, tables in (("synthetic", {"mixing", "constants"}), ("glue", {"eval", "summary"}),
                         ("lm", {"eval", "summary"})):
        tb = get_testbed(kind)
        assert tb.kind == kind and tables <= set(tb.tables) and "gossip-contraction" in tb.checks
    assert get_testbed("lm").meta is get_testbed("glue").meta   # shared through the declaration


def test_a_testbeds_declared_checks_are_the_built_ins_that_judge_its_runs():
    """The declaration and the registry agree: no built-in check judges a kind that did not
    declare it, and every declared one does."""
    from adflora_analysis.theory import REGISTRY

    for kind in ("synthetic", "glue", "lm"):
        tb = get_testbed(kind)
        judged = {n for n, c in REGISTRY.items() if c.builtin and kind in c.kinds}
        assert judged == set(tb.checks), (kind, judged ^ set(tb.checks))


# --- bad input: one line each -----------------------------------------------------------------


def one_line(e: pytest.ExceptionInfo) -> str:
    text = f"error: {e.value}"
    assert "\n" not in text and "(hint: " in text
    return text


def test_registered_twice_is_one_line(toy):
    with pytest.raises(AdfloraError, match=f"testbed '{KIND}' is registered twice") as e:
        register_testbed(Testbed(KIND, DriftConfig, build=build))
    one_line(e)


def test_a_table_that_does_not_exist_is_one_line():
    with pytest.raises(AdfloraError, match="declares table 'evals'.*did you mean 'eval'") as e:
        register_testbed(Testbed(KIND, DriftConfig, build=build, tables=("metrics", "evals")))
    one_line(e)
    with pytest.raises(AdfloraError, match=f"unknown run kind '{KIND}'"):
        get_testbed(KIND)   # nothing was registered


def test_a_check_that_does_not_exist_is_one_line_at_first_use():
    register_testbed(Testbed(KIND, DriftConfig, build=build, checks=("gossip-contractoin",)))
    try:
        with pytest.raises(AdfloraError, match="declares check 'gossip-contractoin'.*did you "
                           "mean 'gossip-contraction'") as e:
            get_testbed(KIND)
        one_line(e)
    finally:
        unregister_testbed(KIND)


def test_an_unknown_kind_is_one_line(tmp_path):
    from adflora_analysis.rundir import init_run_dir, make_meta

    with pytest.raises(AdfloraError, match="unknown run kind 'glu'.*did you mean 'glue'") as e:
        run_testbed("glu", drift(), tmp_path / "x")
    one_line(e)
    init_run_dir(tmp_path / "foo", {"rounds": 3}, make_meta([0], kind="foo", status="done"))
    with pytest.raises(AdfloraError, match="unknown run kind 'foo'") as e:
        of_run(tmp_path / "foo")
    one_line(e)
    assert not (tmp_path / "x").exists()


def test_a_config_of_another_kind_is_one_line(tmp_path):
    with pytest.raises(AdfloraError, match="a glue run needs a GlueConfig") as e:
        run_testbed("glue", drift(), tmp_path)
    one_line(e)
