"""Tokenization of GLUE rows: right-padded token ids (:class:`Encoded`) and the cached hidden
states of a frozen prefix (:class:`CachedEncoded`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from adflora_analysis.glue.tasks import TaskSpec


@dataclass
class Encoded:
    """Right-padded token ids of a split: ``input_ids`` (N, L) int32, ``lengths`` (N,),
    optional ``token_type_ids`` (N, L) int8, and ``labels`` (N,) (long, or float for
    regression). :meth:`batch` trims padding to the longest row of the batch (or pads to
    ``pad_to`` when set: fixed shapes, e.g. for memory measurements)."""

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    token_type_ids: torch.Tensor | None = None
    pad_id: int = 0
    pad_to: int | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        lens = self.lengths[idx]
        L = self.pad_to or int(lens.max())
        out = {"input_ids": self.input_ids[idx, :L].long(),
               "attention_mask": (torch.arange(L)[None, :] < lens[:, None]).long(),
               "labels": self.labels[idx]}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids[idx, :L].long()
        return {k: v.to(device) for k, v in out.items()}


@dataclass
class CachedEncoded:
    """Hidden states of a split entering the first adapted layer (what
    ``GlueModel.cache_prefix`` computes once): ``hidden`` (sum of lengths, d_model) float32,
    the rows' real tokens one after another, ``offsets`` (N + 1,), ``lengths`` (N,) and
    ``labels`` (N,). :meth:`batch` pads to the longest row of the batch with zeros (masked out)
    and hands the model ``inputs_embeds`` in place of token ids.

    >>> c = CachedEncoded.from_rows([torch.ones(2, 3), torch.zeros(1, 3)],
    ...                             torch.tensor([2, 1]), torch.tensor([1, 0]))
    >>> b = c.batch([1, 0])
    >>> tuple(b["inputs_embeds"].shape), b["attention_mask"].tolist()
    ((2, 2, 3), [[1, 0], [1, 1]])
    """

    hidden: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_rows(cls, rows: list[torch.Tensor], lengths: torch.Tensor,
                  labels: torch.Tensor) -> CachedEncoded:
        """From one (length_i, d_model) tensor per row."""
        offsets = torch.zeros(len(rows) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(torch.as_tensor([len(r) for r in rows]), 0)
        return cls(torch.cat(rows).contiguous(), offsets, lengths, labels)

    def __len__(self) -> int:
        return len(self.labels)

    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def batch(self, idx, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        lens = self.lengths[idx]
        L = int(lens.max())
        mask = torch.arange(L)[None, :] < lens[:, None]
        pos = (self.offsets[idx][:, None] + torch.arange(L)[None, :])[mask]
        x = torch.zeros(len(idx), L, self.hidden.shape[1], dtype=self.hidden.dtype)
        x[mask] = self.hidden[pos]
        out = {"inputs_embeds": x, "attention_mask": mask.long(), "labels": self.labels[idx]}
        return {k: v.to(device) for k, v in out.items()}


def encode(tokenizer, task: TaskSpec, df: pd.DataFrame, max_length: int,
           chunk: int = 4096) -> Encoded:
    """Tokenize ``df`` once (truncated to ``max_length``, padded on the right)."""
    ids = np.full((len(df), max_length), tokenizer.pad_token_id or 0, dtype=np.int32)
    tt = None
    lengths = np.zeros(len(df), dtype=np.int64)
    cols = [df[c].tolist() for c in task.text]
    for s in range(0, len(df), chunk):
        args = [c[s:s + chunk] for c in cols]
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False)
        for j, row in enumerate(enc["input_ids"]):
            ids[s + j, :len(row)] = row
            lengths[s + j] = len(row)
        if "token_type_ids" in enc:
            if tt is None:
                tt = np.zeros((len(df), max_length), dtype=np.int8)
            for j, row in enumerate(enc["token_type_ids"]):
                tt[s + j, :len(row)] = row
    dtype = torch.float32 if task.is_regression else torch.long
    return Encoded(torch.from_numpy(ids), torch.from_numpy(lengths),
                   torch.as_tensor(df["label"].to_numpy().copy(), dtype=dtype),
                   None if tt is None else torch.from_numpy(tt),
                   int(tokenizer.pad_token_id or 0))
