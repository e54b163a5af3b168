"""Test-wide settings: no hub calls (they retry for 20-45 s offline), headless plotting."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny RoBERTa with a locally trained tokenizer, built once per test session."""
    from adflora_analysis.glue.tiny import build_tiny_roberta

    d = tmp_path_factory.getbasetemp() / "tiny-roberta"
    if not (d / "config.json").exists():
        build_tiny_roberta(d)
    return d
