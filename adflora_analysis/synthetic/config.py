"""Typed config of a synthetic study (``synthetic/*.toml``; docs/architecture.md §6, §8).

Every key a TOML file may set is a field below; an unknown key, a value of the wrong type, or a
combination that cannot run is one clear :class:`~adflora_analysis.errors.AdfloraError` at load
time, before anything is computed.

>>> cfg = SyntheticConfig(n_clients=4, rounds=3, methods=["adf-lora"], seeds=2)
>>> cfg.seed_list, cfg.rank, cfg.scale
([0, 1], 2, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adflora_analysis.errors import AdfloraError
from adflora_analysis.study.runconfig import FederationConfig
from adflora_analysis.theory.expect import validate_expectations


@dataclass
class SyntheticConfig(FederationConfig):
    """One synthetic study: every method in ``methods`` on every seed of ``seeds``.

    Problem (docs/architecture.md §6): client i of layer l minimizes
    ``f_i(A, B) = (1/2m) ||X_i (W0 + s B A)^T - Y_i||_F^2`` with
    ``Y_i = X_i (W0 + T_i)^T + label_noise * N(0, 1)`` and ``T_i = (1 - h) dW* + h dW_i*``:
    ``h = heterogeneity`` in [0, 1] moves the targets from identical (0) to independent rank-r*
    targets per client with no shared component (1, "fully disjoint").

    Attributes (the ones users and tests rely on first)
    ----------
    n_clients, rounds, local_steps (K), lr (constant SGD step size), rank (r),
    switch_interval (T; None = each method's default: adf-lora 5, others 1),
    seeds (a count n -> seeds 0..n-1, or a list), methods (names of
    :data:`adflora_analysis.core.methods.METHODS`), topology (``[topology]`` table:
    graph, weights, q, params, matrix).

    Other attributes
    ----------------
    d_in, d_out, n_layers : shapes; every layer has the same shape and its own data.
    target_rank : rank r* of dW* (and of each client's dW_i*).
    target_norm : ||dW*||_F (each dW_i* has the same norm).
    heterogeneity : h above.
    alpha : LoRA scaling numerator, s = alpha / r (peft's convention); default alpha = r (s = 1).
    samples_per_client : m, rows of X_i (features N(0, I)).
    label_noise : std of the label noise in Y_i (makes f* > 0; fixed data, not gradient noise).
    noise_kind : gradient noise: "none" (full-batch gradients), "minibatch" (``batch_size`` rows
        drawn i.i.d. with replacement every local step) or "additive" (full gradient plus Gaussian
        noise with E||xi||^2 = ``noise`` over one client's whole parameter vector).
    noise : sigma^2 of the additive noise (ignored otherwise).
    batch_size : rows per minibatch (minibatch noise).
    init_scale : A^0 ~ U(-b, b) with b = init_scale / sqrt(d_in) (peft's kaiming_uniform(a=5**.5)
        is init_scale = 1).
    per_client_init : draw A^0 independently per client instead of sharing it (an option of
        docs/architecture.md §2).
    dtype : "float64" (default, for theory checks) or "float32".
    constants_every : measure L (Hessian power iteration), sigma^2 at the client iterates every
        this many rounds (0 = never; zeta^2 and the Frobenius-norm L bound are logged every round).
    power_iters : Hessian-vector power iterations per measurement.
    checkpoint_every : rounds between checkpoints (0 = none).
    device : torch device.
    threads : torch intra-op threads for the run; 0 = auto (1 for small problems, where thread
        start-up costs more than the matmuls, else half the cores).
    topology_samples : Monte Carlo samples for p and the second-moment rate of a random sampler.
    client_storage : how each client's data is kept (docs/architecture.md §6): "statistics"
        (default; S_i, C_i and the target, O(d^2) a client) or "rows" (only the m rows of
        (X_i, R_i), O(m d) a client, every product with S_i, C_i through them: the same
        problem and numbers to float round-off; for many clients, e.g. n = 100,000 at d = 64).
    checks : the theory checks the run is made for (docs/theory.md): "all" (default, every
        bookkeeping column), "none" (the method alone: the loss at the averaged model, the
        step size and the loop's consensus metrics) or a list of check names; a run computes
        only the columns those checks read (:func:`adflora_analysis.theory.columns_needed`).
    measure_every : the expensive bookkeeping columns (the descent terms, consensus and variance
        at the inner steps, per-client terms, displacement consensus:
        :data:`adflora_analysis.synthetic.bookkeeping.SCHEDULED`) on rounds t with
        t % measure_every == 0 only (NaN on the others; rows get a ``measured`` column when > 1).
    backend : "auto" (torch.distributed exactly when launched by torchrun), "local" or "torch".
    exchange : gossip exchange under torch.distributed: "auto" (default: "neighbor" when W^t
        is sparse, else "allgather"), "allgather" or "neighbor".
    dist_timeout_s : seconds a process waits for a dead peer before it stops with an error.
    sweep, variants : expand the study (:func:`adflora_analysis.study.runconfig.expand_study`); rows
        carry the ``variant`` label.
    """

    seeds: int | list[int] = 20   # the shared keys live in FederationConfig
    d_in: int = 16
    d_out: int = 16
    n_layers: int = 1
    target_rank: int = 2
    target_norm: float = 2.0
    heterogeneity: float = 0.3
    alpha: float | None = None
    samples_per_client: int = 64
    label_noise: float = 0.1
    noise_kind: Literal["none", "minibatch", "additive"] = "minibatch"
    noise: float = 0.0
    batch_size: int = 16
    init_scale: float = 1.0
    per_client_init: bool = False
    dtype: Literal["float64", "float32"] = "float64"
    constants_every: int = 10
    power_iters: int = 20
    topology_samples: int = 20000
    client_storage: Literal["statistics", "rows"] = "statistics"
    checks: str | list[str] = "all"
    measure_every: int = 1

    def __post_init__(self) -> None:
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        self.check_federation()
        need(min(self.d_in, self.d_out, self.n_layers) >= 1,
             "d_in, d_out and n_layers must be at least 1", "use positive shapes")
        need(1 <= self.rank <= min(self.d_in, self.d_out),
             f"rank = {self.rank} must be between 1 and min(d_in, d_out) = "
             f"{min(self.d_in, self.d_out)}", "lower rank or raise d_in/d_out")
        need(1 <= self.target_rank <= min(self.d_in, self.d_out),
             f"target_rank = {self.target_rank} must be between 1 and min(d_in, d_out) = "
             f"{min(self.d_in, self.d_out)}", "lower target_rank")
        need(0.0 <= self.heterogeneity <= 1.0,
             f"heterogeneity = {self.heterogeneity} must be in [0, 1]",
             "0 = identical clients, 1 = fully disjoint targets")
        need(self.target_norm >= 0, "target_norm must be >= 0", "use e.g. 2.0")
        need(self.samples_per_client >= 1, "samples_per_client must be at least 1", "use 64")
        need(self.label_noise >= 0, "label_noise must be >= 0", "use 0 for noiseless labels")
        need(self.noise >= 0, f"noise = {self.noise} (a variance) must be >= 0", "use e.g. 0.01")
        need(1 <= self.batch_size <= self.samples_per_client,
             f"batch_size = {self.batch_size} must be between 1 and samples_per_client = "
             f"{self.samples_per_client}", "lower batch_size")
        need(self.alpha is None or self.alpha > 0, "alpha must be positive", "omit it for s = 1")
        need(self.init_scale > 0, "init_scale must be positive", "use 1.0")
        need(self.constants_every >= 0 and self.power_iters >= 1,
             "constants_every must be >= 0 and power_iters >= 1",
             "use 0 to switch a measurement off")
        need(isinstance(self.measure_every, int) and 1 <= self.measure_every <= self.rounds,
             f"measure_every = {self.measure_every} must lie in [1, rounds = {self.rounds}]",
             "use 1 to measure every round, or k to measure every k-th round")
        self._check_checks()
        validate_expectations(self.expect)
        need(100 <= self.topology_samples <= 10_000_000,
             f"topology_samples = {self.topology_samples} must lie in [100, 10,000,000]",
             "use e.g. 20000 (the standard error of p shrinks as 1/sqrt(samples))")

    def _check_checks(self) -> None:
        """``checks`` is "all", "none" or a list of registered check names (did-you-mean)."""
        if isinstance(self.checks, str):
            if self.checks in ("all", "none"):
                return
            raise AdfloraError(f"checks = {self.checks!r} must be \"all\", \"none\" or a list of "
                               "check names", f"e.g. checks = [{self.checks!r}]")
        from adflora_analysis.synthetic.bookkeeping import columns_for

        columns_for(self.checks)     # an unknown name: AdfloraError with a did-you-mean

    @property
    def scale(self) -> float:
        """s = alpha / r."""
        return (self.alpha if self.alpha is not None else float(self.rank)) / self.rank

    def n_threads(self) -> int:
        """Threads :func:`~adflora_analysis.synthetic.runner.run_study` sets (see ``threads``)."""
        import os

        import torch

        if self.threads:
            return self.threads
        work = len(self.seed_list) * self.n_clients * self.n_layers * self.d_in * max(
            self.d_in, self.d_out)
        if work < 2_000_000:
            return 1
        # many small kernels: on a small (often shared) machine extra threads cost more than
        # they give (measured: 2 threads 5x slower than 1 on a loaded 2-core box)
        return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) // 2))
