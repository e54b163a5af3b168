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
from adflora_analysis.core.metrics import PARTIAL_SUM_MIN_N, consensus_error
from adflora_analysis.core.state import LoraState
from adflora_analysis.seeding import torch_generator
from adflora_analysis.synthetic.config import SyntheticConfig
from adflora_analysis.synthetic.rows import Rows, client_chunks

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


class QuadraticProblem(Problem):
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
        self._make_data()
        S = len(self.seeds)
        self.max_fro_A = torch.zeros(S, self.L, dtype=torch.float64, device=self.device)
        self.max_fro_B = torch.zeros_like(self.max_fro_A)
        self.steps = steps_per_client(cfg.local_steps, cfg.gossip.speed_spread, self.seeds,
                                      cfg.n_clients)            # (S, n) or None
        self.K_run = cfg.local_steps if self.steps is None else int(self.steps.max())
        self._step_on = None if self.steps is None else self.steps[:, self.sl].to(self.device)

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

    # ------------------------------------------------------------------ reductions over clients
    # The data and factors on this process are its clients' (all of them in-process). What the
    # bookkeeping needs over all clients is a reduction of per-process partial results: a sum,
    # a mean, a consensus error, a maximum. In-process each is the plain tensor operation (so
    # the rows of an in-process run do not change); under torch.distributed the partial results
    # of one call are reduced together, in one small all-reduce (two for consensus errors).

    def _csums(self, *xs: Tensor) -> list[Tensor]:
        """Each per-process partial result summed over processes (float64), in one all-reduce;
        in-process the inputs themselves."""
        if self.backend.world_size == 1 or not xs:
            return list(xs)
        flat = self.backend.all_sum(torch.cat([x.double().reshape(-1) for x in xs]))
        out, off = [], 0
        for x in xs:
            out.append(flat[off:off + x.numel()].reshape(x.shape))
            off += x.numel()
        return out

    def _cmeans(self, *xs: Tensor, keepdim: bool = False, dtype: torch.dtype | None = None
                ) -> list[Tensor]:
        """Means over the client axis 1 of every process's clients, each in its own dtype (or
        ``dtype``): (S, n_local, ...) -> (S, ...) (or (S, 1, ...) with ``keepdim``)."""
        if self.backend.world_size == 1:
            return [x.mean(1, keepdim=keepdim) for x in xs]
        sums = self._csums(*(x.sum(1, keepdim=keepdim, dtype=torch.float64) for x in xs))
        return [(t / self.n).to(dtype or x.dtype) for t, x in zip(sums, xs, strict=True)]

    def _cmean(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """:meth:`_cmeans` of one tensor."""
        return self._cmeans(x, keepdim=keepdim)[0]

    def _cmax(self, x: Tensor) -> Tensor:
        """Maximum over every axis but the seed axis 0 and over every process: -> (S,)."""
        m = x.flatten(1).amax(-1)
        return m if self.backend.world_size == 1 else self.backend.all_max(m)

    def _cxis(self, *Xs: Tensor) -> list[Tensor]:
        """Consensus errors (1/n) sum_i ||X_i - X_bar||^2 over the client axis 1 of every
        process's clients, each (S, n_local, ...) -> (S,) float64: in-process :func:`_xi`;
        otherwise the global means (one all-reduce for all of them) and the centred sums about
        them (a second), in client chunks (no Sum||X_i||^2 - n||X_bar||^2 cancellation, no full
        float64 copy)."""
        if self.backend.world_size == 1:
            return [_xi(X) for X in Xs]
        means = self._cmeans(*Xs, keepdim=True, dtype=torch.float64)
        tots = [sum((X[:, sl].double() - mean).pow(2).flatten(1).sum(-1)
                    for sl in client_chunks(X.shape[1], X[:, :1].numel()))
                for X, mean in zip(Xs, means, strict=True)]
        return [t / self.n for t in self._csums(*tots)]

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

    def _minibatch_grads(self, A: Tensor, B: Tensor, idx: Tensor,
                         blocks: tuple[str, ...]) -> dict[str, Tensor]:
        """Gradients on rows ``idx`` (S, n, L, b) of every client's (X, R), client chunk by
        client chunk: a chunk's rows and residuals (about 1 MB) stay in cache from the gather
        to its gradients, instead of every client's passing through memory several times
        (measured at n = 100,000: 3.2 s a step unchunked, see benchmarks/scale.py)."""
        s, b = self.s, idx.shape[-1]
        m, di = self.X.shape[-2], self.X.shape[-1]
        XR = self.XR.reshape(-1, self.XR.shape[-1])
        base = torch.arange(0, XR.shape[0], m, device=idx.device).reshape(idx.shape[:-1])
        out = {name: (A if name == "A" else B).new_empty((A if name == "A" else B).shape)
               for name in blocks}
        per = idx[:, :1].numel() * XR.shape[-1]          # one client's gathered rows
        # below PARTIAL_SUM_MIN_N clients one chunk: the rows of the shipped studies stay
        # bit-identical (a matmul over fewer batch entries can round differently)
        chunks = (client_chunks(idx.shape[1], per) if self.n >= PARTIAL_SUM_MIN_N
                  else [slice(0, idx.shape[1])])
        for sl in chunks:
            ic = idx[:, sl]
            rows = XR.index_select(0, (ic + base[:, sl].unsqueeze(-1)).flatten())
            rows = rows.reshape(*ic.shape, XR.shape[-1])
            Xb, Rb = rows[..., :di], rows[..., di:]
            Ac, Bc = A[:, sl], B[:, sl]
            Z = Xb @ Ac.transpose(-1, -2)                   # (.., b, r)
            E = s * Z @ Bc.transpose(-1, -2) - Rb           # (.., b, do)
            if "B" in blocks:
                out["B"][:, sl] = (s / b) * E.transpose(-1, -2) @ Z
            if "A" in blocks:
                out["A"][:, sl] = (s / b) * (E @ Bc).transpose(-1, -2) @ Xb
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

        The displacement of every trained block and layer is reported to ``disp``; the running
        maxima of ||A_i||_F, ||B_i||_F are kept for the smoothness bound (checkpointed)."""
        from adflora_analysis.core.lr_schedules import lr_at

        c, K = self.cfg, self.K_run
        lr = lr_at(t, c.lr, c.lr_schedule, t0=c.lr_t0, rounds=c.rounds, lr_min=c.lr_min)
        A = torch.stack(state.A, 2)                          # (S, n, L, r, di)
        B = torch.stack(state.B, 2)                          # (S, n, L, do, r)
        noise = self._draw_noise(t, blocks)
        xi_frozen = sum(self._cxis(*(X for name, X in (("A", A), ("B", B))
                                     if name not in blocks)))
        z = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
        acc = {k: z.clone() for k in ("xi_inner", "grad_norm_sq_inner", "gamma_A", "gamma_B",
                                      "sn_gbar_sq", "sn_drift", "sn_curv_left",
                                      "sn_curv_right")}
        L_block = z.clone()
        loss_start = None
        for k in range(K):
            # bookkeeping at x^{t,k} (before the step): consensus and the averaged model
            acc["xi_inner"] += xi_frozen + sum(self._cxis(*(X for name, X in (("A", A), ("B", B))
                                                            if name in blocks)))
            Ab, Bb = self._cmeans(A, B)
            gbar = self.full_grads(Ab, Bb, self.Sig_bar, self.C_bar, blocks)
            acc["grad_norm_sq_inner"] += sum(v.pow(2).flatten(1).sum(-1, dtype=torch.float64)
                                             for v in gbar.values())
            if k == 0:
                loss_start = self._global_loss(Ab, Bb)
                self._track_norms(A, B, ("A", "B"))
            else:
                self._track_norms(A, B, blocks)
            desc = self._descent_terms(A, B, Ab, Bb, gbar, blocks)
            # the step
            if c.noise_kind == "minibatch":
                g = self._minibatch_grads(A, B, noise["idx"][:, k], blocks)
            else:
                g = self.full_grads(A, B, self.Sig, self.C, blocks)
                if c.noise_kind == "additive":
                    g = {name: v + noise[name][:, k] for name, v in g.items()}
            if train_mask:   # clock drift: a client steps only the block(s) of its phase
                g = {name: torch.where(train_mask[name][:, :, None, None, None], v,
                                       v.new_zeros(())) if name in train_mask else v
                     for name, v in g.items()}
            for name, xi in zip(g, self._cxis(*g.values()), strict=True):
                acc[f"gamma_{name}"] += xi
            if len(blocks) > 1:     # joint step: local L along the realized averaged step
                gmean = dict(zip(g, self._cmeans(*(v.double() for v in g.values())),
                                 strict=True))
                desc["sn_curv_right"], desc["L"] = self._path_curvature(Ab, Bb, gmean, lr)
            for key in ("sn_gbar_sq", "sn_drift", "sn_curv_left", "sn_curv_right"):
                acc[key] += desc[key]
            L_block = torch.maximum(L_block, desc["L"])
            if self._step_on is not None:   # client i stops after its K_i steps
                on = (k < self._step_on).to(A.dtype)[:, :, None, None, None]
                g = {name: v * on for name, v in g.items()}
            if "A" in g:
                A = A - lr * g["A"]
            if "B" in g:
                B = B - lr * g["B"]
        self._track_norms(A, B, blocks)
        if self.backend.world_size > 1:     # the running maxima over every process's clients
            self.max_fro_A = self.backend.all_max(self.max_fro_A)
            self.max_fro_B = self.backend.all_max(self.max_fro_B)
        measured = {k: (v / K).double() for k, v in acc.items()}
        measured.update(eta=torch.full_like(z, lr), L_block=L_block,
                        loss_start=loss_start.double())
        newA = list(A.unbind(2)) if "A" in blocks else state.A
        newB = list(B.unbind(2)) if "B" in blocks else state.B
        new = LoraState(newA, newB, list(state.layers))
        if disp is not None:
            disp.add_states(state, new, blocks)
        return new, measured

    def _descent_terms(self, Af: Tensor, Bf: Tensor, Ab: Tensor, Bb: Tensor,
                       a: dict[str, Tensor], blocks: tuple[str, ...]) -> dict[str, Tensor]:
        """Terms of the descent step (docs/theory.md §3) at one inner step, each (S,) float64.

        ``Af``, ``Bf``: this process's clients' factors (S, n_local, L, ...) (every client
        in-process); ``Ab``, ``Bb``: the means over all clients;
        ``a``: M_t grad f(x_bar) per block (S, L, ...). One trained block: L per layer is the
        exact curvature along that block (B: s^2 lam_max(A_bar Sig_bar A_bar^T); A: s^2
        lam_max(B_bar^T B_bar) lam_max(Sig_bar)), cl = sum_l L_l ||g_bar_l||^2 and
        cr = sum_l L_l V_l / n with V_l the clients' mean gradient variance of the block."""
        s, n = self.s, self.n
        V = None
        if isinstance(self.Sig, Rows):
            gb, V = self._rows_descent(Af, Bf, blocks)
        else:
            gi = self.full_grads(Af, Bf, self.Sig, self.C, blocks)      # (S, n, L, ...)
            gb = dict(zip(gi, self._cmeans(*gi.values()), strict=True))

        def sq(v: Tensor) -> Tensor:                                     # (S, L)
            return v.double().pow(2).sum((-2, -1))

        gb_l = sum(sq(v) for v in gb.values())
        out = {"sn_gbar_sq": gb_l.sum(-1),
               "sn_drift": sum(sq(a[k] - gb[k]).sum(-1) for k in blocks)}
        if len(blocks) > 1:
            out["sn_curv_left"] = torch.zeros_like(out["sn_gbar_sq"])
            return out
        Abd, Bbd = Ab.double(), Bb.double()
        if blocks == ("B",):
            M = s * s * Abd @ self.Sig_bar64 @ Abd.transpose(-1, -2)
            L = torch.linalg.eigvalsh(M).amax(-1)                          # (S, L)
        else:
            L = s * s * torch.linalg.eigvalsh(Bbd.transpose(-1, -2) @ Bbd).amax(-1) \
                * self.lam_sigma_bar
        if V is None:
            V = self._cmean(self._block_variance(Af, Bf, blocks[0]))        # (S, L)
        out["sn_curv_left"] = (L * gb_l).sum(-1)
        out["sn_curv_right"] = (L * V / n).sum(-1)
        out["L"] = L.amax(-1)
        return out

    def _rows_descent(self, Af: Tensor, Bf: Tensor, blocks: tuple[str, ...]
                      ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Rows form of the descent terms' client means in one pass over client chunks
        (float64): g_bar = (1/n) sum_i grad f_i(x_i) per block (S, L, ...) and, for one trained
        block under minibatch noise, the clients' mean gradient variance (S, L) (else None)."""
        c, s, n = self.cfg, self.s, self.n
        m, b = c.samples_per_client, c.batch_size
        var = len(blocks) == 1 and c.noise_kind == "minibatch"
        gsum: dict[str, Tensor] = {}
        vsum = None
        for sl in self._chunks():
            X, R = self.X[:, sl].double(), self.R[:, sl].double()
            A, B = Af[:, sl].double(), Bf[:, sl].double()
            Z = X @ A.transpose(-1, -2)                      # (S, nc, L, m, r)
            E = s * Z @ B.transpose(-1, -2) - R              # (S, nc, L, m, do)
            g = {}
            if "B" in blocks:
                g["B"] = (s / m) * E.transpose(-1, -2) @ Z
            if "A" in blocks:
                EB = E @ B
                g["A"] = (s / m) * EB.transpose(-1, -2) @ X
            for k, v in g.items():
                gsum[k] = gsum[k] + v.sum(1) if k in gsum else v.sum(1)
            if var:
                per = (E.pow(2).sum(-1) * Z.pow(2).sum(-1) if blocks == ("B",)
                       else EB.pow(2).sum(-1) * X.pow(2).sum(-1))
                v = ((s * s * per.mean(-1) - g[blocks[0]].pow(2).sum((-2, -1))).clamp_min(0)
                     / b).sum(1)
                vsum = v if vsum is None else vsum + v
        tot = self._csums(*gsum.values(), *([] if vsum is None else [vsum]))
        return ({k: v / n for k, v in zip(gsum, tot, strict=False)},
                None if vsum is None else tot[-1] / n)

    def _path_curvature(self, Ab: Tensor, Bb: Tensor, g: dict[str, Tensor], lr: float
                        ) -> tuple[Tensor, Tensor]:
        """Joint (A, B) step: per layer L = s^2 lam (a^2 + b^2) + s (s lam a b + ||C_bar||_2)
        with a, b the larger spectral norms of the averaged factors at the two ends of the
        realized step (a bound of the Hessian on the segment); returns (sum_l L_l
        ||g_hat_l||^2, max_l L_l), g_hat = ``g`` the clients' mean stochastic gradient
        (S, L, ...) float64 per block."""
        s = self.s
        gA, gB = g["A"], g["B"]
        A0, B0 = Ab.double(), Bb.double()
        a = torch.maximum(torch.linalg.matrix_norm(A0, ord=2),
                          torch.linalg.matrix_norm(A0 - lr * gA, ord=2))
        b = torch.maximum(torch.linalg.matrix_norm(B0, ord=2),
                          torch.linalg.matrix_norm(B0 - lr * gB, ord=2))
        lam = self.lam_sigma_bar
        L = s * s * lam * (a * a + b * b) + s * (s * lam * a * b + self.norm_C_bar)
        gh = gA.pow(2).sum((-2, -1)) + gB.pow(2).sum((-2, -1))
        return (L * gh).sum(-1), L.amax(-1)

    def _block_variance(self, A: Tensor, B: Tensor, block: str) -> Tensor:
        """E||g_i - grad f_i||^2 of one local step's stochastic gradient of ``block`` at every
        client's point, per layer (S, n, L) (see :func:`.constants.sigma_sq`)."""
        c = self.cfg
        S, n, L = A.shape[0], A.shape[1], A.shape[2]
        if c.noise_kind == "none":
            return torch.zeros(S, n, L, dtype=torch.float64, device=A.device)
        if c.noise_kind == "additive":
            size = c.rank * (c.d_in if block == "A" else c.d_out)
            return torch.full((S, n, L), c.noise * size / self.n_params(),
                              dtype=torch.float64, device=A.device)
        if isinstance(self.Sig, Rows):      # client chunks bound the float64 temporaries
            return torch.cat([self._row_variance(self.X[:, sl], self.R[:, sl], A[:, sl],
                                                 B[:, sl], block) for sl in self._chunks()], 1)
        return self._row_variance(self.X, self.R, A, B, block)

    def _row_variance(self, X: Tensor, R: Tensor, A: Tensor, B: Tensor, block: str) -> Tensor:
        """Minibatch variance of ``block``'s gradient from the rows X (S, n, L, m, di),
        R (S, n, L, m, do) at A, B -> (S, n, L) float64."""
        c = self.cfg
        s, m, b = self.s, c.samples_per_client, c.batch_size
        X, R = X.double(), R.double()
        A, B = A.double(), B.double()
        Z = X @ A.transpose(-1, -2)                          # (S, n, L, m, r)
        E = s * Z @ B.transpose(-1, -2) - R                  # (S, n, L, m, do)
        if block == "B":
            per = s * s * E.pow(2).sum(-1) * Z.pow(2).sum(-1)
            g = (s / m) * E.transpose(-1, -2) @ Z
        else:
            EB = E @ B
            per = s * s * EB.pow(2).sum(-1) * X.pow(2).sum(-1)
            g = (s / m) * EB.transpose(-1, -2) @ X
        return (per.mean(-1) - g.pow(2).sum((-2, -1))).clamp_min(0) / b

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

    def _track_norms(self, A: Tensor, B: Tensor, blocks: tuple[str, ...]) -> None:
        if "A" in blocks:
            fa = A.pow(2).sum((-2, -1), dtype=torch.float64).sqrt().amax(1)   # (S, L)
            self.max_fro_A = torch.maximum(self.max_fro_A, fa)
        if "B" in blocks:
            fb = B.pow(2).sum((-2, -1), dtype=torch.float64).sqrt().amax(1)
            self.max_fro_B = torch.maximum(self.max_fro_B, fb)

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
          the loop's ``cross_term``).
        """
        from adflora_analysis.synthetic.constants import sigma_sq

        A = torch.stack(state.A, 2).double()          # this process's clients
        B = torch.stack(state.B, 2).double()
        Ab, Bb = self._cmeans(A, B)
        g = self.full_grads(Ab, Bb, self.Sig_bar64, self.C_bar64)
        gA = g["A"].pow(2).flatten(1).sum(-1)
        gB = g["B"].pow(2).flatten(1).sum(-1)
        loss = self._global_loss(Ab, Bb)
        c = self.cfg
        if isinstance(self.Sig, Rows):
            local, zeta, sig = self._client_terms(A, B, Ab, Bb, g)
        else:
            local = self._cmean(self._loss(A, B, self.Sig.double(), self.C.double(),
                                           self.c0).sum(-1))
            gi = self.full_grads(Ab.unsqueeze(1), Bb.unsqueeze(1), self.Sig.double(),
                                 self.C.double())
            zeta = sum((gi[k] - g[k].unsqueeze(1)).pow(2).flatten(2).sum(-1)
                       for k in ("A", "B"))
            sig = sigma_sq(self.X, self.R, self.s, A, B, noise_kind=c.noise_kind,
                           noise=c.noise, batch_size=c.batch_size)
        out = {
            "loss": loss, "loss_gap": loss - self.f_star, "grad_norm_sq": gA + gB,
            "grad_norm_sq_A": gA, "grad_norm_sq_B": gB, "local_loss": local,
            "zeta_sq": self._cmean(zeta), "sigma_sq_max": self._cmax(sig),
            "sigma_sq_mean": self._cmean(sig), "L_hull": self.smoothness_bound(),
            "f_inf_B": self.f_inf_B,
            "cross_term_direct": _cross_term_direct(A, B, self.n, Ab, Bb, self.backend.all_sum),
        }
        return out

    def _chunks(self) -> list[slice]:
        """Chunks of this process's clients that bound a float64 temporary of a few rows-sized
        tensors (2 MB)."""
        c = self.cfg
        return client_chunks(self.XR.shape[1], len(self.seeds) * self.L * c.samples_per_client
                             * (c.d_in + c.d_out))

    def _client_terms(self, A: Tensor, B: Tensor, Ab: Tensor, Bb: Tensor,
                      g: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Rows form of evaluate's per-client terms, client chunk by chunk: the local loss
        (1/n) sum_i f_i(A_i, B_i) over every process's clients (S,), and for this process's
        clients ||grad f_i(x_bar) - grad f(x_bar)||^2 (S, n_local) and sigma^2 (S, n_local).
        A (S, n_local, L, r, di), B (S, n_local, L, do, r); Ab, Bb, g at the mean."""
        from adflora_analysis.synthetic.constants import sigma_sq

        c, s = self.cfg, self.s
        local = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
        zeta, sig = [], []
        for sl in self._chunks():
            rows = self.Sig.select(sl).to(torch.float64)
            Ac, Bc = A[:, sl], B[:, sl]
            local += rows.loss(s, Ac, Bc).sum((1, 2))
            gi = rows.grads(s, Ab.unsqueeze(1), Bb.unsqueeze(1), ("A", "B"))
            zeta.append(sum((gi[k] - g[k].unsqueeze(1)).pow(2).flatten(2).sum(-1)
                            for k in ("A", "B")))
            sig.append(sigma_sq(rows.X, rows.R, s, Ac, Bc, noise_kind=c.noise_kind,
                                noise=c.noise, batch_size=c.batch_size))
        return self._csums(local)[0] / self.n, torch.cat(zeta, 1), torch.cat(sig, 1)

    # ------------------------------------------------------------------ constants
    def smoothness_bound(self) -> Tensor:
        """L over the convex hull of every client iterate so far, per seed (S,)
        (:func:`.constants.smoothness_bound` of the running factor norms)."""
        from adflora_analysis.synthetic.constants import smoothness_bound

        return smoothness_bound(self.s, self.max_fro_A, self.max_fro_B, self.lam_sigma,
                                self.norm_C)

    def measure_constants(self, state: LoraState, t: int) -> dict[str, Tensor]:
        """Constants at the state after round ``t``, per seed (S,):

        - ``L_power``: max over clients and layers of ||hess f_i(x_i)|| (power iteration);
        - ``L_power_avg``: max over clients i and layers of ||hess f_i(x_bar)||;
        - ``L_point``: the analytic bound at the client points (>= L_power);
        - ``L_hull``: :meth:`smoothness_bound` so far.
        """
        from adflora_analysis.synthetic.constants import hessian_norm, point_bound

        A = torch.stack(state.A, 2).double()          # this process's clients
        B = torch.stack(state.B, 2).double()
        # the rows form builds S_i, C_i for the measurement only (O(n d^2) while it runs)
        Sig, C = (self.Sig.to(torch.float64).dense() if isinstance(self.Sig, Rows)
                  else (self.Sig.double(), self.C.double()))
        it, clients = self.cfg.power_iters, (self.n, self.sl)
        Lc = hessian_norm(self.s, A, B, Sig, C, iters=it, seed=t, clients=clients)
        Ab, Bb = (m.expand_as(X) for m, X in zip(self._cmeans(A, B, keepdim=True), (A, B),
                                                  strict=True))
        La = hessian_norm(self.s, Ab, Bb, Sig, C, iters=it, seed=t, clients=clients)
        Lp = point_bound(self.s, A, B, Sig, C)
        return {"L_power": self._cmax(Lc), "L_power_avg": self._cmax(La),
                "L_point": self._cmax(Lp), "L_hull": self.smoothness_bound()}

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


def _cross_term_direct(A: Tensor, B: Tensor, n: int | None = None, Ab: Tensor | None = None,
                       Bb: Tensor | None = None, all_sum=None) -> Tensor:
    """C from its first form ||(1/n) sum_i B_i A_i - B_bar A_bar||_F (root of the sum over
    layers), computed independently of :func:`core.metrics.cross_term` (which uses the centred
    form): theory check 6i compares the two. A (S, n, L, r, di), B (S, n, L, do, r) -> (S,).

    Under torch.distributed A and B hold this process's clients, ``n`` is the number of all
    clients, ``Ab``, ``Bb`` (S, L, ...) their means and ``all_sum`` sums the per-process sum of
    products (defaults: every client is here).

    The sum of products is one contraction over the joint (client, rank) axis: no per-client
    d_out x d_in product is formed (that was O(n d^2) memory, 3.3 GB at n = 100,000, d = 64).

    >>> A = torch.tensor([[[[[1.0, 0.0]]], [[[-1.0, 0.0]]]]])   # (S=1, n=2, L=1, r=1, di=2)
    >>> B = torch.tensor([[[[[2.0]]], [[[-2.0]]]]])             # (S=1, n=2, L=1, do=1, r=1)
    >>> _cross_term_direct(A, B)       # (1/2)(2 + 2) = 2 on the first entry
    tensor([2.])
    """
    n = A.shape[1] if n is None else n
    Ab = A.mean(1) if Ab is None else Ab
    Bb = B.mean(1) if Bb is None else Bb
    S = torch.einsum("snlor,snlri->sloi", B, A)
    P = (S if all_sum is None else all_sum(S)) / n - Bb @ Ab
    return P.pow(2).sum((-3, -2, -1)).sqrt()


def _xi(X: Tensor) -> Tensor:
    """Consensus error over the client axis 1 of a stacked (S, n, L, ...) tensor -> (S,)."""
    return consensus_error(X, client_axis=1)
