"""What a run needs of the machine, refused before it is spent: device, memory and disk.

The estimates are rough but honest upper-order figures (the dominant tensors and tables, not
every temporary): a run whose estimate exceeds what psutil reports as available memory, or
the free space of its output folder, is refused with one line saying how much it would need.
Available memory is the least of the machine's, the cgroup's and the process's
(:func:`available_memory`).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from adflora_analysis.errors import AdfloraError

ROW_MEMORY = 2500   # bytes per tidy row while tables are built (list of dicts + DataFrame)
ROW_DISK = 900      # bytes per tidy row on disk (JSON line + its share of the Parquet file)
MIX_ROW_MEMORY = 1000


#: glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_HEAP_KEPT: list[bool] = []


def reuse_large_allocations() -> bool:
    """Serve large CPU allocations from the reused heap instead of a fresh ``mmap`` each time
    (glibc only; a no-op returning False elsewhere). Process-wide, once; numbers unchanged.

    Why: glibc maps every block above its mmap threshold (at most 32 MB) fresh and unmaps it
    on free, so a round that allocates and frees tensors of 100s of MB (the synthetic
    testbed's state and bookkeeping temporaries at n >= 1e4 clients) page-faults all of them
    in again every time. Measured with ``benchmarks/synthetic.py``'s setting, one thread: at
    n = 1e5 the full-bookkeeping round took 10.9 s with the default and 7.7 s with the heap
    kept (n = 1e4: 0.90 -> 0.85 s), the growth from 1e4 to 1e5 12.2x -> 9.1x. The heap then
    keeps up to 2 GiB of freed memory at its top until the process ends.
    """
    if _HEAP_KEPT:
        return _HEAP_KEPT[0]
    ok = False
    try:
        import ctypes
        import ctypes.util
        import platform

        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_MAX, 0)
                      and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
                      and libc.mallopt(_M_TOP_PAD, 256 << 20))
    except (OSError, AttributeError):
        ok = False
    _HEAP_KEPT.append(ok)
    return ok


def check_device(device: str) -> str:
    """Validate a torch device string: known type, CUDA present when asked, index in range.

    >>> check_device("cpu")
    'cpu'
    >>> check_device("gpu0")
    Traceback (most recent call last):
    ...
    adflora_analysis.errors.AdfloraError: device = 'gpu0' is not a torch device (hint: use \
device = "cpu" or "cuda" / "cuda:0")
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AdfloraError(f"device = {device!r} is not a torch device",
                           'use device = "cpu" or "cuda" / "cuda:0"') from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AdfloraError(f"device = {device!r} but no CUDA GPU is available",
                               'use device = "cpu"')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AdfloraError(f"device = {device!r} but only {torch.cuda.device_count()} "
                               "CUDA device(s) exist", 'use device = "cuda:0"')
    elif dev.type != "cpu":
        raise AdfloraError(f"device = {device!r} is not supported", 'use "cpu" or "cuda"')
    return device


def _fmt(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


@dataclass
class Need:
    """Estimated bytes of memory and disk, by part (for the message)."""

    memory: dict[str, float] = field(default_factory=dict)
    disk: dict[str, float] = field(default_factory=dict)

    def add_variant(self, other: Need) -> None:
        """Merge the need of another variant run one after the other: tables (rows,
        checkpoints) add up, the rest is the larger of the two."""
        for mine, theirs in ((self.memory, other.memory), (self.disk, other.disk)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v if "rows" in k or k == "checkpoints" \
                    else max(mine.get(k, 0), v)

    def refuse_if_over(self, out: str | Path, mem_avail: float | None = None,
                       disk_free: float | None = None) -> None:
        """Raise one :class:`AdfloraError` line if the memory or disk estimate exceeds what is
        available (psutil's available memory; free space at ``out`` or its nearest parent)."""
        mem_avail = available_memory() if mem_avail is None else mem_avail
        disk_free = free_disk(out) if disk_free is None else disk_free
        for what, parts, have in (("memory", self.memory, mem_avail),
                                  ("disk", self.disk, disk_free)):
            total = sum(parts.values())
            if total > have:
                top = ", ".join(f"{k} {_fmt(v)}" for k, v in
                                sorted(parts.items(), key=lambda kv: -kv[1])[:3])
                raise AdfloraError(f"this run would need about {_fmt(total)} of {what} "
                                   f"({top}); {_fmt(have)} is available",
                                   "lower rounds, seeds, n_clients or the model/batch sizes, "
                                   "or split the study")


def _cgroup_room() -> float | None:
    """Bytes the process's cgroup may still allocate (v2 ``memory.max - memory.current``, or
    v1 ``limit - usage``), None without a limit."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for entry in line:
        _, ctrl, rel = entry.split(":", 2)
        base = (Path("/sys/fs/cgroup") / rel.lstrip("/") if ctrl == "" else
                Path("/sys/fs/cgroup/memory") / rel.lstrip("/") if "memory" in ctrl.split(",")
                else None)
        if base is None:
            continue
        names = (("memory.max", "memory.current") if ctrl == "" else
                 ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        for folder in (base, *base.parents):
            try:
                limit = (folder / names[0]).read_text().strip()
                used = float((folder / names[1]).read_text().strip())
            except (OSError, ValueError):
                continue
            if limit.isdigit() and float(limit) < 2 ** 60:
                return max(float(limit) - used, 0.0)
            break
    return None


def available_memory() -> float:
    """Bytes this process can still allocate: the least of psutil's available memory, the
    cgroup's remaining room (containers, systemd slices) and the address-space limit
    (``ulimit -v``) less what the process already maps."""
    import resource

    import psutil

    room = [float(psutil.virtual_memory().available)]
    cg = _cgroup_room()
    if cg is not None:
        room.append(cg)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        room.append(max(float(soft) - psutil.Process().memory_info().vms, 0.0))
    return min(room)


def free_disk(out: str | Path) -> float:
    """Free bytes of the file system that holds ``out`` (its nearest existing parent)."""
    p = Path(out).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p if p.is_dir() else p.parent).free


def synthetic_need(cfg, n_variants: int = 1) -> Need:
    """Estimate of a synthetic study (one variant's job at a time; every variant's rows).

    Dominant terms: the problem's data and Hessians per seed, client and layer, the stacked
    factors (with the copies a round makes), the W^t of every seed, the tidy
    metric rows of every (variant, method, seed, round, layer) and the mixing rows.
    """
    S, n, L = len(cfg.seed_list), cfg.n_clients, cfg.n_layers
    di, do, r, m = cfg.d_in, cfg.d_out, cfg.rank, cfg.samples_per_client
    b = 8 if cfg.dtype == "float64" else 4
    per = S * n * L
    data = per * (m * (di + do) * (8 + b) + 3 * di * (di + do) * 8)
    if getattr(cfg, "client_storage", "statistics") == "rows":
        # the rows in the run's dtype; one seed's float64 rows and target factors while they
        # are drawn; S_i, C_i of every client only while constants are measured
        data = per * m * (di + do) * b + n * L * (m + cfg.target_rank) * (di + do) * 8 * 2 \
            + (per * di * (di + do) * 8 * 2 if cfg.constants_every else 0)
    state = 4 * per * r * (di + do) * b
    from adflora_analysis.topology.config import w_bytes

    W = 3 * S * w_bytes(cfg.topology, n)    # dense n x n, or the sparse edge list at large n
    rows = n_variants * len(cfg.methods) * S * cfg.rounds * (L + 1)
    mix_rows = n_variants * S * cfg.rounds
    ck = 2 * per * r * (di + do) * b * len(cfg.methods) * n_variants if cfg.checkpoint_every \
        else 0
    return Need(memory={"problem data": data, "factors": state, "W^t": W,
                        "metric rows": rows * ROW_MEMORY, "mixing rows": mix_rows * MIX_ROW_MEMORY},
                disk={"metric rows": rows * ROW_DISK, "mixing rows": mix_rows * 100,
                      "checkpoints": ck})


def glue_need(cfg, hidden: int, layers: int, heads: int, adapter_bytes: int,
              model_bytes: int, client_rows: int | None = None) -> Need:
    """Estimate of a GLUE study: the model, the batch activations of one local step (fp32,
    kept for backward: about ``layers * B * s * (34 h + 5 a s) * 2`` bytes, Korthikanti et al.
    2022 doubled for fp32; B = ``batch_size``, at most a client's rows ``client_rows``), the
    clients' adapters with AdamW moments, evaluation activations and the metric rows."""
    B, s = min(cfg.batch_size, client_rows or cfg.batch_size), cfg.max_length
    act = layers * B * s * (34 * hidden + 5 * heads * s) * 2
    eval_act = layers * cfg.eval_batch_size * s * (4 * hidden + heads * s) * 4
    adapters = 4 * cfg.n_clients * adapter_bytes
    rows = len(cfg.methods) * len(cfg.seed_list) * cfg.rounds * (layers * 2 + 1)
    ck = 3 * cfg.n_clients * adapter_bytes * len(cfg.methods) * len(cfg.seed_list) \
        if cfg.checkpoint_every else 0
    return Need(memory={"model": model_bytes, "batch activations": act,
                        "eval activations": eval_act, "client adapters": adapters,
                        "metric rows": rows * ROW_MEMORY},
                disk={"metric rows": rows * ROW_DISK, "checkpoints": ck})


#: floating-point operations a second the time estimate assumes: a deliberately low figure
#: for one CPU core running many small batched kernels (the synthetic engine measured 1-5
#: GFLOP/s on this project's 2-core machine), so "beyond a day" is said early, not late
CPU_FLOPS = 1e9
DAY_S = 86_400.0


def synthetic_seconds(cfg) -> float:
    """A rough upper-order time of one synthetic variant: every method, seed, round, client,
    layer and local step does its minibatch gradient (about ``6 b r (d_in + d_out)`` flops)
    and the bookkeeping's full gradient (``4 m d_in d_out``), plus the ``topology_samples``
    draws of p (``n^2`` each), at :data:`CPU_FLOPS`."""
    S, n, L, K = len(cfg.seed_list), cfg.n_clients, cfg.n_layers, cfg.local_steps
    di, do, r, m, b = cfg.d_in, cfg.d_out, cfg.rank, cfg.samples_per_client, cfg.batch_size
    step = 6 * b * r * (di + do) + 4 * m * di * do
    work = len(cfg.methods) * S * cfg.rounds * n * L * K * step + cfg.topology_samples * n * n
    return work / CPU_FLOPS


def say_if_beyond_a_day(seconds: float, what: str = "this study") -> str | None:
    """The one-line note printed before a study whose estimated time is beyond a day (None
    otherwise).

    >>> say_if_beyond_a_day(100) is None, "about 3.0 days" in say_if_beyond_a_day(3 * 86400)
    (True, True)
    """
    if seconds <= DAY_S:
        return None
    return (f"note: {what} may take about {seconds / DAY_S:.1f} days on this machine's CPU "
            "(a rough estimate; --dry-run lists its jobs); stop it with Ctrl-C and resume "
            "later with --resume, or split it")
