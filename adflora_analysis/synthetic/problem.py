"""The synthetic quadratic LoRA problem (docs/architecture.md §6), batched over seeds, clients and
layers.

Client i, layer l (every layer has its own data; the loss is the sum over layers)::

    f_i(A, B) = (1/2m) || X_i (W0 + s B A)^T - Y_i ||_F^2,
    Y_i = X_i (W0 + T_i)^T + label_noise * E_i,    T_i = (1 - h) dW* + h dW_i*.

W0 cancels: with R_i = Y_i - X_i W0^T = X_i T_i^T + label_noise E_i and P = s B A,
``f_i = 1/2 tr(P S_i P^T) - <P, C_i> + c_i`` where ``S_i = X_i^T X_i / m``,
``C_i = R_i^T X_i / m`` and ``c_i = ||R_i||^2 / 2m``. Full-batch gradients use these sufficient
statistics at O(r d^2) per client and step (never forming P):

    grad_B = s (s B (A S A^T) - C A^T),     grad_A = s (s (B^T B)(A S) - B^T C).

Minibatch gradients use ``batch_size`` rows of (X_i, R_i) drawn uniformly *with* replacement
(i.i.d., as in the theory's stochastic-gradient model) every step.
Additive noise adds N(0, noise / P) to every coordinate of the gradient of one client's P
parameters (A and B of every layer), so E||xi||^2 = noise = sigma^2 exactly.

This module holds the data, the SGD step and the method's part of ``evaluate`` (the loss and
gradient at the averaged model); what the theory checks read besides (descent terms, variances,
norms, per-client terms) is :mod:`.bookkeeping`, computed only for the selected checks
(``checks``, ``measure_every``). From ``PARTIAL_SUM_MIN_N`` clients the minibatch step runs in
client chunks with flat batched matmuls, fused with its update when no check reads the step's
gradients, and a float32 run's bookkeeping passes run in float32 with float64 sums.

Shapes: S seeds (batch axis), n clients, L layers. The state's per-layer tensors are
``A[l]: (S, n, r, d_in)`` and ``B[l]: (S, n, d_out, r)``; inside a round the layers are stacked as
``(S, n, L, ...)`` so one batched matmul covers everything. Every random draw is keyed by
``(seed, stream, counters)`` (:mod:`adflora_analysis.seeding`), so a seed's numbers do not depend
on which other seeds share the batch, and a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from adflora_analysis.core.backend import LOCAL, Backend
from adflora_analysis.core.displacement import DisplacementStats
from adflora_analysis.core.loop import Problem
from adflora_analysis.core.metrics import PARTIAL_SUM_MIN_N
from adflora_analysis.core.reduce import (
    client_chunks,
    client_max,
    client_means,
    consensus_errors,
    process_sums,
)
from adflora_analysis.core.state import LoraState
from adflora_analysis.resources import reuse_large_allocations
from adflora_analysis.seeding import torch_generator
from adflora_analysis.synthetic.bookkeeping import (
    CLIENT_TERMS,
    DESCENT,
    EVAL_SCHEDULED,
    LOCAL_SCHEDULED,
    SCHEDULED,
    Columns,
    QuadraticBookkeeping,
    cross_term_direct,
)
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.rows import Rows

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _orthonormal(g: torch.Generator, shape: tuple[int, ...], k: int, dtype) -> Tensor:
    """(*shape, d, k) with orthonormal columns (QR of a Gaussian)."""
    Z = torch.randn(*shape, k, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(Z)
    return (Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1)).unsqueeze(-2)).to(dtype)


def _low_rank_factors(g: torch.Generator, batch: tuple[int, ...], d_out: int, d_in: int,
                      rank: int, dtype) -> tuple[Tensor, Tensor]:
    """U (*batch, d_out, rank), V (*batch, d_in, rank) with orthonormal columns: the factors of
    :func:`_low_rank` (same draws)."""
    U = _orthonormal(g, (*batch, d_out), rank, dtype)
    V = _orthonormal(g, (*batch, d_in), rank, dtype)
    return U, V


def _low_rank(g: torch.Generator, batch: tuple[int, ...], d_out: int, d_in: int, rank: int,
              norm: float, dtype) -> Tensor:
    """Random rank-``rank`` matrices (*batch, d_out, d_in) with equal singular values and
    Frobenius norm ``norm``."""
    U, V = _low_rank_factors(g, batch, d_out, d_in, rank, dtype)
    return (norm / math.sqrt(rank)) * U @ V.transpose(-1, -2)


class QuadraticProblem(QuadraticBookkeeping, Problem):
    """Data, local updates and evaluation of the quadratic LoRA problem for a batch of seeds.

    Implements the :class:`adflora_analysis.core.loop.Problem` protocol. Besides ``loss`` and
    ``grad_norm_sq`` at the averaged model, :meth:`evaluate` reports what the theory checks need
    (see :meth:`evaluate`), and the problem keeps running maxima of the factor norms (part of its
    checkpointed :meth:`state_dict`) for the smoothness bound of :mod:`.constants`.
    """

    def __init__(self, cfg: SyntheticConfig, seeds: Sequence[int] | None = None,
                 backend: Backend = LOCAL):
        self.cfg = cfg
        # Under torch.distributed this process holds and steps only its clients ``self.sl``: the
        # data of every client is generated everywhere (same streams, so the same numbers as
        # in-process), its averaged statistics and per-client constants kept, then only this
        # process's rows. Every quantity over all clients is a reduction of per-process partial
        # sums or maxima (``_csums``, ``_cmeans``, ``_cxis``, ``_cmax``): no factor is ever
        # gathered.
        self.backend = backend
        self.sl = backend.client_slice(cfg.n_clients)
        self.seeds = list(seeds if seeds is not None else cfg.seed_list)
        self.dtype = _DTYPES[cfg.dtype]
        self.device = torch.device(cfg.device)
        self.s = cfg.scale
        self.n, self.L, self.r = cfg.n_clients, cfg.n_layers, cfg.rank
        if self.n >= PARTIAL_SUM_MIN_N and self.device.type == "cpu":
            reuse_large_allocations()   # no fresh mmap + page faults per round (resources.py)
        self._make_data()
        S = len(self.seeds)
        self.max_fro_A = torch.zeros(S, self.L, dtype=torch.float64, device=self.device)
        self.max_fro_B = torch.zeros_like(self.max_fro_A)
        self.steps = steps_per_client(cfg.local_steps, cfg.gossip.speed_spread, self.seeds,
                                      cfg.n_clients)            # (S, n) or None
        self.K_run = cfg.local_steps if self.steps is None else int(self.steps.max())
        self._step_on = None if self.steps is None else self.steps[:, self.sl].to(self.device)
        self.columns = Columns.of(cfg)   # what the selected checks read (config checks, ...)
        # NaN by design on a round not measured (measure_every > 1); the run driver's
        # finiteness check allows NaN in these columns there and nowhere else
        self.thinned_columns = frozenset(SCHEDULED)
        # float64 bookkeeping passes (else the run's float32 with float64 sums over clients;
        # benchmarks/synthetic.py measures the difference)
        self.exact_bookkeeping = self.dtype == torch.float64 or self.n < PARTIAL_SUM_MIN_N

    # ------------------------------------------------------------------ data
    def _make_data(self) -> None:
        c = self.cfg
        if c.client_storage == "rows":
            self._make_rows()
            return
        n, L, m, di, do = c.n_clients, c.n_layers, c.samples_per_client, c.d_in, c.d_out
        Xs, Rs, Ts = [], [], []
        for seed in self.seeds:
            g = torch_generator(seed, "data")
            dW = _low_rank(g, (L,), do, di, c.target_rank, c.target_norm, torch.float64)
            dWi = _low_rank(g, (n, L), do, di, c.target_rank, c.target_norm, torch.float64)
            T = (1 - c.heterogeneity) * dW.unsqueeze(0) + c.heterogeneity * dWi  # (n, L, do, di)
            X = torch.randn(n, L, m, di, generator=g, dtype=torch.float64)
            E = torch.randn(n, L, m, do, generator=g, dtype=torch.float64)
            R = X @ T.transpose(-1, -2) + c.label_noise * E
            Xs.append(X)
            Rs.append(R)
            Ts.append(T)
        X = torch.stack(Xs).to(self.device)        # (S, n, L, m, di)
        R = torch.stack(Rs).to(self.device)        # (S, n, L, m, do)
        self.targets = torch.stack(Ts).to(self.device)
        Sig = X.transpose(-1, -2) @ X / m           # (S, n, L, di, di)
        C = R.transpose(-1, -2) @ X / m             # (S, n, L, do, di)
        c0 = R.pow(2).sum((-2, -1)) / (2 * m)       # (S, n, L)
        # exact constants of the data, in float64
        self.lam_sigma = torch.linalg.eigvalsh(Sig).amax(-1)       # (S, n, L)
        self.norm_C = torch.linalg.matrix_norm(C, ord=2)            # (S, n, L)
        self.Sig_bar64, self.C_bar64, self.c_bar64 = Sig.mean(1), C.mean(1), c0.mean(1)
        self.lam_sigma_bar = torch.linalg.eigvalsh(self.Sig_bar64).amax(-1)   # (S, L)
        self.norm_C_bar = torch.linalg.matrix_norm(self.C_bar64, ord=2)      # (S, L)
        self.f_star = self._f_star()                                # (S,)
        dt = self.dtype
        self.X, self.R = X.to(dt), R.to(dt)
        self.XR = torch.cat([self.X, self.R], -1).contiguous()   # one row gather per step
        self.Sig, self.C, self.c0 = Sig.to(dt), C.to(dt), c0
        self.Sig_bar, self.C_bar = self.Sig_bar64.to(dt), self.C_bar64.to(dt)
        if self.backend.world_size > 1:     # keep this process's clients only
            sl, di = self.sl, c.d_in
            self.XR = self.XR[:, sl].contiguous()
            self.X, self.R = self.XR[..., :di], self.XR[..., di:]
            self.Sig, self.C = self.Sig[:, sl].contiguous(), self.C[:, sl].contiguous()
            self.c0, self.targets = self.c0[:, sl].contiguous(), self.targets[:, sl].contiguous()

    def _make_rows(self) -> None:
        """``client_storage = "rows"``: the same data as :meth:`_make_data` (same draws) kept as
        each client's rows (X_i, R_i) only (:class:`.rows.Rows`): no d x d matrix per client is
        ever formed (T_i = (1 - h) dW* + h dW_i* enters R_i through its factors). The averaged
        statistics and the per-client constants come from client chunks in float64."""
        c = self.cfg
        n, L, m, di, do = c.n_clients, c.n_layers, c.samples_per_client, c.d_in, c.d_out
        h, k = c.heterogeneity, c.target_rank
        S, dev, dt = len(self.seeds), self.device, self.dtype
        lo, hi = self.sl.start, self.sl.stop           # the rows kept: this process's clients
        XR = torch.empty(S, hi - lo, L, m, di + do, dtype=dt, device=dev)
        lam, normC, c0 = (torch.empty(S, n, L, dtype=torch.float64, device=dev)
                          for _ in range(3))
        Sig_sum = torch.zeros(S, L, di, di, dtype=torch.float64, device=dev)
        C_sum = torch.zeros(S, L, do, di, dtype=torch.float64, device=dev)
        for j, seed in enumerate(self.seeds):
            g = torch_generator(seed, "data")
            dW = _low_rank(g, (L,), do, di, k, c.target_norm, torch.float64)
            U, V = _low_rank_factors(g, (n, L), do, di, k, torch.float64)
            X = torch.randn(n, L, m, di, generator=g, dtype=torch.float64)
            R = torch.randn(n, L, m, do, generator=g, dtype=torch.float64).mul_(c.label_noise)
            for sl in client_chunks(n, L * m * (di + do)):
                Xc = X[sl].to(dev)
                Rc = R[sl].to(dev).add_(
                    (1 - h) * Xc @ dW.to(dev).transpose(-1, -2)
                    + (h * c.target_norm / math.sqrt(k)) * (Xc @ V[sl].to(dev))
                    @ U[sl].to(dev).transpose(-1, -2))
                rows = Rows(Xc, Rc)
                lam[j, sl], normC[j, sl] = rows.spectral()
                c0[j, sl] = Rc.pow(2).sum((-2, -1)) / (2 * m)
                Sc, Cc = rows.sums()
                Sig_sum[j] += Sc
                C_sum[j] += Cc
                a, b = max(sl.start, lo), min(sl.stop, hi)
                if a < b:
                    XR[j, a - lo:b - lo, ..., :di] = Xc[a - sl.start:b - sl.start]
                    XR[j, a - lo:b - lo, ..., di:] = Rc[a - sl.start:b - sl.start]
            del X, R, U, V
        self.XR = XR
        self.X, self.R = XR[..., :di], XR[..., di:]
        self.lam_sigma, self.norm_C, self.c0 = lam, normC, c0[:, lo:hi]
        self.Sig_bar64, self.C_bar64, self.c_bar64 = Sig_sum / n, C_sum / n, c0.mean(1)
        self.lam_sigma_bar = torch.linalg.eigvalsh(self.Sig_bar64).amax(-1)   # (S, L)
        self.norm_C_bar = torch.linalg.matrix_norm(self.C_bar64, ord=2)      # (S, L)
        self.f_star = self._f_star()                                # (S,)
        self.Sig_bar, self.C_bar = self.Sig_bar64.to(dt), self.C_bar64.to(dt)
        # per-client products go through the rows: Sig is a Rows, C is unused (None)
        self.Sig, self.C = Rows(self.X, self.R), None

    def _f_star(self) -> Tensor:
        """min over rank-<=r P of f(P) = 1/2 tr(P S P^T) - <P, C> + c (S, C, c averaged over
        clients), per seed: reduced-rank regression. With Q = C S^{-1/2},
        f(P) = 1/2 ||P S^{1/2} - Q||^2 - 1/2 ||Q||^2 + c, so f* = c - 1/2 sum_{j<=r} sigma_j(Q)^2
        (Eckart-Young; pseudo-inverse root where S is singular, C lies in its range)."""
        lam, V = torch.linalg.eigh(self.Sig_bar64)
        tol = lam.amax(-1, keepdim=True) * 1e-12
        inv_sqrt = torch.where(lam > tol, lam.clamp_min(1e-300).rsqrt(), torch.zeros_like(lam))
        Q = self.C_bar64 @ (V * inv_sqrt.unsqueeze(-2)) @ V.transpose(-1, -2)
        sv = torch.linalg.svdvals(Q)[..., : self.r]
        return (self.c_bar64 - 0.5 * sv.pow(2).sum(-1)).sum(-1)

    # ------------------------------------------------------------------ state
    def initial_state(self) -> LoraState:
        """A^0 ~ U(-b, b), b = init_scale / sqrt(d_in), shared by all clients (per client
        with ``per_client_init``), from stream (seed, "init-A", layer); B^0 = 0
        (docs/architecture.md §2)."""
        c = self.cfg
        b = c.init_scale / math.sqrt(c.d_in)
        A, B = [], []
        for li in range(self.L):
            per_seed = []
            for seed in self.seeds:
                g = torch_generator(seed, "init-A", li)
                shape = (self.n, self.r, c.d_in) if c.per_client_init else (1, self.r, c.d_in)
                a = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * b
                per_seed.append(a.expand(self.n, -1, -1))
            A.append(torch.stack(per_seed).to(self.device, self.dtype).contiguous())
            B.append(torch.zeros(len(self.seeds), self.n, c.d_out, self.r, dtype=self.dtype,
                                 device=self.device))
        full = LoraState(A, B, [f"layer{i}" for i in range(self.L)])
        self.f_inf_B = self._min_over_B(torch.stack(A, 2).mean(1).double())
        if self.backend.world_size == 1:
            return full
        return full.map_blocks(lambda X: X[:, self.sl].contiguous())

    def _min_over_B(self, A: Tensor) -> Tensor:
        """min over B of f(A, B) per seed (S,) for averaged A (S, L, r, d_in): with
        M = A Sig_bar A^T and N = C_bar A^T, f = 1/2 s^2 tr(B M B^T) - s <B, N> + c, minimal at
        B = N M^+ / s with value c - 1/2 tr(N M^+ N^T) (the infimum ffa-lora can reach)."""
        M = A @ self.Sig_bar64 @ A.transpose(-1, -2)
        N = self.C_bar64 @ A.transpose(-1, -2)
        val = (N @ torch.linalg.pinv(M, hermitian=True) * N).sum((-2, -1))
        return (self.c_bar64 - 0.5 * val).sum(-1)

    # ------------------------------------------------------------------ gradients
    def full_grads(self, A: Tensor, B: Tensor, Sig: Tensor | Rows, C: Tensor | None,
                   blocks: tuple[str, ...] = ("A", "B")) -> dict[str, Tensor]:
        """Full-batch gradients from sufficient statistics (shapes broadcast over the batch), or
        through the clients' rows when ``Sig`` is a :class:`.rows.Rows` (``C`` unused)."""
        s = self.s
        if isinstance(Sig, Rows):
            return Sig.grads(s, A, B, blocks)
        AS = A @ Sig                                        # (.., r, di)
        out = {}
        if "B" in blocks:
            out["B"] = s * (s * B @ (AS @ A.transpose(-1, -2)) - C @ A.transpose(-1, -2))
        if "A" in blocks:
            out["A"] = s * (s * (B.transpose(-1, -2) @ B) @ AS - B.transpose(-1, -2) @ C)
        return out

    def _minibatch_grads(self, A: Tensor, B: Tensor, idx: Tensor, blocks: tuple[str, ...],
                         step: float | None = None) -> dict[str, Tensor]:
        """Gradients on rows ``idx`` (S, n, L, b) of every client's (X, R), client chunk by
        client chunk: a chunk's rows and residuals (about 1 MB) stay in cache from the gather
        to its gradients, instead of every client's passing through memory several times
        (measured at n = 100,000: 3.2 s a step unchunked, see benchmarks/scale.py).

        ``step`` (from :data:`PARTIAL_SUM_MIN_N` clients only): the fused SGD step, written into
        ``A``/``B`` in place chunk by chunk (X -= step * grad, while the chunk is in cache);
        returns {} then."""
        s, b = self.s, idx.shape[-1]
        m, di = self.X.shape[-2], self.X.shape[-1]
        XR = self.XR.reshape(-1, self.XR.shape[-1])
        base = torch.arange(0, XR.shape[0], m, device=idx.device).reshape(idx.shape[:-1])
        per = idx[:, :1].numel() * XR.shape[-1]          # one client's gathered rows
        if self.n >= PARTIAL_SUM_MIN_N:
            return self._minibatch_chunked(A, B, XR, idx, base, per, blocks, step)
        out = {name: (A if name == "A" else B).new_empty((A if name == "A" else B).shape)
               for name in blocks}
        # below PARTIAL_SUM_MIN_N clients one pass: the rows of the shipped studies stay
        # bit-identical (a matmul over fewer batch entries can round differently)
        ic = idx
        rows = XR.index_select(0, (ic + base.unsqueeze(-1)).flatten())
        rows = rows.reshape(*ic.shape, XR.shape[-1])
        Xb, Rb = rows[..., :di], rows[..., di:]
        Z = Xb @ A.transpose(-1, -2)                   # (.., b, r)
        E = s * Z @ B.transpose(-1, -2) - Rb           # (.., b, do)
        if "B" in blocks:
            out["B"][:] = (s / b) * E.transpose(-1, -2) @ Z
        if "A" in blocks:
            out["A"][:] = (s / b) * (E @ B).transpose(-1, -2) @ Xb
        return out

    def _minibatch_chunked(self, A: Tensor, B: Tensor, XR: Tensor, idx: Tensor, base: Tensor,
                           per: int, blocks: tuple[str, ...], step: float | None
                           ) -> dict[str, Tensor]:
        """:meth:`_minibatch_grads` from :data:`PARTIAL_SUM_MIN_N` clients: client chunks, the
        batched matmuls on flat (S c L, b, .) views (one bmm / baddbmm each, the residual
        E = s Z B^T - R in one fused call)."""
        s, b, di = self.s, idx.shape[-1], self.X.shape[-1]
        r, do = A.shape[-2], B.shape[-2]
        out = {} if step is not None else {
            name: (A if name == "A" else B).new_empty((A if name == "A" else B).shape)
            for name in blocks}
        for sl in client_chunks(idx.shape[1], per):
            ic = idx[:, sl]
            rows = XR.index_select(0, (ic + base[:, sl].unsqueeze(-1)).flatten())
            rows = rows.view(-1, b, XR.shape[-1])
            Xb, Rb = rows[..., :di], rows[..., di:]
            Ac, Bc = A[:, sl], B[:, sl]
            A3, B3 = Ac.reshape(-1, r, di), Bc.reshape(-1, do, r)
            Z = torch.bmm(Xb, A3.transpose(-1, -2))                      # (N, b, r)
            E = torch.baddbmm(Rb, Z, B3.transpose(-1, -2), beta=-1, alpha=s)   # (N, b, do)
            g = {}
            if "B" in blocks:
                g["B"] = torch.bmm(E.transpose(-1, -2), Z).view(Bc.shape)
            if "A" in blocks:
                g["A"] = torch.bmm(torch.bmm(E, B3).transpose(-1, -2), Xb).view(Ac.shape)
            for name, v in g.items():
                if step is None:
                    out[name][:, sl] = v.mul_(s / b)
                else:   # fused step: the chunk of the factor is in cache
                    (Ac if name == "A" else Bc).sub_(v, alpha=step * s / b)
        return out

    def n_params(self) -> int:
        """Parameters of one client (A and B, all layers)."""
        c = self.cfg
        return self.L * self.r * (c.d_in + c.d_out)

    # ------------------------------------------------------------------ Problem protocol
    def local_update(self, state: LoraState, blocks: tuple[str, ...], t: int,
                     disp: DisplacementStats | None = None, *,
                     train_mask: dict[str, Tensor] | None = None
                     ) -> tuple[LoraState, dict[str, Tensor]]:
        """K SGD steps with the round's step size eta_t (``lr_schedule``) on ``blocks`` for every
        seed, client and layer at once.

        ``train_mask`` (clock drift, docs/theory.md §9): ``{block: (S, n_local) bool}``, the
        clients that train a block of ``blocks``; elsewhere its gradient is zeroed, so the block
        comes back bit-identical. ``blocks`` is then the union of the blocks the clients train,
        and the measured columns below are computed for that union as if every client trained
        it (``xi_inner``, ``grad_norm_sq_inner``, ``sn_gbar_sq``, ``sn_drift``,
        ``sn_curv_left``), except ``gamma_*`` and, for a joint step, ``sn_curv_right`` and
        ``L_block``, which use the steps actually taken (zero rows included).

        Returns a new state (the trained blocks are new tensors) and what the steps measured,
        each (S,) float64 and a mean over the K inner steps unless said otherwise:

        - ``eta``: the step eta_t of the round (``lr`` is the configured eta_0);
          ``xi_inner``: the consensus error of all factors;
        - ``grad_norm_sq_inner``: ||a||^2, a = M_t grad f(x_bar) at the inner averaged model
          (M_t masks the trained blocks); ``loss_start``: f(x_bar) at the round's start;
        - ``gamma_A``/``gamma_B``: Gamma = (1/n)||(I - J) G||^2 of the clients' stochastic
          gradients of the block (0 when frozen; docs/theory.md (2.4));
        - ``sn_gbar_sq``: ||g_bar||^2, g_bar = (1/n) sum_i M_t grad f_i(x_i); ``sn_drift``:
          ||a - g_bar||^2 (exact client-drift bias); ``L_block``: the max over steps of the
          curvature L along the step; ``sn_curv_left``/``sn_curv_right``: the curvature terms of
          docs/theory.md (3.2), summed over layers with each layer's L.

        Only the columns of :attr:`columns` are computed (config ``checks``); the scheduled ones
        (:data:`.bookkeeping.SCHEDULED`) on measured rounds only (``measure_every``), NaN on the
        others. The displacement of every trained block and layer is reported to ``disp`` (a
        count alone when its consensus is not read this round); the running maxima of
        ||A_i||_F, ||B_i||_F are kept for the smoothness bound (checkpointed) when ``L_hull``
        is read."""
        from adflora_analysis.core.lr_schedules import lr_at

        c, K, cols = self.cfg, self.K_run, self.columns
        lr = lr_at(t, c.lr, c.lr_schedule, t0=c.lr_t0, rounds=c.rounds, lr_min=c.lr_min)
        A = torch.stack(state.A, 2)                          # (S, n, L, r, di)
        B = torch.stack(state.B, 2)                          # (S, n, L, do, r)
        noise = self._draw_noise(t, blocks)
        on_round = cols.measured(t)
        want = {k: on_round and cols.wants(k) for k in
                ("xi_inner", "grad_norm_sq_inner", "loss_start", "gamma_A", "gamma_B")}
        want_desc = on_round and cols.wants(*DESCENT)
        norms = cols.wants("L_hull")
        inner = want["grad_norm_sq_inner"] or want["loss_start"] or want_desc
        # from PARTIAL_SUM_MIN_N clients the minibatch step can be fused into its gradient's
        # pass (A, B are this round's fresh stacked copies: updated in place)
        fuse = (self.n >= PARTIAL_SUM_MIN_N and c.noise_kind == "minibatch" and not train_mask
                and self._step_on is None)
        z = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
        keys = [k for k in ("xi_inner", "grad_norm_sq_inner", "gamma_A", "gamma_B") if want[k]]
        keys += list(DESCENT[:4]) if want_desc else []
        acc = {k: z.clone() for k in keys}
        if want["xi_inner"]:
            xi_frozen = sum(consensus_errors(self.backend, self.n,
                                             *(X for b, X in (("A", A), ("B", B))
                                               if b not in blocks)))
        L_block = z.clone()
        loss_start = None
        for k in range(K):
            # bookkeeping at x^{t,k} (before the step): consensus and the averaged model
            if want["xi_inner"]:
                acc["xi_inner"] += xi_frozen + sum(consensus_errors(
                    self.backend, self.n, *(X for b, X in (("A", A), ("B", B)) if b in blocks)))
            if inner:
                Ab, Bb = client_means(self.backend, self.n, A, B)
                gbar = self.full_grads(Ab, Bb, self.Sig_bar, self.C_bar, blocks)
                if want["grad_norm_sq_inner"]:
                    acc["grad_norm_sq_inner"] += sum(
                        v.pow(2).flatten(1).sum(-1, dtype=torch.float64) for v in gbar.values())
            if k == 0:
                if want["loss_start"]:
                    loss_start = self._global_loss(Ab, Bb)
                if norms:
                    self._track_norms(A, B, ("A", "B"))
            elif norms:
                self._track_norms(A, B, blocks)
            g_full = None     # every client's full gradient, shared by the step and the terms
            g_step = None     # the step's gradient when the descent terms' pass computed it
            if want_desc:
                rows_terms = None
                if c.noise_kind != "minibatch" and not isinstance(self.Sig, Rows):
                    g_full = self.full_grads(A, B, self.Sig, self.C, blocks)
                elif (c.noise_kind == "minibatch" and isinstance(self.Sig, Rows)
                      and not self.exact_bookkeeping):
                    g_step, rows_terms = self._rows_step_and_descent(A, B, noise["idx"][:, k],
                                                                     blocks)
                desc = self._descent_terms(A, B, Ab, Bb, gbar, blocks, g_full, rows_terms)
            # the step
            gam = [name for name in blocks if want[f"gamma_{name}"]]
            g: dict[str, Tensor] = {}
            if g_step is not None:
                g = g_step
            elif fuse and not gam and not (want_desc and len(blocks) > 1):
                # no check reads this step's gradients: gradient and step in one pass
                self._minibatch_grads(A, B, noise["idx"][:, k], blocks, step=lr)
            elif c.noise_kind == "minibatch":
                g = self._minibatch_grads(A, B, noise["idx"][:, k], blocks)
            else:
                g = g_full if g_full is not None else self.full_grads(A, B, self.Sig, self.C,
                                                                       blocks)
                if c.noise_kind == "additive":
                    g = {name: v + noise[name][:, k] for name, v in g.items()}
            if train_mask:   # clock drift: a client steps only the block(s) of its phase
                g = {name: torch.where(train_mask[name][:, :, None, None, None], v,
                                       v.new_zeros(())) if name in train_mask else v
                     for name, v in g.items()}
            for name, xi in zip(gam, consensus_errors(self.backend, self.n,
                                                      *(g[name] for name in gam)), strict=True):
                acc[f"gamma_{name}"] += xi
            if want_desc:
                if len(blocks) > 1:     # joint step: local L along the realized averaged step
                    gmean = dict(zip(g, client_means(self.backend, self.n,
                                                     *(v.double() for v in g.values())),
                                     strict=True))
                    desc["sn_curv_right"], desc["L"] = self._path_curvature(Ab, Bb, gmean, lr)
                for key in DESCENT[:4]:
                    acc[key] += desc[key]
                L_block = torch.maximum(L_block, desc["L"])
            if self._step_on is not None:   # client i stops after its K_i steps
                on = (k < self._step_on).to(A.dtype)[:, :, None, None, None]
                g = {name: v * on for name, v in g.items()}
            if "A" in g:
                A = A - lr * g["A"]
            if "B" in g:
                B = B - lr * g["B"]
        if norms:
            self._track_norms(A, B, blocks)
            if self.backend.world_size > 1:     # the running maxima over every process's clients
                self.max_fro_A = self.backend.all_max(self.max_fro_A)
                self.max_fro_B = self.backend.all_max(self.max_fro_B)
        measured = {k: (v / K).double() for k, v in acc.items()}
        measured["eta"] = torch.full_like(z, lr)
        if want_desc:
            measured["L_block"] = L_block
        if want["loss_start"]:
            measured["loss_start"] = loss_start.double()
        # a scheduled column the checks read is NaN on the rounds not measured
        measured.update({k: torch.full_like(z, math.nan) for k in LOCAL_SCHEDULED
                         if k not in measured and cols.wants(k)})
        newA = list(A.unbind(2)) if "A" in blocks else state.A
        newB = list(B.unbind(2)) if "B" in blocks else state.B
        new = LoraState(newA, newB, list(state.layers))
        if disp is not None:
            if on_round and cols.wants("disp_A", "disp_B"):
                disp.add_states(state, new, blocks)
            else:
                for b in blocks:
                    for li in range(self.L):
                        disp.skip(b, li, A.shape[1])
        return new, measured

    def replay_sgd(self, before: dict[str, list[Tensor]], blocks: tuple[str, ...], t: int,
                   clients: Tensor, *, train_mask: dict[str, Tensor] | None = None
                   ) -> dict[str, list[Tensor]]:
        """The step audit's replay (:mod:`adflora_analysis.core.audit`; the optional method of
        the Problem protocol): round ``t``'s K SGD steps of the clients ``clients`` (S, k)
        (this process's indices) from ``before`` (``{block: [(S, k, ...) per layer]}``),
        recomputed in float64 by autograd on each client's rows (X_i, R_i): the loss
        (1/2b)||s X_b (B A)^T - R_b||^2 of the same minibatch rows (the same seeded draws;
        all m rows without minibatch noise) plus the same additive noise, at eta_t from the
        config. Returns ``{block: [(S, k, ...) per layer]}`` for ``blocks``."""
        from adflora_analysis.core.lr_schedules import lr_at

        c, K, s = self.cfg, self.K_run, self.s
        lr = lr_at(t, c.lr, c.lr_schedule, t0=c.lr_t0, rounds=c.rounds, lr_min=c.lr_min)
        ar = torch.arange(clients.shape[0], device=clients.device)[:, None]
        X = self.X[ar, clients].double()                    # (S, k, L, m, di)
        R = self.R[ar, clients].double()
        noise = self._draw_noise(t, blocks)
        P = {b: torch.stack(before[b], 2).double() for b in ("A", "B")}   # (S, k, L, ...)
        steps = None if self._step_on is None else self._step_on[ar, clients]
        with torch.inference_mode(False), torch.enable_grad():
            for k in range(K):
                if c.noise_kind == "minibatch":
                    idx = noise["idx"][:, k][ar, clients]           # (S, k, L, b)
                    Xb = X.gather(-2, idx[..., None].expand(*idx.shape, X.shape[-1]))
                    Rb = R.gather(-2, idx[..., None].expand(*idx.shape, R.shape[-1]))
                else:
                    Xb, Rb = X, R
                A = P["A"].detach().clone().requires_grad_("A" in blocks)
                B = P["B"].detach().clone().requires_grad_("B" in blocks)
                E = s * Xb @ A.transpose(-1, -2) @ B.transpose(-1, -2) - Rb
                loss = E.pow(2).sum() / (2 * Xb.shape[-2])
                grads = torch.autograd.grad(loss, [A if b == "A" else B for b in blocks])
                for b, gb in zip(blocks, grads, strict=True):
                    if c.noise_kind == "additive":
                        gb = gb + noise[b][:, k][ar, clients].double()
                    if train_mask and b in train_mask:
                        gb = gb * train_mask[b][..., None, None, None].double()
                    if steps is not None:
                        gb = gb * (k < steps).double()[..., None, None, None]
                    P[b] = P[b] - lr * gb
        return {b: list(P[b].unbind(2)) for b in blocks}

    def _draw_noise(self, t: int, blocks: tuple[str, ...]) -> dict[str, Tensor]:
        c, K = self.cfg, self.K_run
        if c.noise_kind == "minibatch":
            idx = [torch.randint(0, c.samples_per_client, (K, self.n, self.L, c.batch_size),
                                 generator=torch_generator(seed, "minibatch", t))
                   for seed in self.seeds]
            # (S, K, n_local, L, b): drawn for every client, so the numbers match in-process
            return {"idx": torch.stack(idx)[:, :, self.sl].to(self.device)}
        if c.noise_kind == "additive":
            std = math.sqrt(c.noise / self.n_params())
            shapes = {"A": (K, self.n, self.L, self.r, c.d_in),
                      "B": (K, self.n, self.L, c.d_out, self.r)}
            out = {}
            for name in blocks:
                out[name] = torch.stack([
                    std * torch.randn(*shapes[name], generator=torch_generator(seed, "noise-"
                                                                               + name, t),
                                      dtype=torch.float64) for seed in self.seeds
                ])[:, :, self.sl].to(self.device, self.dtype)
            return out
        return {}

    def _global_loss(self, Ab: Tensor, Bb: Tensor) -> Tensor:
        """f(x_bar) = (1/n) sum_i f_i at averaged factors (S, L, ...) -> (S,)."""
        return self._loss(Ab.double(), Bb.double(), self.Sig_bar64, self.C_bar64,
                          self.c_bar64).sum(-1)

    def _loss(self, A: Tensor, B: Tensor, Sig: Tensor | Rows, C: Tensor | None,
              c0: Tensor) -> Tensor:
        s = self.s
        if isinstance(Sig, Rows):
            return Sig.loss(s, A, B)
        quad = s * s * ((B.transpose(-1, -2) @ B) * (A @ Sig @ A.transpose(-1, -2))).sum(
            (-2, -1))
        lin = s * (B * (C @ A.transpose(-1, -2))).sum((-2, -1))
        return 0.5 * quad - lin + c0

    def evaluate(self, state: LoraState, t: int) -> dict[str, Tensor]:
        """Per-seed scalars after round ``t`` (all float64, shape (S,)):

        - ``loss``, ``loss_gap`` (= loss - f*), ``grad_norm_sq`` (and ``_A``/``_B``): the global
          objective f = (1/n) sum_i f_i and its full gradient at the averaged model (A_bar, B_bar);
        - ``local_loss``: (1/n) sum_i f_i(A_i, B_i);
        - ``zeta_sq``: (1/n) sum_i ||grad f_i(x_bar) - grad f(x_bar)||^2 (heterogeneity at the
          averaged model);
        - ``sigma_sq_max``/``sigma_sq_mean``: the variance of one client's stochastic gradient
          at the clients' current points (max / mean over clients; exact, not sampled);
        - ``L_hull``: the smoothness bound of :func:`.constants.smoothness_bound` over the convex
          hull of every client iterate so far.
        - ``f_inf_B``: min over B of f(A^0, B) at the initial averaged A (what ffa-lora can
          reach; theory check 5);
        - ``cross_term_direct``: C from the products B_i A_i (theory check 6i compares it with
          the loop's ``cross_term``);
        - ``measured`` (only with ``measure_every`` > 1): 1.0 on a round whose scheduled
          columns were computed, 0.0 where they are NaN.

        The loss, its gap, the gradient at the mean and ``f_inf_B`` are the method's own (every
        round, every run); the others only when :attr:`columns` reads them, the per-client ones
        on measured rounds.
        """
        from adflora_analysis.synthetic.constants import sigma_sq

        cols, c = self.columns, self.cfg
        on_round = cols.measured(t)
        per_client = on_round and cols.wants(*CLIENT_TERMS, "cross_term_direct")
        fast = not self.exact_bookkeeping and isinstance(self.Sig, Rows)
        if per_client and not fast:
            A = torch.stack(state.A, 2).double()          # this process's clients
            B = torch.stack(state.B, 2).double()
            Ab, Bb = client_means(self.backend, self.n, A, B)
        else:   # the means alone: no float64 copy of the clients' factors
            sums = process_sums(self.backend, *(
                torch.stack([x.sum(1, dtype=torch.float64) for x in X], 1)
                for X in (state.A, state.B)))
            Ab, Bb = (v / self.n for v in sums)
        g = self.full_grads(Ab, Bb, self.Sig_bar64, self.C_bar64)
        gA = g["A"].pow(2).flatten(1).sum(-1)
        gB = g["B"].pow(2).flatten(1).sum(-1)
        loss = self._global_loss(Ab, Bb)
        out = {
            "loss": loss, "loss_gap": loss - self.f_star, "grad_norm_sq": gA + gB,
            "grad_norm_sq_A": gA, "grad_norm_sq_B": gB,
        }
        if per_client and fast:     # the run's dtype; float64 only where cross_term_direct is
            A32, B32 = torch.stack(state.A, 2), torch.stack(state.B, 2)
            if cols.wants("cross_term_direct"):
                A, B = A32.double(), B32.double()
        if on_round and cols.wants(*CLIENT_TERMS):
            if fast:
                local, zeta, sig = self._client_terms_fast(A32, B32, Ab, Bb, g)
            elif isinstance(self.Sig, Rows):
                local, zeta, sig = self._client_terms(A, B, Ab, Bb, g)
            else:
                local = self._client_mean(self._loss(A, B, self.Sig.double(), self.C.double(),
                                                     self.c0).sum(-1))
                gi = self.full_grads(Ab.unsqueeze(1), Bb.unsqueeze(1), self.Sig.double(),
                                     self.C.double())
                zeta = sum((gi[k] - g[k].unsqueeze(1)).pow(2).flatten(2).sum(-1)
                           for k in ("A", "B"))
                sig = sigma_sq(self.X, self.R, self.s, A, B, noise_kind=c.noise_kind,
                               noise=c.noise, batch_size=c.batch_size)
            out.update(local_loss=local, zeta_sq=self._client_mean(zeta),
                       sigma_sq_max=client_max(self.backend, sig),
                       sigma_sq_mean=self._client_mean(sig))
        if cols.wants("L_hull"):
            out["L_hull"] = self.smoothness_bound()
        out["f_inf_B"] = self.f_inf_B
        if on_round and cols.wants("cross_term_direct"):
            out["cross_term_direct"] = cross_term_direct(A, B, self.n, Ab, Bb,
                                                         self.backend.all_sum)
        nan = torch.full_like(loss, math.nan)
        order = ["loss", "loss_gap", "grad_norm_sq", "grad_norm_sq_A", "grad_norm_sq_B",
                 *CLIENT_TERMS, "L_hull", "f_inf_B", "cross_term_direct"]
        order += [k for k in out if k not in order]
        out = {k: out.get(k, nan) for k in order
               if k in out or (k in EVAL_SCHEDULED and cols.wants(k))}
        if cols.every > 1:
            out["measured"] = torch.full_like(loss, float(on_round))
        return out

    # ------------------------------------------------------------------ checkpoints
    def stored_bytes_per_client(self) -> float:
        """Bytes of the problem's stored tensors that have a client axis (axis 1, after the
        seed axis), per client; a storage shared by several tensors counts once. What the
        memory goal of ``client_storage = "rows"`` is measured by (benchmarks/scale.py)."""
        seen, total = set(), 0
        for v in vars(self).values():
            ts = v if isinstance(v, tuple) else (v.X, v.R) if hasattr(v, "grads") else (v,)
            for t in ts:
                if isinstance(t, Tensor) and t.ndim >= 2 and t.shape[1] == self.n:
                    key = t.untyped_storage().data_ptr()
                    if key not in seen:
                        seen.add(key)
                        total += t.untyped_storage().nbytes()
        return total / self.n

    def state_dict(self) -> dict:
        return {"max_fro_A": self.max_fro_A.cpu(), "max_fro_B": self.max_fro_B.cpu()}

    def load_state_dict(self, d: dict) -> None:
        self.max_fro_A = d["max_fro_A"].to(self.device)
        self.max_fro_B = d["max_fro_B"].to(self.device)


def steps_per_client(K: int, spread: float, seeds: Sequence[int], n: int) -> Tensor | None:
    """Local steps K_i of every client (slow and fast devices), drawn once per seed and client:
    K_i = max(1, round(K exp(spread z_i))), z_i ~ N(0, 1) from the stream (seed, "speed");
    None when ``spread`` = 0 (every client makes K steps). Shape (len(seeds), n), int64.

    >>> steps_per_client(5, 0.0, [0], 3) is None
    True
    >>> k = steps_per_client(5, 0.5, [0, 1], 1000)
    >>> tuple(k.shape), int(k.min()) >= 1, 4.0 < float(k.double().median()) < 6.0
    ((2, 1000), True, True)
    """
    if spread == 0:
        return None
    z = torch.stack([torch.randn(n, generator=torch_generator(s, "speed"), dtype=torch.float64)
                     for s in seeds])
    return (K * torch.exp(spread * z)).round().clamp_min(1).long()
