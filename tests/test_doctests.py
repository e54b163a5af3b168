"""Every docstring example under ``adflora_analysis/`` runs as part of ``python -m pytest -q``
(networkx style: the examples are tests, so they stay true).

One test per module: its examples run with the same option flags as ``pytest
--doctest-modules`` (ELLIPSIS, NORMALIZE_WHITESPACE); a module without examples passes
trivially. ``test_a_wrong_example_is_caught`` plants a false example and shows it fails, so a
runner that silently ran nothing could not pass.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import types

import pytest

import adflora_analysis

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
SKIP = {"adflora_analysis.__main__"}  # the console entry point: nothing to show


def _module_names() -> list[str]:
    names = [adflora_analysis.__name__]
    for info in pkgutil.walk_packages(adflora_analysis.__path__, prefix="adflora_analysis."):
        if info.name not in SKIP:
            names.append(info.name)
    return sorted(names)


def run_examples(module: types.ModuleType) -> tuple[int, int, str]:
    """Run every example in ``module``'s docstrings; (failed, attempted, report)."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    out: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in finder.find(module, module.__name__):
        test.globs = {**module.__dict__, **test.globs}
        runner.run(test, out=out.append, clear_globs=True)
    return runner.failures, runner.tries, "".join(out)


@pytest.mark.parametrize("name", _module_names())
def test_module_examples(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    module = importlib.import_module(name)
    failed, attempted, report = run_examples(module)
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed:\n{report}"


def test_a_wrong_example_is_caught():
    planted = types.ModuleType("planted")
    planted.__doc__ = ">>> 1 + 1\n3\n>>> 2 * 2\n4\n"
    failed, attempted, report = run_examples(planted)
    assert (failed, attempted) == (1, 2)
    assert "Expected:\n    3\nGot:\n    2" in report


def test_examples_are_collected_from_every_layer():
    """The walk reaches every layer, and the public surface's functions all have examples."""
    counts: dict[str, int] = {}
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _module_names():
        layer = name.split(".")[1] if "." in name else "root"
        n = sum(len(t.examples) for t in finder.find(importlib.import_module(name), name))
        counts[layer] = counts.get(layer, 0) + n
    for layer in ("root", "topology", "core", "synthetic", "glue", "config", "fileio",
                  "seeding", "api"):
        assert counts.get(layer, 0) > 0, (layer, counts)
    from adflora_analysis import api

    for fn in api.__all__:
        assert ">>> " in (getattr(api, fn).__doc__ or ""), f"api.{fn} has no example"
