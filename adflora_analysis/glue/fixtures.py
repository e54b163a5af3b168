"""Generated sentence pairs in QNLI/MNLI column layout (``data = "fixture"``, ``adflora glue
fixture``): templates whose labels follow from the text, so a model can learn them; written as
TSV files and read back through the local-folder source (:mod:`.sources`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError
from adflora_analysis.seeding import numpy_rng

FIXTURE_SIZES = {"train": 2000, "validation": 400}
"""Rows per split of a run's fixture unless ``max_train_examples`` / ``max_eval_examples``."""

_NAMES = [["anna", "ben", "carla", "dev", "elif", "farid", "gina", "hugo"],
          ["ines", "jon", "kemal", "lena", "mario", "nora", "omar", "petra"]]
_OBJECTS = [["book", "lamp", "bicycle", "guitar", "kettle", "painting"],
            ["ticket", "letter", "camera", "umbrella", "violin", "basket"]]
_COLORS = ["red", "blue", "green", "yellow", "black", "white"]
_PLACES = [["kitchen", "garden", "library", "station"], ["office", "market", "museum", "harbor"]]
_VERBS = [("bought", "buy"), ("painted", "paint"), ("repaired", "repair"), ("sold", "sell"),
          ("found", "find"), ("borrowed", "borrow")]
_REASONS = ["it was cheap", "a friend asked", "it was raining", "the shop was closing"]


def _pick(rng: np.random.Generator, xs):
    return xs[int(rng.integers(len(xs)))]


def _mnli_row(rng: np.random.Generator, genre: int, label: int) -> tuple[str, str]:
    name, obj = _pick(rng, _NAMES[genre]), _pick(rng, _OBJECTS[genre])
    color, place = _pick(rng, _COLORS), _pick(rng, _PLACES[genre])
    past, base = _pick(rng, _VERBS)
    premise = f"{name} {past} the {color} {obj} in the {place}."
    if label == 0:  # entailment: a weaker statement
        hyp = _pick(rng, [f"{name} {past} a {obj}.", f"someone {past} the {color} {obj}.",
                          f"a {obj} was {past} in the {place}."])
    elif label == 1:  # neutral: adds something the premise does not say
        hyp = _pick(rng, [f"{name} {past} the {color} {obj} because {_pick(rng, _REASONS)}.",
                          f"{name} {past} the {color} {obj} yesterday morning.",
                          f"{name} also {past} a second {obj}."])
    else:  # contradiction
        other = _pick(rng, [c for c in _COLORS if c != color])
        hyp = _pick(rng, [f"{name} did not {base} the {color} {obj}.",
                          f"{name} {past} the {other} {obj}, not the {color} one.",
                          f"nobody {past} anything in the {place}."])
    return premise, hyp


def _qnli_row(rng: np.random.Generator, label: int) -> tuple[str, str]:
    genre = int(rng.integers(2))
    name, obj = _pick(rng, _NAMES[genre]), _pick(rng, _OBJECTS[genre])
    place, (past, base) = _pick(rng, _PLACES[genre]), _pick(rng, _VERBS)
    q = _pick(rng, [(f"where did {name} {base} the {obj}?", "place"),
                    (f"what did {name} {base} in the {place}?", "object"),
                    (f"who {past} the {obj}?", "name")])
    if label == 0:  # entailment: the sentence answers the question
        sent = f"{name} {past} the {_pick(rng, _COLORS)} {obj} in the {place}."
    else:  # not_entailment: a sentence about something else
        other = _pick(rng, [n for n in _NAMES[genre] if n != name])
        other_obj = _pick(rng, [o for o in _OBJECTS[genre] if o != obj])
        sent = _pick(rng, [f"{other} {past} the {other_obj} last week.",
                           f"the {_pick(rng, _PLACES[genre])} was closed on monday.",
                           f"{name} likes the color {_pick(rng, _COLORS)}."])
    return q[0], sent


def fixture_frames(task: str, n_train: int = 2000, n_val: int = 400,
                   seed: int = 0) -> dict[str, pd.DataFrame]:
    """Generated sentence pairs in the Hugging Face layout of ``task`` ("qnli" or "mnli"):
    balanced labels; MNLI's mismatched split uses the other vocabulary "genre"."""
    out: dict[str, pd.DataFrame] = {}
    if task == "qnli":
        plan = {"train": n_train, "validation": n_val}
    elif task == "mnli":
        plan = {"train": n_train, "validation_matched": n_val, "validation_mismatched": n_val}
    else:
        raise AdfloraError(f"fixtures exist for qnli and mnli, not {task!r}",
                           'use task = "qnli" or "mnli"')
    for split, size in plan.items():
        rng = numpy_rng(seed, f"fixture-{task}-{split}")
        n_labels = 2 if task == "qnli" else 3
        labels = np.arange(size) % n_labels
        rng.shuffle(labels)
        rows = []
        for i, y in enumerate(labels):
            if task == "qnli":
                a, b = _qnli_row(rng, int(y))
                rows.append({"question": a, "sentence": b, "label": int(y), "idx": i})
            else:
                genre = 1 if split == "validation_mismatched" else 0
                a, b = _mnli_row(rng, genre, int(y))
                rows.append({"premise": a, "hypothesis": b, "label": int(y), "idx": i})
        out[split] = pd.DataFrame(rows)
    return out


def write_fixture(task: str, folder: str | Path, n_train: int = 2000, n_val: int = 400,
                  seed: int = 0) -> Path:
    """Write :func:`fixture_frames` as ``<split>.tsv`` files into ``folder`` (atomically)."""
    from adflora_analysis import fileio

    folder = Path(folder)
    for split, df in fixture_frames(task, n_train, n_val, seed).items():
        with fileio.atomic_path(folder / f"{split}.tsv") as tmp:
            df.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return folder
