"""One frozen causal LM with a peft LoRA slot, shared by every client (as
:class:`~adflora_analysis.glue.model.GlueModel`: adapters live outside the model as a stacked
:class:`~adflora_analysis.core.state.LoraState`, ``A[l]`` (n, r, d_in), ``B[l]`` (n, d_out, r),
copied in and out around each client's local steps).

Every check that can fail runs before any weight is loaded (:func:`preflight`): the model's
config (one line when a hub model is neither cached nor reachable), its family's default
targets, the targets against the module names of a meta-device model built from the config,
the rank against those modules' sizes, and ``max_length`` against the context.

>>> default_targets("qwen2"), default_targets("gpt2", mlp=True)
(['q_proj', 'k_proj', 'v_proj', 'o_proj'], ['c_attn', 'c_proj', 'c_fc'])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.model import GlueModel, pair_lora, quiet_transformers
from adflora_analysis.lm.tiny import tiny_config, tiny_family, tiny_folder

_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
_MLP = ["gate_proj", "up_proj", "down_proj"]
#: model_type -> (attention targets, MLP targets)
DEFAULT_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    **{k: (_ATTN, _MLP) for k in ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma",
                                  "gemma2", "olmo", "olmo2")},
    "gpt2": (["c_attn", "c_proj"], ["c_fc"]),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_targets(model_type: str, mlp: bool = False) -> list[str]:
    """The family's LoRA targets (attention projections, plus the MLP with ``mlp``)."""
    attn, ff = DEFAULT_TARGETS[model_type]
    return list(attn) + (list(ff) if mlp else [])


@dataclass
class Resolved:
    """What :func:`preflight` found: where the weights are (``path``; None for a tiny model not
    built yet), ``family`` (tiny name's family or None), the config and the checked targets."""

    name: str
    path: str | None
    kind: str
    family: str | None
    config: object
    targets: list[str]
    context: int | None


def resolve_model(name: str) -> tuple[str, str]:
    """``(path_or_hub_name, "local" | "hub")``. Unlike the GLUE resolver, a hub name may hold
    dots (``Qwen/Qwen2.5-0.5B``); a name that looks like a path must be a folder."""
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p), "local"
    if name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1:
        raise AdfloraError(f"model {name!r} is neither a folder nor a hub name",
                           "check the path, or use model=tiny-llama (built locally)")
    return name, "hub"


def load_config(name: str, seed: int = 0) -> tuple[object, str | None, str, str | None]:
    """``(config, path, kind, tiny family)`` of ``name`` without loading weights."""
    quiet_transformers()
    fam = tiny_family(name)
    if fam is not None:
        return tiny_config(fam), None, "tiny", fam
    from transformers import AutoConfig

    path, kind = resolve_model(name)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True), path, kind, None
    except Exception:  # noqa: BLE001 - not cached, in whatever form the hub client says it
        if kind != "hub":
            raise AdfloraError(f"model folder {path!r} has no readable config.json",
                               "point model= at a save_pretrained folder") from None
    from adflora_analysis.glue.data import hub_reachable

    if not hub_reachable():
        raise AdfloraError(
            f"model {name!r} is not in the local cache and the Hugging Face hub cannot be "
            "reached (offline)", "pass model=DIR (a save_pretrained folder), set HF_HOME to a "
            "cache that holds it, or use model=tiny-llama (built locally)")
    return AutoConfig.from_pretrained(path), path, kind, None


def adaptable_modules(config) -> dict[str, tuple[int, int]]:
    """Full module name -> (d_in, d_out) of every linear (or GPT-2 Conv1D) layer of a model
    built from ``config`` on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(config)
    out = {}
    for n, mod in m.named_modules():
        if isinstance(mod, nn.Linear):
            out[n] = (mod.in_features, mod.out_features)
        elif isinstance(mod, Conv1D):
            out[n] = tuple(mod.weight.shape)   # Conv1D weight is (d_in, d_out)
    return out


def context_length(config) -> int | None:
    """``max_position_embeddings`` (or GPT-2's ``n_positions``), None if unsaid."""
    for k in ("max_position_embeddings", "n_positions"):
        v = getattr(config, k, None)
        if isinstance(v, int):
            return v
    return None


def preflight(cfg) -> Resolved:
    """Check ``cfg``'s model, targets, rank and sequence length before any weight is loaded
    (one :class:`AdfloraError` line for the first problem)."""
    config, path, kind, fam = load_config(cfg.model)
    mt = getattr(config, "model_type", "?")
    targets = list(cfg.lora_targets)
    if not targets:
        if mt not in DEFAULT_TARGETS:
            raise AdfloraError(f"model family {mt!r} has no default LoRA targets",
                               "set lora_targets, e.g. lora_targets = [\"q_proj\", \"v_proj\"]"
                               f" (known families: {', '.join(sorted(DEFAULT_TARGETS))})")
        targets = default_targets(mt, cfg.lora_mlp)
    mods = adaptable_modules(config)
    leaves = sorted({n.split(".")[-1] for n in mods if n != "lm_head"})
    bad = [t for t in targets if t not in leaves]
    if bad:
        raise AdfloraError(f"lora_targets {bad} match no linear layer of {cfg.model!r} "
                           f"({mt})", f"choose from: {', '.join(leaves)}")
    for n, (di, do) in mods.items():
        if n.split(".")[-1] in targets and cfg.rank > min(di, do):
            raise AdfloraError(f"rank = {cfg.rank} is larger than layer {n} ({do} x {di})",
                               f"use rank <= {min(di, do)}")
    ctx = context_length(config)
    if ctx is not None and cfg.max_length > ctx:
        raise AdfloraError(f"max_length = {cfg.max_length} is longer than the model's context "
                           f"({ctx} positions)", f"use max_length <= {ctx}")
    return Resolved(cfg.model, path, kind, fam, config, targets, ctx)


class LmModel(GlueModel):
    """The shared causal LM, peft-wrapped, with name-paired access to its adapter (the
    :class:`~adflora_analysis.glue.model.GlueModel` interface: ``load_client``,
    ``load_factors``, ``set_trainable``, ``initial_state``, ``adapter_bytes``; no head).

    ``res``: :func:`preflight`'s result for ``cfg`` (computed here when not given).
    """

    def __init__(self, cfg, res: Resolved | None = None, seed: int = 0):  # noqa: D107
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        res = res or preflight(cfg)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AdfloraError(f"device = {cfg.device!r} but no CUDA GPU is available",
                               "use device=cpu")
        path = res.path or str(tiny_folder(res.family, seed))
        local = res.kind != "hub" or _cached(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        base = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype],
                                                    local_files_only=local)
        tok = self.tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        base.config.use_cache = False
        self.path, self.name, self.num_labels = path, cfg.model, 0
        self.rank, self.scale = int(cfg.rank), cfg.lora_alpha / cfg.rank
        self.targets = res.targets
        self.model = get_peft_model(base, LoraConfig(
            r=cfg.rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.dropout,
            target_modules=res.targets, bias="none", task_type="CAUSAL_LM",
            fan_in_fan_out=res.config.model_type == "gpt2"))
        self.model.to(self.device)
        self.layers, self.lora_A, self.lora_B = pair_lora(self.model)
        self.head, self.head_missing, self._head_loaded = {}, set(), {}
        self.owner, self.cached = None, False

    def n_params(self) -> int:
        """Parameters of the frozen base model."""
        return sum(p.numel() for n, p in self.model.named_parameters() if "lora_" not in n)


def _cached(path: str) -> bool:
    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(path, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001
        return False


@torch.no_grad()
def lm_loss(gm: GlueModel, enc, batch_size: int = 16) -> tuple[float, int]:
    """``(mean next-token loss over every predicted token, tokens)`` of the model as loaded on
    an encoded split (token-weighted, so batching does not change it)."""
    gm.model.eval()
    total, count = 0.0, 0
    for s in range(0, len(enc), batch_size):
        batch = enc.batch(list(range(s, min(len(enc), s + batch_size))), gm.device)
        k = int((batch["labels"][:, 1:] != -100).sum())
        if k:
            total += float(gm.model(**batch).loss.float()) * k
            count += k
    return total / max(1, count), count


def model_facts(gm: LmModel) -> dict:
    """For ``meta.json``: family, targets, sizes."""
    c = gm.model.config
    return {"model_type": c.model_type, "targets": gm.targets, "base_params": gm.n_params(),
            "dtype": str(next(gm.model.parameters()).dtype).replace("torch.", ""),
            "path": str(Path(gm.path))}
