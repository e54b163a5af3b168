"""Run a GLUE study into a run directory (docs/architecture.md §7, §8).

A study's ``sweep``/``variants`` (:func:`adflora_analysis.study.runconfig.expand_study`) give its
variants (e.g. one per task); each variant loads its data once (:class:`GlueStudy`) and runs one
job per (method, seed), driven by :func:`adflora_analysis.study.experiment.run_jobs` through the one
round loop. A base model is loaded once and shared by every job of every variant that needs the
same model (name, number of labels, LoRA shape, device). With more than one variant, job keys
start with the variant label and the rows of ``metrics``, ``eval``, ``label_counts`` and
``summary`` carry a ``variant`` column (``eval`` also ``task``); ``meta.json`` holds the first
variant's facts at the top and every variant's under ``variants``. The run directory holds:

    config.toml            the resolved config (after overrides)
    meta.json              versions, git revision, topology constants (p, ...), model and data facts
    label_counts.csv       per-seed, per-client label counts of the partition
    metrics.jsonl/.parquet per round and adapted layer (plus layer "all"): xi_A, xi_B,
                           cross_term, product_consensus, ..., local_loss, bytes_sent
    eval.jsonl/.parquet    every eval_every rounds: per-client, "mean" and "averaged" metrics
    summary.csv            per method and seed: the last round's xi_A, xi_B, C and eval metrics
    checkpoints/           stacked adapters (+ heads / optimizer states) every checkpoint_every
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.gossip import mixing_schedule
from adflora_analysis.core.lr_schedules import lr_at
from adflora_analysis.core.methods import get_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.config import GlueConfig
from adflora_analysis.glue.evaluate import eval_rows
from adflora_analysis.glue.model import GlueModel
from adflora_analysis.glue.partition import label_count_table, partition_indices, partition_labels
from adflora_analysis.glue.problem import GlueProblem
from adflora_analysis.glue.sources import load_data
from adflora_analysis.glue.tasks import get_task
from adflora_analysis.glue.tokenize import encode
from adflora_analysis.study.experiment import Job
from adflora_analysis.study.runconfig import expand_study
from adflora_analysis.study.testbed import BuildContext, Built


def job_key(method: str, seed: int, variant: str | None = None) -> str:
    """The job's key in rows and checkpoint names.

    >>> job_key("adf-lora", 0), job_key("lora", 2, variant="task=mnli")
    ('adf-lora/seed=0', 'task=mnli/lora/seed=2')
    """
    return f"{variant + '/' if variant else ''}{method}/seed={seed}"


def _model_key(cfg: GlueConfig) -> tuple:
    """Variants with equal keys share one loaded base model."""
    return (cfg.model, get_task(cfg.task).num_labels, cfg.rank, cfg.lora_alpha, cfg.dropout,
            tuple(cfg.target_modules), cfg.device, cfg.adapt_layers, cfg.cache_frozen_prefix)


def plan_jobs(cfg: GlueConfig) -> pd.DataFrame:
    """The jobs a study runs, without loading data or models: one row per (variant, method,
    seed) with the job key and the keys that vary.

    >>> cfg = GlueConfig(model="minilm", task="sst2", methods=["adf-lora", "lora"], seeds=2,
    ...                  sweep={"task": ["sst2", "mnli"]})
    >>> jobs = plan_jobs(cfg)
    >>> len(jobs), jobs.job[0], jobs.job.iloc[-1]
    (8, 'task=sst2/adf-lora/seed=0', 'task=mnli/lora/seed=1')
    >>> jobs.groupby("method").switch_interval.first().to_dict()
    {'adf-lora': 5, 'lora': 1}
    """
    variants = expand_study(cfg)
    multi = len(variants) > 1
    rows = []
    for label, v in variants:
        for m in v.methods:
            for s in v.seed_list:
                rows.append({"job": job_key(m, s, label if multi else None), "variant": label,
                             "task": v.task, "method": m, "seed": s,
                             "switch_interval": v.switch_for(m), "lr": v.lr,
                             "graph": v.topology.graph, "weights": v.topology.weights,
                             "q": v.topology.q, "model": v.model})
    return pd.DataFrame(rows)


def build_model(cfg: GlueConfig) -> GlueModel:
    task = get_task(cfg.task)
    return GlueModel(cfg.model, task.num_labels, rank=cfg.rank, lora_alpha=cfg.lora_alpha,
                     dropout=cfg.dropout, target_modules=cfg.target_modules, device=cfg.device,
                     adapt_layers=cfg.adapt_layers, cache_frozen_prefix=cfg.cache_frozen_prefix)


class GlueStudy:
    """Everything a GLUE run shares across its jobs: data, encodings, partitions, the model."""

    #: what ``meta.json`` keeps of every variant of a study of several (under ``variants``)
    VARIANT_META_KEYS = ("task", "data", "model", "optimizer", "switch_interval", "topology",
                         "p")

    def __init__(self, cfg: GlueConfig, run_dir: str | Path | None = None,
                 gm: GlueModel | None = None, backend: Backend = LOCAL,
                 variant: str | None = None):
        self.cfg = cfg
        self.backend = backend
        self.variant = variant  # label of this variant in a study of several (None: the only)
        self.task = get_task(cfg.task)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        fixture_dir = Path(run_dir) / "fixture" if run_dir is not None else None
        if fixture_dir is not None and variant is not None:
            fixture_dir = fixture_dir / _slug(variant)
        self.data = load_data(cfg, fixture_dir=fixture_dir)
        self.gm = gm if gm is not None else build_model(cfg)
        tok = self.gm.tokenizer
        ctx = getattr(self.gm.model.config, "max_position_embeddings", None)
        if ctx is not None and cfg.max_length > ctx:   # before anything is tokenized
            raise AdfloraError(f"max_length = {cfg.max_length} is longer than the model's "
                               f"context ({ctx} positions)", f"use max_length <= {ctx}")
        self.train = encode(tok, self.task, self.data.train, cfg.max_length)
        self.val = {s: encode(tok, self.task, df, cfg.max_length)
                    for s, df in self.data.val.items()}
        if cfg.cache_frozen_prefix:   # the frozen lower layers, once per row (glue/model.py)
            self.train = self.gm.cache_prefix(self.train, cfg.eval_batch_size)
            self.val = {s: self.gm.cache_prefix(e, cfg.eval_batch_size)
                        for s, e in self.val.items()}
        self.partition(*partition_labels(self.data.train["label"].to_numpy(),
                                         self.task.is_regression), "rows")

    def partition(self, y, n_classes: int, what: str) -> None:
        """Each seed's client partition of the training rows by the class labels ``y`` (N,)
        (:attr:`parts`; :meth:`label_counts` counts it); a client left without ``what`` is
        one error line."""
        cfg = self.cfg
        self.partition_y, self.partition_classes = y, n_classes
        self.parts = {s: partition_indices(y, cfg.n_clients, cfg.partition, s,
                                           n_classes=n_classes, alpha=cfg.dirichlet_alpha,
                                           examples_per_client=cfg.examples_per_client)
                      for s in cfg.seed_list}
        for s, parts in self.parts.items():
            empty = [i for i, p in enumerate(parts) if len(p) == 0]
            if empty:
                raise AdfloraError(f"partition {cfg.partition!r} (seed {s}) left client(s) "
                                   f"{empty} without {what}", f"use more {what} or fewer "
                                   "clients")

    def label_counts(self) -> pd.DataFrame:
        names = list(self.task.label_names) if self.task.label_names else ["low", "high"]
        df = pd.concat([label_count_table(self.partition_y, p, self.partition_classes, names,
                                          seed=s) for s, p in self.parts.items()],
                       ignore_index=True)
        if self.variant is not None:
            df.insert(0, "variant", self.variant)
        return df

    def problem(self, method: str, seed: int) -> GlueProblem:
        cfg = self.cfg
        return GlueProblem(self.gm, self.train, self.parts[seed], method=method, seed=seed,
                           local_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                           weight_decay=cfg.weight_decay, head0=self.gm.initial_head(seed),
                           train_head=cfg.train_head, optimizer_reset=cfg.optimizer_reset,
                           backend=self.backend, lr_at=partial(
                               lr_at, lr=cfg.lr, schedule=cfg.lr_schedule, t0=cfg.lr_t0,
                               rounds=cfg.rounds, lr_min=cfg.lr_min))

    def sampler(self, seed: int):
        from adflora_analysis.topology import build_sampler

        return build_sampler(self.cfg.topology, self.cfg.n_clients, seed)

    def job(self, method: str, seed: int) -> Job:
        cfg = self.cfg

        def build():
            problem = self.problem(method, seed)
            state = self.gm.initial_state(cfg.n_clients, seed, cfg.per_client_init)
            sl = self.backend.client_slice(cfg.n_clients)   # this process's clients
            if self.backend.world_size > 1:
                state = state.map_blocks(lambda X: X[sl].contiguous())
            sched = mixing_schedule(self.sampler(seed), [seed], dtype=torch.float64,
                                    sparse=False)   # the GLUE mixing indexes W^t[0]
            return problem, problem.attach_heads(state), lambda t: sched(t)[0]

        T = cfg.switch_for(method)
        extra = {"task": self.task.name, "switch_interval": T}
        if self.variant is not None:
            extra = {"variant": self.variant, **extra}
        from adflora_analysis.study.schedule_config import schedule_and_mixer

        schedule, mixer, more = schedule_and_mixer(
            cfg, self.sampler(seed) if cfg.switch_schedule == "topology" else None, [seed],
            method=method)
        extra.update(more)
        if schedule is not None:
            extra["switch_interval"] = schedule.interval
        return Job(job_key(method, seed, self.variant), get_method(method), [seed], build,
                   switch_interval=T, extra=extra, server=cfg.topology.weights == "server",
                   schedule=schedule, mixer=mixer, evaluates=self.eval_due)

    def jobs(self) -> list[Job]:
        return [self.job(m, s) for m in self.cfg.methods for s in self.cfg.seed_list]

    def eval_due(self, t: int) -> bool:
        E = self.cfg.eval_every
        return t == self.cfg.rounds - 1 or (E > 0 and (t + 1) % E == 0)

    def eval_rows(self, problem, res) -> list[dict]:
        """The ``eval`` rows of round ``res.t`` (every client, their mean and the averaged
        adapter on every validation split); a variant's carry its label and task."""
        rows = eval_rows(problem, res.state, self.task, self.val, t=res.t,
                         batch_size=self.cfg.eval_batch_size)
        if self.variant is not None:
            rows = [{"variant": self.variant, "task": self.task.name, **r} for r in rows]
        return rows

    @property
    def eval_metric(self) -> str:
        """The metric of the per-evaluation line on stderr."""
        return self.task.main_metric

    def on_round(self, log: bool = False):
        """The round hook: :meth:`eval_rows` when an evaluation is due (and, with ``log``,
        one line on stderr, through the progress bar)."""
        def cb(job, problem, res) -> dict[str, list[dict]]:
            if not self.eval_due(res.t):
                return {}
            rows = self.eval_rows(problem, res)
            if log and self.backend.rank == 0:
                from adflora_analysis.progress import echo

                echo(eval_line(job.key, res, rows, self.eval_metric))
            return {"eval": rows}

        return cb

    def meta(self) -> dict[str, Any]:
        """This variant's ``meta.json`` entries (the run sequence adds kind, seeds, versions,
        world size and the gossip entries): task, data and model facts, optimizer, T per
        method, topology constants per seed and the first seed's p."""
        from adflora_analysis.topology import topology_constants

        gm, cfg = self.gm, self.cfg
        topo = {}
        for s in cfg.seed_list:
            try:
                topo[str(s)] = topology_constants(self.sampler(s), samples=4000, seed=s)
            except AdfloraError as e:
                topo[str(s)] = {"error": str(e)}
        sizes = [len(p) for p in self.parts[cfg.seed_list[0]]]
        return dict(
            task=self.task.name,
            data={"source": self.data.source, "description": self.data.description,
                  "train_rows": len(self.data.train),
                  "val_rows": {k: len(v) for k, v in self.data.val.items()},
                  "rows_per_client_seed0": sizes},
            model={"name": cfg.model, "path": gm.path, "adapted_layers": len(gm.layers),
                   "layers": gm.layers, "adapter_bytes_per_client": gm.adapter_bytes(),
                   "head_params": list(gm.head), "head_initialised": sorted(gm.head_missing),
                   "scale": cfg.scale},
            optimizer={"name": "AdamW", "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                       "reset": cfg.optimizer_reset,
                       "note": "fresh AdamW per client per round" if cfg.optimizer_reset ==
                       "round" else "per-client AdamW state kept across rounds (not gossiped)"},
            switch_interval={m: cfg.switch_for(m) for m in cfg.methods},
            topology=topo,
            p=topo.get(str(cfg.seed_list[0]), {}).get("p"),
        )


def _slug(label: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label)


def variant_studies(cfg: Any, backend: Backend, make: Any, model_key: Any,
                    gm: Any = None) -> list[Any]:
    """One study per variant of ``cfg`` (``make(variant_cfg, label or None, model or None)``);
    variants with equal ``model_key`` share one loaded base model (``gm``, when given, serves
    the variants of ``cfg``'s own model). Shared by the GLUE and causal-LM testbeds."""
    variants = expand_study(cfg)
    if backend.world_size > 1 and {v.n_clients for _, v in variants} != {cfg.n_clients}:
        raise AdfloraError("a torch.distributed run needs one n_clients for every variant",
                           "run variants with other client counts separately")
    multi = len(variants) > 1
    models: dict[tuple, Any] = {} if gm is None else {model_key(cfg): gm}
    studies = []
    for label, vcfg in variants:
        key = model_key(vcfg)
        st = make(vcfg, label if multi else None, models.get(key))  # data, then a model
        models.setdefault(key, st.gm)
        studies.append(st)
    return studies


def _studies(cfg: GlueConfig, out: Path | None, gm: GlueModel | None,
             backend: Backend) -> list[GlueStudy]:
    """One :class:`GlueStudy` per variant of ``cfg`` (:func:`variant_studies`)."""
    return variant_studies(cfg, backend, lambda v, label, m: GlueStudy(
        v, out, gm=m, backend=backend, variant=label), _model_key, gm)


def study_meta(cfg: Any, built: Built, backend: Backend = LOCAL) -> dict[str, Any]:
    """``meta.json`` entries of a GLUE or LM run: the first variant's, plus every variant's
    facts (its study's ``VARIANT_META_KEYS``) when several."""
    studies = built.state
    metas = [st.meta() for st in studies]
    meta = metas[0]
    if len(studies) > 1:
        keys = type(studies[0]).VARIANT_META_KEYS
        meta["variants"] = {st.variant: {k: m.get(k) for k in keys}
                            for st, m in zip(studies, metas, strict=True)}
    return meta


def studies_built(studies: list[Any], ctx: BuildContext) -> Built:
    """The jobs of every study (variant), each with its study's evaluation hook, and the
    ``label_counts.csv`` table: the build shared by the GLUE and causal-LM testbeds."""
    jobs, hooks = [], {}
    for st in studies:
        cb = st.on_round(bool(ctx.options.get("log", False)))
        for job in st.jobs():
            jobs.append(job)
            hooks[job.key] = cb
    counts = pd.concat([st.label_counts() for st in studies], ignore_index=True)
    return Built(jobs, lambda job, problem, res: hooks[job.key](job, problem, res),
                 files={"label_counts.csv": counts}, state=studies)


def build(cfg: GlueConfig, ctx: BuildContext) -> Built:
    """The GLUE testbed's build: data (a fixture is written under ``fixture/`` and recorded),
    models and jobs of every variant (option ``gm``: a loaded :class:`GlueModel`)."""
    studies = _studies(cfg, ctx.out, ctx.options.get("gm"), ctx.backend)
    if ctx.backend.rank == 0 and ctx.out is not None:
        ctx.run.record(*(str(p.relative_to(ctx.out)) for p in (ctx.out / "fixture").rglob("*")
                         if p.is_file()))
    return studies_built(studies, ctx)


def needs(cfg: GlueConfig, out: Path, backend: Backend = LOCAL) -> None:
    """The device, before the run directory is touched (memory and disk: :func:`fits`)."""
    from adflora_analysis.resources import check_device

    check_device(cfg.device)


def fits(cfg: GlueConfig, built: Built, out: Path) -> None:
    """Memory and disk estimate once the data and models are loaded (:mod:`.resources`)."""
    _refuse_what_does_not_fit(built.state, out)


def eval_line(key: str, res, rows: list[dict], metric: str) -> str:
    vals = {(r["client"], r["split"]): r["value"] for r in rows if r["metric"] == metric}
    parts = [f"{c} {metric} {v:.3f}" + (f" ({s})" if s != "validation" else "")
             for (c, s), v in vals.items() if c in ("mean", "averaged")]
    xi = {k: float(v.sum()) for k, v in res.layer.items() if k in ("xi_A", "xi_B")}
    return (f"{key} round {res.t}: " + ", ".join(parts)
            + f"; xi_A {xi['xi_A']:.3g} xi_B {xi['xi_B']:.3g}")


def summarize(run_dir: str | Path) -> pd.DataFrame:
    """Per method and seed: the last round's totals (xi_A, xi_B, cross_term,
    product_consensus, local_loss) and the last evaluation's "mean"/"averaged" metrics."""
    from adflora_analysis.rundir import RunDir

    run = RunDir(run_dir, writer=False)   # read through the run directory's reading API
    m = pd.DataFrame(run.rows("metrics"))
    if m.empty:
        return m
    keys = ["variant", "method", "seed"] if "variant" in m else ["method", "seed"]
    tot = m[m["layer"] == "all"]
    last = tot.loc[tot.groupby(keys, sort=False)["round"].idxmax()]
    out = last[[*keys, "round", "xi_A", "xi_B", "cross_term", "product_consensus",
                "local_loss"]].reset_index(drop=True)
    e = pd.DataFrame(run.rows("eval"))
    if not e.empty:
        e = e[e["client"].isin(["mean", "averaged"])]
        e = e[e["round"] == e.groupby(keys)["round"].transform("max")]
        e = e.assign(col=e["client"] + "_" + e["metric"]
                     + e["split"].map(lambda s: "" if s == "validation"
                                      else "_" + s.replace("validation_", "")))
        wide = e.pivot_table(index=keys, columns="col", values="value")
        out = out.merge(wide.reset_index(), on=keys, how="left")
    return out


def run_glue(cfg: GlueConfig, out: str | Path, *, resume: bool = False,
             overwrite: bool = False, progress: bool | None = None,
             stop_after: int | None = None, log: bool = False, gm: GlueModel | None = None,
             backend: Backend = LOCAL, callbacks: list[Any] | None = None) -> pd.DataFrame:
    """Run (or resume) the study ``cfg`` (every variant x method x seed) into ``out``; return
    :func:`summarize`'s table: the run sequence of every kind
    (:func:`adflora_analysis.study.sequence.run_testbed`) with the ``glue`` testbed
    (:mod:`.testbed`).

    ``out`` must be new or empty, or this run with ``resume``, or an earlier toolkit run with
    ``overwrite`` (removes only what its manifest lists; :func:`adflora_analysis.rundir.claim`).
    The device, and a memory/disk estimate (model, batch activations, adapters, rows; see
    :mod:`adflora_analysis.resources`) are checked before training starts.
    ``stop_after`` (testing) stops after that many rounds in total, as a kill would. Under
    torch.distributed (``backend``) every process trains its clients and rank 0 alone writes
    the run directory (other processes return an empty table). ``callbacks``:
    :class:`~adflora_analysis.tracking.Callback` objects called every round (rank 0; the
    ``eval`` rows in :attr:`RoundInfo.tables <adflora_analysis.tracking.RoundInfo>`); one that
    raises stops the run, resumable (:func:`~adflora_analysis.study.experiment.run_jobs`).
    """
    from adflora_analysis.study.sequence import run_testbed

    return run_testbed("glue", cfg, out, resume=resume, overwrite=overwrite, progress=progress,
                       stop_after=stop_after, backend=backend, callbacks=callbacks, log=log,
                       gm=gm)


def _refuse_what_does_not_fit(studies: list[GlueStudy], out: Path) -> None:
    """Memory and disk estimate of the study (the largest variant's model and activations,
    every variant's rows), before training allocates anything."""
    from adflora_analysis.resources import Need, glue_need

    need = Need()
    for st in studies:
        mc = st.gm.model.config
        one = glue_need(st.cfg, hidden=mc.hidden_size, layers=mc.num_hidden_layers,
                        heads=mc.num_attention_heads, adapter_bytes=st.gm.adapter_bytes(),
                        model_bytes=sum(p.numel() * p.element_size()
                                        for p in st.gm.model.parameters()),
                        client_rows=max(len(p) for parts in st.parts.values() for p in parts))
        need.add_variant(one)
    need.refuse_if_over(out)
