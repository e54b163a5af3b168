"""Config keys every federated run shares (synthetic testbed and GLUE runner), in one place.

:class:`FederationConfig` holds the keys users and tests rely on under the same names in both
layers (``n_clients``, ``rounds``, ``local_steps``, ``lr``, ``rank``, ``switch_interval``,
``seeds``, ``methods``, ``[topology]``), plus checkpointing, device, threads and the
torch.distributed keys. Each layer's config subclasses it (changing defaults, adding its own
keys) and calls :meth:`FederationConfig.check_federation` from its ``__post_init__``.

A config is a *study*: its ``sweep`` and ``variants`` keys expand it into labelled variants with
:func:`expand_study`, the one expansion every runner (synthetic, GLUE) uses.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from adflora_analysis.core.methods import METHODS, get_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import expand_seeds
from adflora_analysis.topology import TopologyConfig

C = TypeVar("C", bound="FederationConfig")

RESETTING_KEYS = ("topology.graph", "topology.matrix")
"""A variant that sets one of these replaces the whole ``[topology]`` table: keys it does not
set take their defaults (so an encounter base's ``q`` does not leak into a ring variant)."""

NOT_VARIED = ("sweep", "variants", "seeds", "rounds", "checkpoint_every", "plugins", "expect")
"""Keys a study may not vary: every job of a run directory shares them."""


@dataclass
class GossipConfig:
    """The ``[gossip]`` table: asynchronous, stale and partial gossip (docs/theory.md §9; the
    defaults are synchronous gossip).

    staleness (τ >= 0: a client mixes its own current block with its neighbours' blocks of τ
    rounds ago), participation (π in (0, 1]: each round each client is active with probability
    π; an inactive client neither trains nor gossips), speed_spread (>= 0: client i makes
    K_i = max(1, round(K exp(speed_spread z_i))) local steps a round, z_i ~ N(0, 1) drawn once
    per seed and client; synthetic testbed only), clock_drift (in [0, 1): client i's clock runs at
    rate 1 + δ_i, δ_i ~ U[−clock_drift, clock_drift] drawn once per seed and client, and it is
    in the phase the schedule has at its own clock floor(t (1 + δ_i)), so clients of one round
    can be in different phases; core/schedules.py ``drifting``), model (how staleness acts,
    core/mixers.py ``MODELS``: ``stale-read``, the default: this round's W^t applied to τ-old
    copies of the neighbours' blocks; ``ad-psgd``: gradients at τ-old models, averaging of current
    models, Lian et al. 2018; ``push-sum``: SGP, Assran et al. 2019, column-stochastic W^tᵀ, a
    weight vector, messages τ rounds in transit, mass conserved). ``is_default``: the mixer is
    synchronous (push-sum never is: its weights need not be doubly stochastic).
    """

    staleness: int = 0
    participation: float = 1.0
    speed_spread: float = 0.0
    clock_drift: float = 0.0
    model: str = "stale-read"

    @property
    def is_default(self) -> bool:
        return self.staleness == 0 and self.participation == 1 and self.model != "push-sum"


def paper_topology() -> TopologyConfig:
    """The paper's default topology: encounter model, q = 0.1, Metropolis weights.

    >>> t = paper_topology()
    >>> t.graph, t.weights, t.q
    ('encounter', 'metropolis', 0.1)
    """
    return TopologyConfig(graph="encounter", weights="metropolis", q=0.1)


@dataclass
class FederationConfig:
    """Shared keys.

    n_clients, rounds, local_steps (K), lr (eta_0), lr_schedule (``constant``, ``inverse``:
    eta_0 / (1 + t / lr_t0), ``cosine``: down to lr_min at the last round;
    core/lr_schedules.py), rank (r), switch_interval (T; None = each method's
    default: adf-lora 5, others 1), switch_schedule (``periodic``: every T rounds;
    ``topology``: T from the topology's p so that (1 - p)^T <= switch_eps; ``feedback``: when the
    frozen block's Xi fell by switch_eps or the trained block stalls, within switch_min ..
    switch_max rounds; core/schedules.py), gossip (``[gossip]``: staleness, participation,
    speed_spread, clock_drift; see :class:`GossipConfig`), seeds (a count n -> seeds 0..n-1,
    or a list), methods (names in :data:`adflora_analysis.core.methods.METHODS`), plugins
    (Python files that register methods, imported before ``methods`` is checked; the resolved
    config records each as ``"/abs/path.py#sha256=<hex>"``, which a resume verifies;
    :mod:`adflora_analysis.plugins`), topology
    (``[topology]``: graph, weights, q, params, matrix), checkpoint_every (rounds between
    checkpoints, 0 = none), device, threads (torch CPU threads; 0 = the layer's automatic
    choice), backend (``auto``: torch.distributed exactly when launched by torchrun;
    ``local``; ``torch``), exchange (``auto``: ``neighbor`` when W^t is sparse;
    ``allgather``; ``neighbor``), dist_timeout_s (how long a process waits for a dead peer),
    sweep (dotted key -> list of values; the study runs every combination, e.g.
    ``sweep = {switch_interval = [1, 2, 5]}`` or ``{"topology.q" = [0.05, 0.1]}``), variants
    (tables of keys, dotted or nested, with an optional ``label``, each applied on top of every
    sweep combination). :func:`expand_study` expands them. expect (``[[expect]]`` tables: the
    violations the study declares it expects, each with a ``why``; validated by the testbed
    with :func:`adflora_analysis.theory.expect.validate_expectations`, applied by the checks).

    >>> cfg = FederationConfig(seeds=3, switch_interval=None)
    >>> cfg.seed_list, cfg.switch_for("adf-lora"), cfg.switch_for("rolora")
    ([0, 1, 2], 5, 1)
    """

    n_clients: int = 10
    rounds: int = 100
    local_steps: int = 5
    lr: float = 0.05
    lr_schedule: Literal["constant", "inverse", "cosine"] = "constant"
    lr_t0: float = 10.0
    lr_min: float = 0.0
    rank: int = 2
    switch_interval: int | None = None
    switch_schedule: Literal["periodic", "topology", "feedback"] = "periodic"
    switch_eps: float = 0.1
    switch_min: int = 1
    switch_max: int = 20
    gossip: GossipConfig = field(default_factory=GossipConfig)
    seeds: int | list[int] = 1
    methods: list[str] = field(default_factory=lambda: ["adf-lora", "rolora", "ffa-lora",
                                                        "lora"])
    plugins: list[str] = field(default_factory=list)
    topology: TopologyConfig = field(default_factory=paper_topology)
    checkpoint_every: int = 0
    device: str = "cpu"
    threads: int = 0
    backend: Literal["auto", "local", "torch"] = "auto"
    exchange: Literal["auto", "allgather", "neighbor"] = "auto"
    dist_timeout_s: float = 60.0
    sweep: dict[str, list] = field(default_factory=dict)
    variants: list[dict] = field(default_factory=list)
    expect: list[dict] | None = None

    def check_federation(self) -> None:
        """Validate the shared keys; one clear :class:`AdfloraError` for the first problem."""
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        from adflora_analysis.plugins import resolve_plugins

        self.plugins = resolve_plugins(self.plugins)   # first: methods may name their methods

        need(self.n_clients >= 1, f"n_clients = {self.n_clients} must be at least 1",
             "use n_clients = 2 or more")
        need(self.n_clients <= MAX_CLIENTS, f"n_clients = {self.n_clients:,} is more than "
             f"{MAX_CLIENTS:,}", "the synthetic testbed is measured up to 100,000 clients; "
             "split the federation")
        need(self.rounds >= 1, f"rounds = {self.rounds} must be at least 1", "use rounds >= 1")
        need(self.local_steps >= 1, f"local_steps = {self.local_steps} must be at least 1",
             "use local_steps = 1 or more")
        need(self.lr > 0, f"lr = {self.lr} must be positive", "use a positive step size")
        from adflora_analysis.core.lr_schedules import check_schedule

        check_schedule(self.lr_schedule, self.lr, self.lr_t0, self.lr_min)
        need(self.rank >= 1, f"rank = {self.rank} must be at least 1", "use e.g. rank = 8")
        need(self.switch_interval is None or self.switch_interval >= 1,
             f"switch_interval T = {self.switch_interval} must be at least 1",
             "use T = 1 (switch every round) or more")
        self.check_schedule_and_gossip()
        need(self.checkpoint_every >= 0, "checkpoint_every must be >= 0", "use 0 for none")
        need(self.threads >= 0, "threads must be >= 0", "use 0 for automatic")
        need(self.dist_timeout_s > 0, "dist_timeout_s must be positive", "use e.g. 60")
        need(bool(self.methods), "methods is empty", f"list some of {', '.join(METHODS)}")
        for m in self.methods:
            get_method(m)  # unknown name -> lists the valid ones
        need(len(set(self.methods)) == len(self.methods), "methods lists a method twice",
             "list each method once")
        try:
            seeds = self.seed_list
        except TypeError as e:
            raise AdfloraError(f"seeds: {e}", "write seeds = 3 or seeds = [0, 1, 2]") from None
        need(len(set(seeds)) == len(seeds), "seeds lists a seed twice", "list each seed once")
        count = max(1, len(self.variants)) if isinstance(self.variants, list) else 1
        for k, v in self.sweep.items():
            need(isinstance(v, list) and len(v) >= 1, f"sweep.{k} must be a non-empty list",
                 f'write e.g. sweep = {{"{k}" = [1, 2]}}')
            count *= len(v)
            need(count <= MAX_VARIANTS, f"the sweep and variants make {count:,} or more "
                 f"variants, more than {MAX_VARIANTS:,}", "split the study into several runs, "
                 "or sweep fewer values")
            need(k not in NOT_VARIED, f"sweep over {k!r} is not supported",
                 "sweep a problem, method or topology key")
        need(count <= MAX_VARIANTS, f"the study lists {count:,} variants, more than "
             f"{MAX_VARIANTS:,}", "split the study into several runs")
        for v in self.variants:
            need(isinstance(v, dict), "each [[variants]] entry must be a table",
                 "write [[variants]] then key = value lines")
            label = v.get("label") if isinstance(v, dict) else None
            need(label is None or (isinstance(label, str) and label.isprintable()
                                   and 0 < len(label) <= 200),
                 f"variant label {str(label)[:60]!r} must be a printable string of 1 to 200 "
                 "characters (no newline or control character)", "write a short one-line "
                 "label")
            bad = [k for k in _flatten(v) if k in NOT_VARIED]
            need(not bad, f"a variant sets {', '.join(bad)}, which every job must share",
                 "set it once at the top of the file")

    def check_schedule_and_gossip(self) -> None:
        """Validate ``switch_*`` and ``[gossip]`` (one :class:`AdfloraError` for the first
        problem)."""
        def need(ok: bool, problem: str, hint: str) -> None:
            if not ok:
                raise AdfloraError(problem, hint)

        g = self.gossip
        need(self.switch_schedule == "periodic" or self.switch_interval is None,
             f"switch_interval = {self.switch_interval} is set but switch_schedule = "
             f"{self.switch_schedule!r} chooses the interval itself",
             "remove switch_interval, or use switch_schedule = 'periodic'")
        need(0 < self.switch_eps < 1, f"switch_eps = {self.switch_eps} must lie in (0, 1)",
             "use e.g. switch_eps = 0.1 (the frozen block's error shrinks tenfold a phase)")
        need(self.switch_min >= 1, f"switch_min = {self.switch_min} must be at least 1",
             "use switch_min = 1")
        need(self.switch_min <= self.switch_max,
             f"switch_min = {self.switch_min} is larger than switch_max = {self.switch_max}",
             "use switch_min <= switch_max")
        need(self.switch_schedule != "feedback" or self.switch_min < self.rounds,
             f"the feedback schedule would never switch: switch_min = {self.switch_min} >= "
             f"rounds = {self.rounds}", "lower switch_min or run more rounds")
        from adflora_analysis.topology.asynchrony import check_gossip

        check_gossip(g.staleness, g.participation, g.model, g.speed_spread, g.clock_drift,
                     rounds=self.rounds, n_clients=self.n_clients)
        need(not g.clock_drift or self.switch_schedule != "feedback",
             "gossip.clock_drift needs a schedule with a fixed interval; the feedback schedule "
             "decides each switch from the federation's metrics of the round",
             "use switch_schedule = 'periodic' or 'topology' with clock_drift")
        need(not g.clock_drift or any(get_method(m).alternates for m in self.methods
                                      if m in METHODS),
             f"gossip.clock_drift = {g.clock_drift} changes nothing for "
             f"{', '.join(self.methods)}: none of them alternates the trained factor",
             "add adf-lora or rolora to methods, or remove clock_drift")

    @property
    def seed_list(self) -> list[int]:
        return expand_seeds(self.seeds)

    def switch_for(self, method: str) -> int:
        """T that ``method`` runs with: the config's ``switch_interval`` or its default."""
        return self.switch_interval or get_method(method).default_switch_interval

    def as_dict(self) -> dict:
        from adflora_analysis.config import to_dict

        return to_dict(self)


#: the most variants (sweep values x [[variants]]) one study may expand to; refused before
#: any variant is built
MAX_VARIANTS = 2_000
#: the most clients one study may simulate (refused before any state is built)
MAX_CLIENTS = 1_000_000


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"topology": {"q": 0.1}, "a.b": 1}`` -> ``{"topology.q": 0.1, "a.b": 1}`` (``label``
    and values that are not tables are kept as they are)."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "topology.params":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *head, last = key.split(".")
    for k in head:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise AdfloraError(f"{key!r}: {k!r} is not a table", "set a key inside a table")
    node[last] = copy.deepcopy(value)


def expand_study(cfg: C) -> list[tuple[str, C]]:
    """The labelled variants of a study, each a fully validated config of the same class.

    The cartesian product of ``cfg.sweep`` (dotted key -> list of values), then each table of
    ``cfg.variants`` (keys dotted or nested, an optional ``label``) on top of every combination.
    Values stay as typed in the file (no round trip through strings) and are validated by the
    config class like the file itself. A variant that sets a key of :data:`RESETTING_KEYS`
    replaces the whole ``[topology]`` table. A label is the sweep's ``key=value`` pairs followed
    by the variant's ``label`` (or its ``key=value`` pairs); no sweep and no variants give one
    variant, ``"base"``.

    Parameters
    ----------
    cfg : a config whose class derives from :class:`FederationConfig`.

    Returns
    -------
    list of (label, config), each with ``sweep = {}`` and ``variants = []``; sweep combinations
    outer, variants inner.

    Examples
    --------
    >>> study = FederationConfig(sweep={"switch_interval": [1, 5]},
    ...                          variants=[{"label": "ring", "topology.graph": "ring"},
    ...                                    {"topology": {"q": 0.2}}])
    >>> for label, v in expand_study(study):
    ...     print(f"{label:34} T={v.switch_interval} {v.topology.graph} q={v.topology.q}")
    switch_interval=1, ring            T=1 ring q=None
    switch_interval=1, topology.q=0.2  T=1 encounter q=0.2
    switch_interval=5, ring            T=5 ring q=None
    switch_interval=5, topology.q=0.2  T=5 encounter q=0.2

    A bad value names its variant; two variants with one label are refused:

    >>> bad = FederationConfig(variants=[{"topology.q": "high"}])
    >>> expand_study(bad)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: variant 'topology.q=high': config key 'topology.q' ...
    >>> twice = FederationConfig(variants=[{"label": "x", "lr": 0.1}, {"label": "x"}])
    >>> expand_study(twice)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: two variants share the label 'x' ...
    """
    from adflora_analysis.config import from_dict, to_dict

    base = to_dict(dataclasses.replace(cfg, sweep={}, variants=[]))
    sweeps = [[(k, v) for v in vals] for k, vals in cfg.sweep.items()]
    combos = list(itertools.product(*sweeps)) if sweeps else [()]
    out: list[tuple[str, C]] = []
    for combo in combos:
        for table in cfg.variants or [{}]:
            flat = _flatten(table)
            given = flat.pop("label", None)
            items = [*combo, *flat.items()]
            parts = [f"{k}={v}" for k, v in combo]
            parts += [str(given)] if given else [f"{k}={v}" for k, v in flat.items()]
            label = ", ".join(parts) or "base"
            data = copy.deepcopy(base)
            if any(k in RESETTING_KEYS for k, _ in items):
                data["topology"] = {}  # a new graph describes the whole topology
            try:
                for k, v in items:
                    _set_dotted(data, k, v)
                vcfg = from_dict(type(cfg), data)
            except AdfloraError as e:
                raise AdfloraError(f"variant {label!r}: {e.problem}", e.hint) from None
            out.append((str(label), vcfg))
    labels = [lbl for lbl, _ in out]
    for lbl in labels:
        if labels.count(lbl) > 1:
            raise AdfloraError(f"two variants share the label {lbl!r}",
                               "give each [[variants]] a unique label (or none)")
    for e in cfg.expect or []:
        for v in (e.get("variants") or []) if isinstance(e, dict) else []:
            if v not in labels:
                close = difflib.get_close_matches(str(v), labels, n=1)
                raise AdfloraError(f"[[expect]] names the variant {v!r}, which the study does "
                                   "not have", (f"did you mean {close[0]!r}? " if close else "")
                                   + "use a label of [[variants]] (or the sweep's key=value)")
    return out
