"""The theory checks' bookkeeping of the synthetic quadratic problem (docs/architecture.md §6,
docs/theory.md §3), apart from its SGD step (:mod:`.problem`).

:class:`QuadraticBookkeeping` is a mixin of :class:`.problem.QuadraticProblem`: the exact
descent terms at each inner step (the clients' full-batch gradients, the block's minibatch
variance, the curvature along the step), the running maxima of the factor norms (the
smoothness bound over the iterates' hull), evaluate's per-client terms (local loss, zeta^2,
sigma^2) and the measured constants. Every reduction over clients and processes is one of
:mod:`adflora_analysis.core.reduce`.

Which of them a round computes is decided by the problem's :class:`Columns` (config keys
``checks`` and ``measure_every``; docs/theory.md): the default computes all of them every round
(the rows of earlier releases, bit for bit), ``checks = "none"`` none (the method alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from adflora_analysis.core.reduce import (
    client_chunks,
    client_max,
    client_means,
    process_sums,
)
from adflora_analysis.core.state import LoraState
from adflora_analysis.synthetic.rows import Rows

__all__ = ["CLIENT_TERMS", "DESCENT", "EVAL_SCHEDULED", "LOCAL_SCHEDULED", "SCHEDULED",
           "Columns", "QuadraticBookkeeping", "columns_for", "cross_term_direct"]


DESCENT = ("sn_gbar_sq", "sn_drift", "sn_curv_left", "sn_curv_right", "L_block")
"""The exact descent terms of each inner step (the clients' full-batch gradients)."""
CLIENT_TERMS = ("local_loss", "zeta_sq", "sigma_sq_max", "sigma_sq_mean")
"""evaluate's per-client terms."""
LOCAL_SCHEDULED = ("xi_inner", "grad_norm_sq_inner", "loss_start", "gamma_A", "gamma_B",
                   *DESCENT)
"""local_update's columns computed on measured rounds only (``measure_every``)."""
EVAL_SCHEDULED = (*CLIENT_TERMS, "cross_term_direct")
"""evaluate's columns computed on measured rounds only."""
LOOP_SCHEDULED = ("disp_A", "disp_B")
"""The loop's columns whose per-client pass the problem makes on measured rounds only."""
SCHEDULED = (*LOCAL_SCHEDULED, *EVAL_SCHEDULED, *LOOP_SCHEDULED)
"""Every column that is NaN on a round not measured. Every round: ``eta``, ``loss``,
``loss_gap``, ``grad_norm_sq*``, ``f_inf_B`` (the method's own), ``L_hull`` (a running maximum
over every step), and the loop's consensus metrics."""


@dataclass(frozen=True)
class Columns:
    """Which bookkeeping columns a run computes: ``need`` the columns the selected checks read
    (None: every column, the default) and ``every`` the measuring period of the
    :data:`SCHEDULED` ones (rounds t with t % every == 0 are measured).

    >>> cols = Columns(frozenset({"xi_inner"}), every=5)
    >>> cols.wants("xi_inner"), cols.wants("zeta_sq"), cols.measured(10), cols.measured(11)
    (True, False, True, False)
    >>> Columns().wants("anything"), Columns().measured(7)
    (True, True)
    """

    need: frozenset[str] | None = None
    every: int = 1

    def wants(self, *names: str) -> bool:
        """Whether any of ``names`` is read by the selected checks."""
        return self.need is None or any(n in self.need for n in names)

    def measured(self, t: int) -> bool:
        """Whether round ``t`` computes the scheduled columns."""
        return t % self.every == 0

    @classmethod
    def of(cls, cfg) -> Columns:
        """From a config's ``checks`` and ``measure_every`` (validated by the config)."""
        return cls(columns_for(cfg.checks), cfg.measure_every)


def columns_for(checks: str | list[str]) -> frozenset[str] | None:
    """The columns the checks ``checks`` read: None (every column) for ``"all"``, none for
    ``"none"``, else :func:`adflora_analysis.theory.columns_needed` (an unknown check name is
    an :class:`~adflora_analysis.errors.AdfloraError` with a did-you-mean).

    >>> columns_for("all") is None, columns_for("none")
    (True, frozenset())
    """
    if checks == "all":
        return None
    if checks == "none":
        return frozenset()
    from adflora_analysis.theory import columns_needed

    return columns_needed(list(checks) if not isinstance(checks, str) else [checks])


class QuadraticBookkeeping:
    """The bookkeeping half of :class:`.problem.QuadraticProblem` (a mixin: it reads the
    problem's data, config, backend and gradients)."""

    def _client_mean(self, x: Tensor, keepdim: bool = False) -> Tensor:
        """Mean of one tensor over every process's clients (axis 1)."""
        return client_means(self.backend, self.n, x, keepdim=keepdim)[0]

    def _descent_terms(self, Af: Tensor, Bf: Tensor, Ab: Tensor, Bb: Tensor,
                       a: dict[str, Tensor], blocks: tuple[str, ...],
                       gi: dict[str, Tensor] | None = None,
                       rows_terms: tuple[dict[str, Tensor], Tensor | None] | None = None
                       ) -> dict[str, Tensor]:
        """Terms of the descent step (docs/theory.md §3) at one inner step, each (S,) float64.

        ``Af``, ``Bf``: this process's clients' factors (S, n_local, L, ...) (every client
        in-process); ``Ab``, ``Bb``: the means over all clients;
        ``a``: M_t grad f(x_bar) per block (S, L, ...). One trained block: L per layer is the
        exact curvature along that block (B: s^2 lam_max(A_bar Sig_bar A_bar^T); A: s^2
        lam_max(B_bar^T B_bar) lam_max(Sig_bar)), cl = sum_l L_l ||g_bar_l||^2 and
        cr = sum_l L_l V_l / n with V_l the clients' mean gradient variance of the block.

        ``gi``: the clients' full gradients when the step computed them; ``rows_terms``:
        (g_bar, V) of :meth:`_rows_step_and_descent` when the step's pass computed them."""
        s, n = self.s, self.n
        V = None
        if rows_terms is not None:
            gb, V = rows_terms
        elif isinstance(self.Sig, Rows):
            gb, V = self._rows_descent(Af, Bf, blocks)
        else:
            if gi is None:   # else the step's full gradients, shared (same call, same numbers)
                gi = self.full_grads(Af, Bf, self.Sig, self.C, blocks)  # (S, n, L, ...)
            gb = dict(zip(gi, client_means(self.backend, self.n, *gi.values()), strict=True))

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
            V = self._client_mean(self._block_variance(Af, Bf, blocks[0]))        # (S, L)
        out["sn_curv_left"] = (L * gb_l).sum(-1)
        out["sn_curv_right"] = (L * V / n).sum(-1)
        out["L"] = L.amax(-1)
        return out

    def _rows_descent(self, Af: Tensor, Bf: Tensor, blocks: tuple[str, ...]
                      ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Rows form of the descent terms' client means in one pass over client chunks:
        g_bar = (1/n) sum_i grad f_i(x_i) per block (S, L, ...) and, for one trained block
        under minibatch noise, the clients' mean gradient variance (S, L) (else None); both
        float64.

        Each client's full gradient is computed once and shared by g_bar and the variance. In
        float64 with ``exact_bookkeeping`` (a float64 run, or below
        ``core.metrics.PARTIAL_SUM_MIN_N`` clients: the rows of the shipped studies unchanged);
        otherwise in the run's float32 with float64 sums over clients and a float64 variance
        difference (:meth:`_rows_descent_fast`)."""
        if not self.exact_bookkeeping:
            return self._rows_descent_fast(Af, Bf, blocks)
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
        tot = process_sums(self.backend, *gsum.values(), *([] if vsum is None else [vsum]))
        return ({k: v / n for k, v in zip(gsum, tot, strict=False)},
                None if vsum is None else tot[-1] / n)

    def _rows_descent_fast(self, Af: Tensor, Bf: Tensor, blocks: tuple[str, ...]
                           ) -> tuple[dict[str, Tensor], Tensor | None]:
        """:meth:`_rows_descent` in the run's dtype (float32): flat (N, m, .) batched matmuls
        over client chunks of the rows in place (no float64 copy of X, R), the residual in one
        fused baddbmm, sums over clients accumulated in float64 and the variance's difference
        E||g_j||^2 - ||g||^2 taken in float64 per client (its cancellation is where float32
        would lose digits)."""
        c, s, n = self.cfg, self.s, self.n
        m, b = c.samples_per_client, c.batch_size
        di, r, do = Af.shape[-1], Af.shape[-2], Bf.shape[-2]
        var = len(blocks) == 1 and c.noise_kind == "minibatch"
        f64 = torch.float64
        gsum: dict[str, Tensor] = {}
        vsum = None
        XR, xsq = self.XR, self._row_sq()
        per_client = len(self.seeds) * self.L * m * (di + do)
        for sl in client_chunks(XR.shape[1], per_client):
            rows = XR[:, sl]
            S, nc, L = rows.shape[0], rows.shape[1], rows.shape[2]
            rows = rows.reshape(-1, m, di + do)
            X, R = rows[..., :di], rows[..., di:]
            A = Af[:, sl].reshape(-1, r, di)
            B = Bf[:, sl].reshape(-1, do, r)
            Z = torch.bmm(X, A.transpose(-1, -2))                          # (N, m, r)
            E = torch.baddbmm(R, Z, B.transpose(-1, -2), beta=-1, alpha=s)  # (N, m, do)
            g = {}
            if "B" in blocks:
                g["B"] = torch.bmm(E.transpose(-1, -2), Z).mul_(s / m)       # (N, do, r)
            if "A" in blocks:
                EB = torch.bmm(E, B)
                g["A"] = torch.bmm(EB.transpose(-1, -2), X).mul_(s / m)      # (N, r, di)
            for k, v in g.items():
                part = v.view(S, nc, L, *v.shape[1:]).sum(1, dtype=f64)
                gsum[k] = gsum[k] + part if k in gsum else part
            if var:
                per = (E.pow(2).sum(-1) * Z.pow(2).sum(-1) if blocks == ("B",)
                       else EB.pow(2).sum(-1) * xsq[:, sl].reshape(-1, m))  # (N, m)
                gg = g[blocks[0]]
                v = ((s * s * per.mean(-1, dtype=f64)
                      - gg.pow(2).sum((-2, -1), dtype=f64)).clamp_min(0) / b)
                v = v.view(S, nc, L).sum(1)
                vsum = v if vsum is None else vsum + v
        tot = process_sums(self.backend, *gsum.values(), *([] if vsum is None else [vsum]))
        return ({k: v / n for k, v in zip(gsum, tot, strict=False)},
                None if vsum is None else tot[-1] / n)

    def _rows_step_and_descent(self, Af: Tensor, Bf: Tensor, idx: Tensor,
                               blocks: tuple[str, ...]
                               ) -> tuple[dict[str, Tensor], tuple[dict[str, Tensor],
                                                                  Tensor | None]]:
        """The step's minibatch gradients and the descent terms' client means in ONE pass
        (float32 runs from ``PARTIAL_SUM_MIN_N`` clients, rows storage, minibatch noise):
        each client's residual E = s Z B^T - R over its m rows is computed once and shared by
        its full gradient (g_bar), its minibatch variance (V) and the step's minibatch gradient,
        which weights the m rows by how often ``idx`` (S, n_local, L, b) drew them
        (g = (s/b) E^T diag(c) Z, equal to the gathered rows' gradient to float rounding).
        Returns ({block: (S, n_local, L, ...)}, (g_bar, V)) as :meth:`_rows_descent`."""
        c, s, n = self.cfg, self.s, self.n
        m, b = c.samples_per_client, c.batch_size
        di, r, do = Af.shape[-1], Af.shape[-2], Bf.shape[-2]
        var = len(blocks) == 1
        f64 = torch.float64
        gsum: dict[str, Tensor] = {}
        vsum = None
        out = {k: (Af if k == "A" else Bf).new_empty((Af if k == "A" else Bf).shape)
               for k in blocks}
        XR, xsq = self.XR, self._row_sq()
        S, L = Af.shape[0], Af.shape[2]
        for sl in client_chunks(XR.shape[1], S * L * m * (di + do)):
            nc = sl.stop - sl.start
            rows = XR[:, sl].reshape(-1, m, di + do)
            X, R = rows[..., :di], rows[..., di:]
            A = Af[:, sl].reshape(-1, r, di)
            B = Bf[:, sl].reshape(-1, do, r)
            cnt = torch.zeros(X.shape[0], m, dtype=X.dtype, device=X.device).scatter_add_(
                1, idx[:, sl].reshape(-1, b), torch.ones(1, 1, dtype=X.dtype,
                                                         device=X.device).expand(X.shape[0], b))
            Z = torch.bmm(X, A.transpose(-1, -2))                          # (N, m, r)
            E = torch.baddbmm(R, Z, B.transpose(-1, -2), beta=-1, alpha=s)  # (N, m, do)
            g = {}
            if "B" in blocks:
                g["B"] = torch.bmm(E.transpose(-1, -2), Z).mul_(s / m)
                out["B"][:, sl] = torch.bmm(E.transpose(-1, -2), Z * cnt.unsqueeze(-1)).mul_(
                    s / b).view(out["B"][:, sl].shape)
            if "A" in blocks:
                EB = torch.bmm(E, B)
                g["A"] = torch.bmm(EB.transpose(-1, -2), X).mul_(s / m)
                out["A"][:, sl] = torch.bmm((EB * cnt.unsqueeze(-1)).transpose(-1, -2), X).mul_(
                    s / b).view(out["A"][:, sl].shape)
            for k, v in g.items():
                part = v.view(S, nc, L, *v.shape[1:]).sum(1, dtype=f64)
                gsum[k] = gsum[k] + part if k in gsum else part
            if var:
                per = (E.pow(2).sum(-1) * Z.pow(2).sum(-1) if blocks == ("B",)
                       else EB.pow(2).sum(-1) * xsq[:, sl].reshape(-1, m))
                gg = g[blocks[0]]
                v = ((s * s * per.mean(-1, dtype=f64)
                      - gg.pow(2).sum((-2, -1), dtype=f64)).clamp_min(0) / b)
                v = v.view(S, nc, L).sum(1)
                vsum = v if vsum is None else vsum + v
        tot = process_sums(self.backend, *gsum.values(), *([] if vsum is None else [vsum]))
        return out, ({k: v / n for k, v in zip(gsum, tot, strict=False)},
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

    def _track_norms(self, A: Tensor, B: Tensor, blocks: tuple[str, ...]) -> None:
        if "A" in blocks:
            fa = A.pow(2).sum((-2, -1), dtype=torch.float64).sqrt().amax(1)   # (S, L)
            self.max_fro_A = torch.maximum(self.max_fro_A, fa)
        if "B" in blocks:
            fb = B.pow(2).sum((-2, -1), dtype=torch.float64).sqrt().amax(1)
            self.max_fro_B = torch.maximum(self.max_fro_B, fb)

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
        return process_sums(self.backend, local)[0] / self.n, torch.cat(zeta, 1), torch.cat(sig, 1)

    def _row_sq(self) -> Tensor:
        """||x_j||^2 of every row of this process's clients (S, n_local, L, m), in the run's
        dtype: data, computed once (the per-sample gradient norm of block A needs it)."""
        if getattr(self, "_row_sq_cache", None) is None:
            di = self.X.shape[-1]
            self._row_sq_cache = self.XR[..., :di].pow(2).sum(-1)
        return self._row_sq_cache

    def _client_terms_fast(self, A: Tensor, B: Tensor, Ab: Tensor, Bb: Tensor,
                           g: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_client_terms` in the run's dtype (``exact_bookkeeping`` off): one pass over
        client chunks of the rows in place, each client's residual at its point shared by its
        loss and its minibatch variance, flat batched matmuls, the residuals at the mean as one
        matrix product over all the chunk's rows, float64 sums and differences. A, B in the
        run's dtype; Ab, Bb, g (float64) at the mean."""
        from adflora_analysis.synthetic.constants import sigma_sq

        c, s, f64 = self.cfg, self.s, torch.float64
        m, b = c.samples_per_client, c.batch_size
        di, r, do = A.shape[-1], A.shape[-2], B.shape[-2]
        dt = A.dtype
        S, L = A.shape[0], A.shape[2]
        AbT = Ab.to(dt).reshape(S * L, r, di).transpose(-1, -2)       # (S L, di, r)
        Bb3 = Bb.to(dt).reshape(S * L, do, r)
        local = torch.zeros(S, dtype=f64, device=A.device)
        zeta, sig = [], []
        XR, xsq = self.XR, self._row_sq()
        for sl in client_chunks(XR.shape[1], S * L * m * (di + do)):
            nc = sl.stop - sl.start
            rows = XR[:, sl].reshape(-1, m, di + do)                   # (S nc L, m, .)
            X, R = rows[..., :di], rows[..., di:]
            A3, B3 = A[:, sl].reshape(-1, r, di), B[:, sl].reshape(-1, do, r)
            # at each client's point: loss and minibatch variance
            Z = torch.bmm(X, A3.transpose(-1, -2))                     # (N, m, r)
            E = torch.baddbmm(R, Z, B3.transpose(-1, -2), beta=-1, alpha=s)
            e2 = E.pow(2).sum(-1)                                       # (N, m)
            local += e2.sum(-1, dtype=f64).view(S, nc, L).sum((1, 2)) / (2 * m)
            if c.noise_kind == "minibatch":
                EB = torch.bmm(E, B3)                                   # (N, m, r)
                per = s * s * (e2 * Z.pow(2).sum(-1)
                               + EB.pow(2).sum(-1) * xsq[:, sl].reshape(-1, m))
                gB = torch.bmm(E.transpose(-1, -2), Z).mul_(s / m)
                gA = torch.bmm(EB.transpose(-1, -2), X).mul_(s / m)
                pop = (per.mean(-1, dtype=f64) - gA.pow(2).sum((-2, -1), dtype=f64)
                       - gB.pow(2).sum((-2, -1), dtype=f64)).clamp_min(0)
                sig.append((pop / b).view(S, nc, L).sum(-1))
            else:
                sig.append(sigma_sq(XR[:, sl, ..., :di], XR[:, sl, ..., di:], s, A[:, sl],
                                    B[:, sl], noise_kind=c.noise_kind, noise=c.noise,
                                    batch_size=b))
            # at the mean: one (S L) x (nc m, .) product per seed and layer
            Xm = X.reshape(S, nc, L, m, di).transpose(1, 2).reshape(S * L, nc * m, di)
            Rm = R.reshape(S, nc, L, m, do).transpose(1, 2).reshape(S * L, nc * m, do)
            Zb = torch.bmm(Xm, AbT)                                     # (S L, nc m, r)
            Eb = torch.baddbmm(Rm, Zb, Bb3.transpose(-1, -2), beta=-1, alpha=s)
            EbB = torch.bmm(Eb, Bb3)
            Zc, Ec = Zb.reshape(-1, m, r), Eb.reshape(-1, m, do)       # (S L nc, m, .)
            gi = {"B": torch.bmm(Ec.transpose(-1, -2), Zc).mul_(s / m),
                  "A": torch.bmm(EbB.reshape(-1, m, r).transpose(-1, -2),
                                 Xm.reshape(-1, m, di)).mul_(s / m)}
            z = sum((gi[k].view(S, L, nc, *gi[k].shape[1:]).double()
                     - g[k].unsqueeze(2)).pow(2).sum((-2, -1)) for k in ("A", "B"))
            zeta.append(z.sum(1))                                       # (S, nc)
        return process_sums(self.backend, local)[0] / self.n, torch.cat(zeta, 1), torch.cat(sig, 1)

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
        means = client_means(self.backend, self.n, A, B, keepdim=True)
        Ab, Bb = (m.expand_as(X) for m, X in zip(means, (A, B), strict=True))
        La = hessian_norm(self.s, Ab, Bb, Sig, C, iters=it, seed=t, clients=clients)
        Lp = point_bound(self.s, A, B, Sig, C)
        mx = client_max
        return {"L_power": mx(self.backend, Lc), "L_power_avg": mx(self.backend, La),
                "L_point": mx(self.backend, Lp), "L_hull": self.smoothness_bound()}


def cross_term_direct(A: Tensor, B: Tensor, n: int | None = None, Ab: Tensor | None = None,
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
    >>> cross_term_direct(A, B)       # (1/2)(2 + 2) = 2 on the first entry
    tensor([2.])
    """
    n = A.shape[1] if n is None else n
    Ab = A.mean(1) if Ab is None else Ab
    Bb = B.mean(1) if Bb is None else Bb
    S = torch.einsum("snlor,snlri->sloi", B, A)
    P = (S if all_sum is None else all_sum(S)) / n - Bb @ Ab
    return P.pow(2).sum((-3, -2, -1)).sqrt()
