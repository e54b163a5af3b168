"""Run a causal-LM study into a run directory (kind ``lm``), with the GLUE runner's machinery:
:class:`LmStudy` is a :class:`~adflora_analysis.glue.runner.GlueStudy` (the same jobs, mixers,
schedules, samplers, checkpoints, resume and torch.distributed handling through
:func:`adflora_analysis.study.experiment.run_jobs`) whose data are texts, whose model is a
:class:`~adflora_analysis.lm.model.LmModel` and whose evaluation is next-token loss and
perplexity. The run directory holds what a GLUE run's does (``config.toml``, ``meta.json``,
``label_counts.csv`` (per-client counts of the skewed column), ``metrics``, ``eval``,
``summary.csv``, ``checkpoints/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.runner import GlueStudy, studies_built, summarize, variant_studies
from adflora_analysis.lm.config import LmConfig
from adflora_analysis.lm.data import LmTask, encode_lm, load_lm_data
from adflora_analysis.lm.model import LmModel, Resolved, model_facts, preflight
from adflora_analysis.lm.problem import eval_rows
from adflora_analysis.study.runconfig import expand_study
from adflora_analysis.study.testbed import BuildContext, Built

__all__ = ["LmStudy", "run_lm", "summarize"]


def _model_key(cfg: LmConfig) -> tuple:
    """Variants with equal keys share one loaded base model."""
    return (cfg.model, cfg.rank, cfg.lora_alpha, cfg.dropout, tuple(cfg.lora_targets),
            cfg.lora_mlp, cfg.dtype, cfg.gradient_checkpointing, cfg.device)


class LmStudy(GlueStudy):
    """Data, encodings, partitions and the shared model of one variant of an LM study."""

    VARIANT_META_KEYS = ("data", "model", "switch_interval", "topology", "p")

    def __init__(self, cfg: LmConfig, gm: LmModel | None = None, backend: Backend = LOCAL,
                 variant: str | None = None, res: Resolved | None = None):
        self.cfg, self.backend, self.variant = cfg, backend, variant
        self.task = LmTask()   # label_names: the skewed column's values, set below
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        res = res or preflight(cfg)         # every bad input before data or weights
        self.data = load_lm_data(cfg)
        self.gm = gm if gm is not None else LmModel(cfg, res)
        tok = self.gm.tokenizer
        self.train = encode_lm(tok, self.data.train, cfg.max_length)
        self.val = {s: encode_lm(tok, df, cfg.max_length) for s, df in self.data.val.items()}
        self.task.label_names = tuple(self.data.skew_names)
        self.partition(self.data.skew, len(self.data.skew_names), "texts")

    eval_metric = "perplexity"

    def eval_rows(self, problem, res) -> list[dict]:
        """Next-token loss and perplexity of every client, their mean and the averaged adapter
        (:func:`adflora_analysis.lm.problem.eval_rows`)."""
        rows = eval_rows(problem, res.state, self.val, t=res.t,
                         batch_size=self.cfg.eval_batch_size)
        if self.variant is not None:
            rows = [{"variant": self.variant, **r} for r in rows]
        return rows

    def meta(self) -> dict[str, Any]:
        meta = super().meta()
        meta["model"].update(model_facts(self.gm))
        meta["data"].update(skew_by=self.cfg.skew_by, skew_values=self.data.skew_names,
                            train_tokens=self.train.tokens(),
                            val_tokens={k: v.tokens() for k, v in self.val.items()})
        return meta


def _studies(cfg: LmConfig, gm: LmModel | None, backend: Backend) -> list[LmStudy]:
    """One :class:`LmStudy` per variant; variants that need the same model share one. Every
    variant is checked (:func:`preflight`) before any is built."""
    checked = {label: preflight(v) for label, v in expand_study(cfg)}
    first = next(iter(checked))
    return variant_studies(cfg, backend, lambda v, label, m: LmStudy(
        v, m, backend, label, checked[label or first]), _model_key, gm)


def build(cfg: LmConfig, ctx: BuildContext) -> Built:
    """The LM testbed's build: texts, models and jobs of every variant (option ``gm``: a
    loaded :class:`LmModel`), through the GLUE testbed's :func:`studies_built`."""
    return studies_built(_studies(cfg, ctx.options.get("gm"), ctx.backend), ctx)


def needs(cfg: LmConfig, out: Path, backend: Backend = LOCAL) -> None:
    """The device and, per variant, the planner's memory estimate (:func:`refuse_over_memory`)
    before the run directory is touched."""
    from adflora_analysis.resources import check_device

    check_device(cfg.device)
    for _, v in expand_study(cfg):   # bad input: one line before the run directory is touched
        refuse_over_memory(v, preflight(v), backend.world_size)


def refuse_over_memory(cfg: LmConfig, res, world_size: int = 1) -> None:
    """One :class:`AdfloraError` when the planner (:mod:`adflora_analysis.plan`, from the
    model's config alone) predicts more memory than this process can have: the least of the
    machine's, the cgroup's and ``ulimit -v``'s room on the CPU, the GPU's total memory on
    CUDA. Each process holds ``ceil(n_clients / world_size)`` clients."""
    import math

    from adflora_analysis.plan import GIB, PlanInput, arch_from_config, make_plan

    if cfg.device.startswith("cuda"):
        import torch

        room = torch.cuda.get_device_properties(torch.device(cfg.device)).total_memory
        device = "h100"
    else:
        from adflora_analysis.resources import available_memory

        room, device = available_memory(), "cpu"
    inp = PlanInput(model=cfg.model, clients=math.ceil(cfg.n_clients / world_size),
                    rank=cfg.rank, batch=cfg.batch_size, seq=cfg.max_length, device=device,
                    dtype=cfg.dtype, targets=tuple(res.targets),
                    gradient_checkpointing=cfg.gradient_checkpointing,
                    local_steps=cfg.local_steps, optimizer_reset=cfg.optimizer_reset,
                    lora_dropout=cfg.dropout)
    p = make_plan(inp, arch=arch_from_config(res.config.to_dict(), cfg.model),
                  device_bytes=int(room), peak_flops=1e9)
    need = p.fixed_bytes + inp.clients * p.per_client_bytes
    if need > room:
        raise AdfloraError(f"this lm study needs about {need / GIB:.1f} GiB per process "
                           f"(planner: {inp.clients} clients of {cfg.model}, batch "
                           f"{cfg.batch_size} x seq {cfg.max_length}, {cfg.dtype}) but "
                           f"{room / GIB:.1f} GiB is available",
                           "see `adflora plan CONFIG`; lower batch_size or max_length, set "
                           "gradient_checkpointing = true, or spread the clients over "
                           "processes (torchrun)")


def run_lm(cfg: LmConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
           progress: bool | None = None, stop_after: int | None = None, log: bool = False,
           gm: LmModel | None = None, backend: Backend = LOCAL,
           callbacks: list[Any] | None = None) -> pd.DataFrame:
    """Run (or resume) the LM study ``cfg`` into ``out``; return
    :func:`~adflora_analysis.glue.runner.summarize`'s table (per method and seed: the last
    round's xi_A, xi_B, cross_term, ... and ``mean_perplexity`` / ``averaged_perplexity``).

    Arguments as :func:`adflora_analysis.glue.runner.run_glue` (``stop_after``: stop after
    that many rounds in total, as a kill would; rank 0 alone writes under torch.distributed).
    """
    from adflora_analysis.study.sequence import run_testbed

    return run_testbed("lm", cfg, out, resume=resume, overwrite=overwrite, progress=progress,
                       stop_after=stop_after, backend=backend, callbacks=callbacks, log=log,
                       gm=gm)
