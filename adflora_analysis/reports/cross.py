"""The cross terms themselves: the n × n matrix ‖B_i A_j‖_F of a run, read from its checkpoints.

A run keeps the factors only in its checkpoints (``checkpoints/<job>.r<round>.rank0.pt``; the
runner keeps the last two per job), so the rounds shown are the checkpoint rounds present; a
run without checkpoints (``checkpoint_every = 0``) has no matrix. Per layer,
‖B_i A_j‖_F² = ⟨B_iᵀB_i, A_jA_jᵀ⟩ (two r × r Gram matrices), summed over layers; seeds of a
batched job are averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError


def cross_matrix(A: list, B: list):
    """‖B_i A_j‖_F over all layers, averaged over leading batch (seed) axes.

    ``A[l]``: ``(*batch, n, r, d_in)``, ``B[l]``: ``(*batch, n, d_out, r)``; returns an
    ``(n, n)`` numpy array, entry ``[i, j]`` for ``B_i A_j``.

    >>> import torch
    >>> A = [torch.eye(2).repeat(3, 1, 1)]; B = [torch.eye(2).repeat(3, 1, 1)]
    >>> cross_matrix(A, B).round(3).tolist()[0]
    [1.414, 1.414, 1.414]
    """
    import torch

    total = None
    for a, b in zip(A, B, strict=True):
        a, b = a.double(), b.double()
        G = b.transpose(-1, -2) @ b          # (*batch, n, r, r): B_iᵀ B_i
        H = a @ a.transpose(-1, -2)          # (*batch, n, r, r): A_j A_jᵀ
        sq = torch.einsum("...ipq,...jpq->...ij", G, H)
        total = sq if total is None else total + sq
    M = total.clamp_min(0).sqrt()
    while M.dim() > 2:
        M = M.mean(0)
    return M.numpy()


def _factors(ck: dict, f: Path) -> tuple[list, list, int]:
    """``(A, B, n)`` of a checkpoint's state, checked to be what :func:`cross_matrix` needs
    (lists of tensors of matching shapes); anything else is one line naming the file."""
    import torch

    st = ck.get("state")
    A, B = (st.get("A"), st.get("B")) if isinstance(st, dict) else (None, None)
    ok = (isinstance(A, list) and isinstance(B, list) and len(A) == len(B) > 0
          and all(isinstance(t, torch.Tensor) and t.dim() >= 3 and t.is_floating_point()
                  for t in (*A, *B)))
    if ok:
        n = A[0].shape[-3]
        ok = all(a.shape[-3] == b.shape[-3] == n and a.shape[-2] == b.shape[-1]
                 and a.shape[:-3] == b.shape[:-3] for a, b in zip(A, B, strict=True))
    if not ok:
        raise AdfloraError(f"checkpoint {str(f)!r} is not an adflora checkpoint (no factor "
                           "lists A and B of matching shapes)",
                           "it was not written by adflora or was altered: delete it")
    return A, B, int(n)


def cross_matrices(run_dir: str | Path, metrics: pd.DataFrame | None = None,
                   max_clients: int = 64) -> pd.DataFrame | None:
    """Tidy ``(method, round, i, j, value)`` of every rank-0 checkpoint of a single-process
    run (None without checkpoints). ``metrics`` maps job keys to methods (and picks the first
    study variant's jobs); runs with more than ``max_clients`` clients are skipped.

    Checkpoints are listed and read by the run directory's reading API
    (:meth:`adflora_analysis.rundir.RunDir.checkpoints`, tensors only: nothing in a file is
    executed); a damaged, foreign or linked one is one :class:`AdfloraError` naming it."""
    from adflora_analysis.rundir import RunDir

    run = RunDir(run_dir, writer=False)
    files = run.checkpoints(rank=0)
    if not files:
        return None
    method_of, keep = {}, None
    if metrics is not None and {"job", "method"} <= set(metrics):
        jm = metrics[["job", "method"] + (["variant"] if "variant" in metrics else [])]
        jm = jm.drop_duplicates("job")
        if "variant" in jm and jm["variant"].nunique() > 1:
            jm = jm[jm["variant"] == jm["variant"].iloc[0]]
        method_of = dict(zip(jm["job"], jm["method"], strict=True))
        keep = set(method_of)
    rows = []
    for f in files:
        ck = run.load_checkpoint(f)
        if ck is None:       # removed since the listing (a run still going)
            continue
        if ck.get("world_size", 1) != 1:
            return None
        job = ck.get("job", f.job)
        job = job if isinstance(job, str) else f.job
        if keep is not None and job not in keep:
            continue
        A, B, n = _factors(ck, f.path)
        if n > max_clients:
            return None
        M = cross_matrix(A, B)
        t = ck.get("round", f.round)
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        rows.append(pd.DataFrame({"method": method_of.get(job, job.split("/")[0]),
                                  "job": job, "round": int(t) if isinstance(t, int) else
                                  f.round,
                                  "i": ii.ravel(), "j": jj.ravel(), "value": M.ravel()}))
    if not rows:
        return None
    df = pd.concat(rows, ignore_index=True)
    # GLUE runs one seed per job: average the seeds' matrices of a method
    return df.groupby(["method", "round", "i", "j"], as_index=False)["value"].mean()
