"""``adflora plan``: predict memory per device and time per round of a decentralized LoRA study
on a causal language model, from the model's config alone (no weights are read).

The model is a local ``config.json``, a folder holding one, a built-in shape
(:data:`SHAPES`), an lm testbed tiny model or a hub name resolved only through the local
Hugging Face cache. Every term and formula is in docs/plan.md; in short (bytes, ``e`` =
bytes per element of ``dtype``, ``T = b s`` tokens of one local step, ``A`` = adapter
parameters of one client):

- base weights ``P e`` once per process (P counted from the config);
- adapters ``A 4`` in the model (peft keeps LoRA factors in fp32) plus ``n A 4`` for the
  stacked client states and ``n A 4`` for the gossip buffers (a copy of the mixed blocks of
  every client: an upper bound, the in-process mixer works in place in chunks);
- gradients ``A 4`` and AdamW moments ``2 A 4`` of the client that trains (clients train one
  after another on one device, as in the GLUE runner); with ``optimizer_reset = "never"``
  every client keeps its moments: ``n 2 A 4``;
- activations per layer ``T e (c_h h + c_q (h + 2 h_kv) + c_I I)`` plus the inputs LoRA keeps
  (fp32) plus, with attention dropout, ``3 b a s^2 e`` (constants per family measured with
  ``torch.autograd.graph.saved_tensors_hooks``, see docs/plan.md); with gradient
  checkpointing only each layer's input ``T h e`` plus one layer recomputed in backward; with
  LoRA dropout every adapted module keeps its own dropped input and mask;
- logits: ``4 T V 4`` at the loss's backward (logits, saved log-softmax, their gradients;
  transformers computes the loss in fp32); ``3 T V 4 + T V e`` in 16-bit.

Time per round: ``n_p K T F / (peak MFU)`` (``n_p`` clients per process, processes in
parallel) with ``F = 4 P + 6 A + 12 L s h_q`` FLOPs per token
(forward 2P, backward through the frozen base 2P for the activations' gradients, 6A for the
adapters, attention scores; ``+2P + 4 L s h_q`` with gradient checkpointing).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from adflora_analysis.errors import AdfloraError, unknown_name

GIB = 1024**3

# --- built-in shapes: the relevant keys of each model's config.json -------------------------

SHAPES: dict[str, dict] = {
    # meta-llama/Llama-2-7b-hf config.json
    "llama-2-7b": {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32,
                   "intermediate_size": 11008, "vocab_size": 32000,
                   "tie_word_embeddings": False},
    # meta-llama/Llama-2-13b-hf config.json
    "llama-2-13b": {"model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40,
                    "num_attention_heads": 40, "num_key_value_heads": 40,
                    "intermediate_size": 13824, "vocab_size": 32000,
                    "tie_word_embeddings": False},
    # a 1 B random Llama (the lm testbed's mid-size shape; Llama-2 vocabulary)
    "llama-1b": {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
                 "num_attention_heads": 16, "num_key_value_heads": 16,
                 "intermediate_size": 5504, "vocab_size": 32000, "tie_word_embeddings": False},
    # Qwen/Qwen2.5-0.5B config.json (q, k, v have biases; tied head)
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2,
                     "intermediate_size": 4864, "vocab_size": 151936,
                     "tie_word_embeddings": True},
    # openai-community/gpt2 config.json (GPT-2 small; tied head, dropout 0.1)
    "gpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
             "vocab_size": 50257, "n_positions": 1024, "attn_pdrop": 0.1,
             "resid_pdrop": 0.1, "embd_pdrop": 0.1},
}

# --- devices: memory (bytes, as nvidia-smi reports it) and dense peak FLOP/s ----------------

DEVICES: dict[str, dict] = {
    # NVIDIA H100 SXM 80 GB datasheet: 989 TFLOP/s bf16 dense, 67 TFLOP/s fp32 (no TF32)
    "h100": {"memory": 81559 * 2**20, "peak": {"bfloat16": 989e12, "float16": 989e12,
                                                "float32": 67e12}},
    # H200: H100's compute with 141 GB HBM3e
    "h200": {"memory": 143771 * 2**20, "peak": {"bfloat16": 989e12, "float16": 989e12,
                                                 "float32": 67e12}},
    # A100 80 GB datasheet: 312 TFLOP/s bf16 dense, 19.5 TFLOP/s fp32
    "a100": {"memory": 81920 * 2**20, "peak": {"bfloat16": 312e12, "float16": 312e12,
                                                "float32": 19.5e12}},
    "cpu": {"memory": None, "peak": None},   # available RAM; a measured matmul
}
GPU_RUNTIME_BYTES = 1 * GIB   # CUDA context, cuBLAS workspace, allocator slack

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# the lm testbed's defaults (adflora_analysis.lm.model.DEFAULT_TARGETS): attention projections;
# with ``lora_mlp`` also the MLP
DEFAULT_TARGETS = {"llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
                   "gpt2": ("c_attn", "c_proj")}
MLP_TARGETS = {"llama": ("gate_proj", "up_proj", "down_proj"), "gpt2": ("c_fc",)}

# saved activations per layer without LoRA, in units of T*e (measured with
# torch.autograd.graph.saved_tensors_hooks, docs/plan.md): (c_h, c_qkv, c_I) for
# c_h h + c_qkv (h + 2 h_kv) + c_I I. llama: layer input, residual, attention output (3 h),
# q, k, v, SwiGLU gate, silu(gate), up (3 I); gpt2: 7 h + 4 I (GELU-tanh intermediates,
# dropout masks) with q, k, v inside c_attn's output.
ACT_CONSTANTS = {"llama": (3.0, 1.0, 3.0), "gpt2": (7.0, 0.0, 4.0)}
# a LoRA on a frozen linear makes autograd keep that linear's input (for lora_A's gradient);
# modules sharing an input share the saved tensor. target -> (input group, width: "h" | "I")
LORA_INPUTS = {"q_proj": ("attn_in", "h"), "k_proj": ("attn_in", "h"),
               "v_proj": ("attn_in", "h"), "o_proj": ("o_in", "h"),
               "gate_proj": ("mlp_in", "h"), "up_proj": ("mlp_in", "h"),
               "down_proj": ("down_in", "I"), "c_attn": ("attn_in", "h"),
               "c_proj": ("c_proj_in", "hI"), "c_fc": ("mlp_in", "h")}


@dataclass
class Arch:
    """A decoder-only transformer's shape, normalised from a Hugging Face config."""

    family: str                 # "llama" (llama, mistral, qwen2) or "gpt2"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    positions: int = 0          # learned position embeddings (gpt2)
    attn_dropout: float = 0.0
    source: str = ""

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def modules(self) -> list[tuple[str, int, int, bool]]:
        """Linear modules of one layer: (name, d_in, d_out, has_bias)."""
        h, kv, i_ = self.hidden, self.kv_dim, self.intermediate
        if self.family == "gpt2":
            return [("attn.c_attn", h, 3 * h, True), ("attn.c_proj", h, h, True),
                    ("mlp.c_fc", h, i_, True), ("mlp.c_proj", i_, h, True)]
        b = self.qkv_bias
        return [("self_attn.q_proj", h, h, b), ("self_attn.k_proj", h, kv, b),
                ("self_attn.v_proj", h, kv, b), ("self_attn.o_proj", h, h, False),
                ("mlp.gate_proj", h, i_, False), ("mlp.up_proj", h, i_, False),
                ("mlp.down_proj", i_, h, False)]

    def params(self) -> int:
        """Parameters of the base model (embeddings, layers, norms, LM head unless tied)."""
        h = self.hidden
        per_layer = sum(di * do + (do if bias else 0) for _, di, do, bias in self.modules())
        if self.family == "gpt2":
            per_layer += 2 * 2 * h                       # ln_1, ln_2 (weight + bias)
            rest = self.vocab * h + self.positions * h + 2 * h   # wte, wpe, ln_f
        else:
            per_layer += 2 * h                           # two RMSNorm weights
            rest = self.vocab * h + h                    # embed_tokens, final norm
        head = 0 if self.tied else self.vocab * h
        return self.layers * per_layer + rest + head

    def adapter_params(self, targets: tuple[str, ...], rank: int) -> int:
        """LoRA parameters of one client: sum over targeted modules of r (d_in + d_out)
        (peft matches a target by the module name's last component)."""
        names = {m[0].rsplit(".", 1)[1] for m in self.modules()}
        bad = [t for t in targets if t not in names]
        if bad:
            raise unknown_name(f"LoRA target for a {self.family} model", bad[0], names)
        per_layer = sum(rank * (di + do) for name, di, do, _ in self.modules()
                        if name.rsplit(".", 1)[1] in targets)
        return self.layers * per_layer


def arch_from_config(cfg: dict, source: str = "") -> Arch:
    """An :class:`Arch` from a Hugging Face ``config.json`` dict (llama, mistral, qwen2,
    gpt2 families)."""
    mt = str(cfg.get("model_type", "")).lower()
    try:
        if mt == "gpt2":
            h = int(cfg["n_embd"])
            return Arch("gpt2", h, int(cfg["n_layer"]), int(cfg["n_head"]), int(cfg["n_head"]),
                        int(cfg.get("n_inner") or 4 * h), int(cfg["vocab_size"]), True,
                        True, int(cfg.get("n_positions", 1024)),
                        float(cfg.get("attn_pdrop", 0.1)), source)
        if mt in ("llama", "mistral", "qwen2"):
            heads = int(cfg["num_attention_heads"])
            return Arch("llama", int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), heads,
                        int(cfg.get("num_key_value_heads") or heads),
                        int(cfg["intermediate_size"]), int(cfg["vocab_size"]),
                        bool(cfg.get("tie_word_embeddings", mt == "qwen2")),
                        bool(cfg.get("attention_bias", mt == "qwen2")), 0,
                        float(cfg.get("attention_dropout", 0.0)), source)
    except KeyError as e:
        raise AdfloraError(f"model config {source or '(dict)'} has no {e.args[0]!r}",
                           "pass a complete config.json") from None
    raise AdfloraError(f"model_type {mt!r} of {source or 'the config'} is not supported",
                       "use a llama, mistral, qwen2 or gpt2 config")


def resolve_model(name: str) -> Arch:
    """An :class:`Arch` from a config.json path, a folder holding one, a built-in shape name
    or a hub name found in the local Hugging Face cache (never downloads)."""
    p = Path(name).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if p.is_file():
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise AdfloraError(f"cannot read model config {p}: {e}",
                               "pass a config.json file") from None
        return arch_from_config(cfg, str(p))
    if name.lower().startswith("tiny-"):   # the lm testbed's locally built tiny models
        try:
            from adflora_analysis.lm.tiny import tiny_config, tiny_family

            family = tiny_family(name)
            if family is not None:
                return arch_from_config(tiny_config(family).to_dict(), f"lm testbed {name}")
        except ImportError:   # pragma: no cover - the lm testbed is not installed
            pass
    if name.lower() in SHAPES:
        return arch_from_config(SHAPES[name.lower()], f"built-in shape {name.lower()}")
    if "/" in name and not name.startswith((".", "/")):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:   # noqa: BLE001 - a malformed repo id is "not in the cache"
            cached = None
        if isinstance(cached, str) and Path(cached).is_file():
            return arch_from_config(json.loads(Path(cached).read_text(encoding="utf-8")),
                                    f"{name} (local HF cache)")
        raise AdfloraError(f"model {name!r} is not in the local Hugging Face cache and "
                           "plan never downloads",
                           f"pass its config.json, or one of: {', '.join(SHAPES)}")
    raise unknown_name("model (not a file, built-in shape or cached hub name)", name, SHAPES)


# --- the plan -------------------------------------------------------------------------------


@dataclass
class PlanInput:
    """What a plan depends on (CLI flags or an lm study TOML)."""

    model: str
    clients: int = 10
    rank: int = 8
    batch: int = 8
    seq: int = 512
    device: str = "h100"
    dtype: str = "bfloat16"
    targets: tuple[str, ...] | None = None
    gradient_checkpointing: bool = False
    local_steps: int = 1
    optimizer_reset: str = "round"
    mfu: float = 0.4
    lora_mlp: bool = False
    lora_dropout: float = 0.0

    def validate(self) -> None:
        """One :class:`AdfloraError` per bad value."""
        for k in ("clients", "rank", "batch", "seq", "local_steps"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise AdfloraError(f"{k} = {v!r} must be an integer of at least 1",
                                   f"e.g. --{k.replace('_', '-')} 8")
        if not (isinstance(self.mfu, (int, float)) and math.isfinite(self.mfu)
                and 0 < self.mfu <= 1):
            raise AdfloraError(f"mfu = {self.mfu!r} must lie in (0, 1]", "e.g. --mfu 0.4")
        if not (isinstance(self.lora_dropout, (int, float))
                and 0 <= self.lora_dropout < 1):
            raise AdfloraError(f"lora_dropout = {self.lora_dropout!r} must lie in [0, 1)",
                               "e.g. --lora-dropout 0.05")
        if self.device not in DEVICES:
            raise unknown_name("device", self.device, DEVICES)
        if self.dtype not in DTYPE_BYTES:
            raise unknown_name("dtype", self.dtype, DTYPE_BYTES)
        if self.optimizer_reset not in ("round", "never"):
            raise unknown_name("optimizer_reset", self.optimizer_reset, ("round", "never"))


@dataclass
class Plan:
    """A plan's numbers: memory terms (bytes) of one process holding ``clients_per_process``
    clients, FLOPs and time per round of the whole study."""

    inp: dict
    model_source: str
    params: int
    adapter_params: int
    memory: dict[str, int] = field(default_factory=dict)
    total_bytes: int = 0
    device_bytes: int = 0
    fixed_bytes: int = 0
    per_client_bytes: int = 0
    clients_per_device: int = 0
    processes: int = 0
    flops_per_token: float = 0.0
    peak_flops: float = 0.0
    seconds_per_round: float = 0.0
    fits: bool = True

    def to_json(self) -> dict:
        d = asdict(self)
        d["peak_memory_bytes"] = self.total_bytes
        d["peak_memory_gib"] = self.total_bytes / GIB
        d["device_memory_gib"] = self.device_bytes / GIB
        d["tokens_per_s"] = (self.peak_flops * self.inp["mfu"] / self.flops_per_token)
        return d


def activation_bytes(a: Arch, b: int, s: int, e: int, gc: bool,
                     targets: tuple[str, ...] = ("q_proj", "v_proj"), rank: int = 8,
                     lora_dropout: float = 0.0, cpu: bool = False) -> tuple[int, int]:
    """(saved activations of all layers, logits at the loss's backward) in bytes, for one
    local step of ``b`` rows of ``s`` tokens in a dtype of ``e`` bytes with LoRA of rank
    ``rank`` on ``targets``. LoRA's saved tensors are fp32 (peft casts inputs to the adapter's
    dtype); with ``lora_dropout`` > 0 every adapted module keeps its own dropped input and
    mask (a float mask on CPU, 1 byte on a GPU)."""
    T = b * s
    h, i_ = a.hidden, a.intermediate
    ch, cq, ci = ACT_CONSTANTS[a.family]
    width = ch * h + cq * (h + 2 * a.kv_dim) + ci * i_   # in units of e
    # LoRA's saved tensors are fp32 whatever e (peft casts the input to the adapter's dtype)
    if lora_dropout > 0:    # each module: dropped input + mask, nothing shared
        mask = 4 if cpu else 1
        lora = sum(di for name, di, _, _ in a.modules()
                   if name.rsplit(".", 1)[1] in targets) * (4 + mask)
    else:                   # inputs kept for lora_A's gradient, shared within a group
        groups = {LORA_INPUTS[t] for t in targets if t in LORA_INPUTS}
        lora = 4 * sum({"h": h, "I": i_, "hI": h + i_}[w] for _, w in groups)
    n_lora = sum(2 if (a.family == "gpt2" and t == "c_proj") else 1 for t in targets)
    lora += 4 * n_lora * rank   # lora_A's output, kept for lora_B's gradient
    layer = T * (e * width + lora)
    if e < 4 and a.family == "llama":
        layer += 2 * T * h * 4               # RMSNorm upcasts its input to fp32
    if a.attn_dropout > 0:                   # the math attention path keeps s x s tensors
        layer += 3 * b * a.heads * s * s * e
    # at the loss's backward: the logits, the saved log-softmax and their two gradients, fp32
    # (4 T V 4); in 16-bit the model's logits are e bytes and their fp32 copy for the loss is
    # not kept (3 T V 4 + T V e)
    logits = 4 * T * a.vocab * 4 if e == 4 else 3 * T * a.vocab * 4 + T * a.vocab * e
    outside = 2 * T * h * e                  # final norm
    if gc:   # layer inputs kept; one layer recomputed in backward (after the logits freed)
        kept = a.layers * T * h * e + outside
        return int(kept + max(0, layer + 2 * T * h * e - logits)), int(logits)
    return int(a.layers * layer + outside), int(logits)


def cpu_peak_flops() -> float:
    """FLOP/s of a fp32 1024^3 matmul on this machine (best of 3), the cpu 'peak'."""
    import time

    import torch

    x = torch.randn(1024, 1024)
    x @ x   # warm-up
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        x @ x
        best = min(best, time.perf_counter() - t0)
    return 2 * 1024**3 / best


def make_plan(inp: PlanInput, *, arch: Arch | None = None,
              device_bytes: int | None = None, peak_flops: float | None = None) -> Plan:
    """Predict memory per device and time per round (see module doc for the formulas).
    ``device_bytes``/``peak_flops`` override the device's (cpu: available RAM, measured)."""
    inp.validate()
    a = arch or resolve_model(inp.model)
    targets = tuple(inp.targets) if inp.targets else (
        DEFAULT_TARGETS[a.family] + (MLP_TARGETS[a.family] if inp.lora_mlp else ()))
    e = DTYPE_BYTES[inp.dtype]
    P, A = a.params(), a.adapter_params(targets, inp.rank)
    dev = DEVICES[inp.device]
    if device_bytes is None:
        if dev["memory"] is not None:
            device_bytes = dev["memory"]
        else:
            import psutil

            device_bytes = int(psutil.virtual_memory().available)
    if peak_flops is None:
        peak_flops = dev["peak"][inp.dtype] if dev["peak"] else cpu_peak_flops()
    acts, logits = activation_bytes(a, inp.batch, inp.seq, e, inp.gradient_checkpointing,
                                    targets, inp.rank, inp.lora_dropout, inp.device == "cpu")
    runtime = GPU_RUNTIME_BYTES if inp.device != "cpu" else 0
    fixed = {"base_weights": P * e, "adapter_in_model": 4 * A, "gradients": 4 * A,
             "optimizer_active": 2 * 4 * A, "activations": acts, "logits": logits,
             "runtime": runtime}
    per_client = 4 * A + 4 * A + (2 * 4 * A if inp.optimizer_reset == "never" else 0)
    fixed_sum = sum(fixed.values())
    fit = max(0, (device_bytes - fixed_sum) // per_client)
    n = inp.clients
    here = min(n, fit) if fit else n
    processes = math.ceil(n / fit) if fit else 0
    memory = {**fixed, "client_states": here * 4 * A, "gossip_buffers": here * 4 * A,
              "optimizer_kept": here * 2 * 4 * A if inp.optimizer_reset == "never" else 0}
    total = sum(memory.values())
    L, hq = a.layers, a.hidden
    F = 4 * P + 6 * A + 12 * L * inp.seq * hq
    if inp.gradient_checkpointing:
        F += 2 * P + 4 * L * inp.seq * hq
    per_process = math.ceil(n / processes) if processes else n   # processes run in parallel
    tokens = per_process * inp.local_steps * inp.batch * inp.seq
    secs = tokens * F / (peak_flops * inp.mfu)
    return Plan(inp=asdict(inp) | {"targets": list(targets)}, model_source=a.source,
                params=P, adapter_params=A, memory=memory, total_bytes=total,
                device_bytes=int(device_bytes), fixed_bytes=fixed_sum,
                per_client_bytes=per_client, clients_per_device=int(fit),
                processes=processes, flops_per_token=float(F), peak_flops=float(peak_flops),
                seconds_per_round=secs, fits=fit >= 1)


# --- reading an lm study TOML ---------------------------------------------------------------

_TOML_KEYS = {"model": "model", "n_clients": "clients", "clients": "clients", "rank": "rank",
              "batch_size": "batch", "batch": "batch", "max_length": "seq", "seq": "seq",
              "dtype": "dtype", "gradient_checkpointing": "gradient_checkpointing",
              "device": "device", "lora_targets": "targets", "local_steps": "local_steps",
              "optimizer_reset": "optimizer_reset",
              "lora_mlp": "lora_mlp", "dropout": "lora_dropout",
              "lora_dropout": "lora_dropout"}
# the lm testbed's defaults (LmConfig) for keys a study TOML leaves out
LM_DEFAULTS = {"model": "tiny-llama", "dtype": "float32", "batch": 8, "seq": 128, "rank": 8,
               "local_steps": 10, "lora_dropout": 0.05, "clients": 10,
               "optimizer_reset": "round", "gradient_checkpointing": False,
               "lora_mlp": False}


def _flat(d: dict, out: dict) -> dict:
    for k, v in d.items():
        if isinstance(v, dict):
            _flat(v, out)
        else:
            out.setdefault(k, v)
    return out


def read_study(path: Path) -> dict:
    """PlanInput fields from an lm study TOML (keys anywhere in its tables; unknown keys are
    ignored; keys left out take the lm testbed's defaults, :data:`LM_DEFAULTS`;
    ``device = "cuda"`` means h100)."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise AdfloraError(f"cannot read study config {path}: {e}",
                           "pass an lm study TOML or use --model") from None
    flat = _flat(raw, {})
    out: dict = {}
    for k, field_ in _TOML_KEYS.items():
        if k in flat and field_ not in out:
            out[field_] = flat[k]
    if isinstance(out.get("model"), dict):
        out["model"] = out["model"].get("name")
    if isinstance(out.get("targets"), str):
        out["targets"] = tuple(t.strip() for t in out["targets"].split(",") if t.strip())
    elif out.get("targets") is not None:
        out["targets"] = tuple(out["targets"])
    if str(out.get("device", "")).startswith("cuda"):
        out["device"] = "h100"
    return {**LM_DEFAULTS, **out}


# --- printing -------------------------------------------------------------------------------

LABELS = {"base_weights": "base weights (P e)", "adapter_in_model": "adapter in model (A 4)",
          "gradients": "adapter gradients (A 4)", "optimizer_active": "AdamW moments, "
          "training client (2 A 4)", "activations": "activations", "logits":
          "logits + loss (fp32)", "runtime": "CUDA runtime", "client_states":
          "client adapters (n A 4)", "gossip_buffers": "gossip buffers (n A 4)",
          "optimizer_kept": "AdamW kept per client (n 2 A 4)"}


def _gib(x: float) -> str:
    """Bytes as GiB (MiB below 1 GiB), right-aligned."""
    return f"{x / GIB:9.2f} GiB" if x >= GIB else f"{x / 2**20:9.1f} MiB"


def format_plan(p: Plan) -> str:
    """A readable table of a plan."""
    i = p.inp
    here = min(i["clients"], p.clients_per_device) if p.clients_per_device else i["clients"]
    lines = [f"plan: {i['model']} ({p.model_source}) on {i['device']}, {i['dtype']}, "
             f"{i['clients']} clients, rank {i['rank']} on {','.join(i['targets'])}, "
             f"batch {i['batch']} x seq {i['seq']}, gradient checkpointing "
             f"{'on' if i['gradient_checkpointing'] else 'off'}",
             f"  base parameters P = {p.params:,}; adapter parameters per client "
             f"A = {p.adapter_params:,}",
             f"memory of one process holding {here} client(s):"]
    lines += [f"  {LABELS[k]:38s}{_gib(v)}" for k, v in p.memory.items() if v]
    total, dev = _gib(p.total_bytes).strip(), _gib(p.device_bytes).strip()
    lines += [f"  {'total':38s}{total:>13s}  of {dev} "
              f"({100 * p.total_bytes / p.device_bytes:.0f} %)",
              f"clients per device: {p.clients_per_device} (fixed {_gib(p.fixed_bytes).strip()}"
              f" + {p.per_client_bytes / 2**20:.1f} MiB per client); processes needed: "
              f"{p.processes}",
              f"time per round: {p.seconds_per_round:.3g} s ({here} clients one after another x "
              f"{i['local_steps']} step(s) x {i['batch'] * i['seq']:,} tokens x "
              f"{p.flops_per_token:.3g} FLOP/token at {p.peak_flops / 1e12:.3g} TFLOP/s x "
              f"MFU {i['mfu']})"]
    return "\n".join(lines)


def check_fits(p: Plan) -> None:
    """An :class:`AdfloraError` when not even one client fits the device."""
    if not p.fits:
        i = p.inp
        raise AdfloraError(
            f"plan needs {p.fixed_bytes / GIB:.1f} GiB for one client of {i['model']} "
            f"(batch {i['batch']}, seq {i['seq']}, {i['dtype']}) but {i['device']} has "
            f"{p.device_bytes / GIB:.1f} GiB",
            "lower --batch or --seq"
            + ("" if i["gradient_checkpointing"] else ", add --gradient-checkpointing")
            + (", use --dtype bfloat16" if i["dtype"] == "float32" else "")
            + ", use a larger device, or pass --allow-over to print the plan anyway")


def plan(
    config: Path = typer.Argument(None, help="An lm study TOML (model, n_clients, rank, "
                                  "batch_size, max_length, dtype, ...); flags override it."),
    model: str = typer.Option(None, "--model", help="config.json, a folder with one, a "
                              f"built-in shape ({', '.join(SHAPES)}), tiny-llama etc. or a "
                              "cached hub name."),
    clients: int = typer.Option(None, "--clients", help="Number of clients n (default 10)."),
    rank: int = typer.Option(None, "--rank", help="LoRA rank r (default 8)."),
    batch: int = typer.Option(None, "--batch", help="Rows per local step b (default 8)."),
    seq: int = typer.Option(None, "--seq", help="Tokens per row s (default 512)."),
    device: str = typer.Option(None, "--device", help="h100, h200, a100 or cpu "
                               "(default h100)."),
    dtype: str = typer.Option(None, "--dtype", help="bfloat16, float16 or float32 "
                              "(default bfloat16)."),
    targets: str = typer.Option(None, "--targets", help="LoRA target modules, comma-"
                                "separated (default: the lm testbed's q_proj,k_proj,v_proj,"
                                "o_proj; gpt2: c_attn,c_proj)."),
    gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/"
                                                "--no-gradient-checkpointing",
                                                help="Keep only layer inputs (default off)."),
    local_steps: int = typer.Option(None, "--local-steps", help="Local steps per round K "
                                    "(default 1)."),
    optimizer_reset: str = typer.Option(None, "--optimizer-reset", help="round (fresh AdamW "
                                        "per client per round, the default) or never."),
    lora_dropout: float = typer.Option(None, "--lora-dropout", help="LoRA dropout p: each "
                                       "adapted module then keeps its own dropped input "
                                       "(default 0; a study TOML: its dropout, else 0.05)."),
    mfu: float = typer.Option(None, "--mfu", help="Assumed model FLOPs utilisation "
                              "(default 0.4)."),
    allow_over: bool = typer.Option(False, "--allow-over", help="Print a plan that does "
                                    "not fit instead of failing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Predict memory per device, clients per device and time per round of an lm study,
    from the model's config only (no weights are read; formulas in docs/plan.md).

    Example: adflora plan --model llama-2-7b --clients 10 --rank 8 --batch 8 --seq 512
    --device h100 --gradient-checkpointing
    """
    fields = read_study(config) if config is not None else {}
    flags = {"model": model, "clients": clients, "rank": rank, "batch": batch, "seq": seq,
             "device": device, "dtype": dtype, "gradient_checkpointing": gradient_checkpointing,
             "local_steps": local_steps, "optimizer_reset": optimizer_reset, "mfu": mfu,
             "lora_dropout": lora_dropout,
             "targets": tuple(t.strip() for t in targets.split(",") if t.strip())
             if targets else None}
    fields.update({k: v for k, v in flags.items() if v is not None})
    if not fields.get("model"):
        raise AdfloraError("no model to plan", "pass CONFIG (an lm study TOML) or --model")
    fields["model"] = str(fields["model"])
    fields["device"] = str(fields.get("device", "h100")).lower()
    p = make_plan(PlanInput(**fields))
    if not allow_over:
        check_fits(p)
    if as_json:
        typer.echo(json.dumps(p.to_json()))
    else:
        typer.echo(format_plan(p))


if __name__ == "__main__":  # pragma: no cover - `adflora plan` once registered in cli.py
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _app.command()(plan)
    try:
        _app(standalone_mode=False)
    except AdfloraError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
