"""The notebook surface ``import adflora_analysis as af``: lazy, few names, and the in-memory
synthetic study equal to what a run directory holds."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

import adflora_analysis as af

SMALL = dict(n_clients=4, rounds=5, seeds=2, d_in=4, d_out=4, samples_per_client=8,
             batch_size=4, methods=["adf-lora", "rolora"], constants_every=0,
             topology_samples=200, switch_interval=2,
             sweep={"topology.q": [0.3, 0.6]})


def test_import_is_lazy_and_names_are_few():
    code = ("import sys, adflora_analysis as af; "
            "assert not {'torch', 'pandas', 'adflora_analysis.api'} & set(sys.modules); "
            "af.build_topology; assert 'adflora_analysis.api' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(af.__all__) == {"__version__", "build_topology", "topology_constants",
                               "synthetic_config", "run_synthetic", "run_checks",
                               "make_report", "MethodSpec", "register_method"}
    assert set(af.__all__) <= set(dir(af))
    with pytest.raises(AttributeError, match="no attribute 'run_glue'"):
        af.run_glue  # noqa: B018


def test_in_memory_study_equals_the_run_directory(tmp_path):
    """run_synthetic without ``out`` gives exactly the rows ``metrics.parquet`` holds."""
    mem = af.run_synthetic(**SMALL)
    af.run_synthetic(out=tmp_path / "run", **SMALL)
    disk = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    assert not list(tmp_path.glob("*.parquet"))  # the in-memory run wrote nothing here
    key = ["job", "seed", "round", "layer"]
    assert set(mem.job) == {f"topology.q={q}/{m}" for q in (0.3, 0.6)
                            for m in ("adf-lora", "rolora")}
    cols = [c for c in disk.columns if c in mem.columns]
    assert len(cols) >= len(disk.columns) - 1, set(disk.columns) - set(mem.columns)
    pd.testing.assert_frame_equal(mem[cols].sort_values(key).reset_index(drop=True),
                                  disk[cols].sort_values(key).reset_index(drop=True))
    # the sweep reached the runs: the two q give different consensus errors
    tot = mem[(mem.layer == "all") & (mem["round"] == 4)].groupby("q").xi_B.mean()
    assert tot[0.3] != tot[0.6]


def test_config_from_a_shipped_study_with_keys():
    cfg = af.synthetic_config("bounds", rounds=3, **{"topology.q": 0.2})
    assert cfg.rounds == 3 and cfg.topology.q == 0.2 and cfg.topology.graph == "encounter"
    with pytest.raises(Exception, match="unknown config key 'roundz'"):
        af.synthetic_config(roundz=3)


@pytest.mark.parametrize("package", ["adflora_analysis.core", "adflora_analysis.synthetic",
                                     "adflora_analysis.topology"])
def test_layer_packages_export_their_public_names(package):
    import importlib

    mod = importlib.import_module(package)
    assert mod.__all__ and len(set(mod.__all__)) == len(mod.__all__)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def test_run_synthetic_takes_a_config_and_keys_on_top():
    cfg = af.synthetic_config(n_clients=4, rounds=3, seeds=1, d_in=4, d_out=4,
                              methods=["lora"], topology={"graph": "ring"})
    df = af.run_synthetic(cfg, rounds=2, **{"topology.weights": "max-degree"})
    assert sorted(df["round"].unique()) == [0, 1]
    assert set(df.weights) == {"max-degree"} and set(df.graph) == {"ring"}
    assert cfg.rounds == 3  # the given config is not changed


@pytest.mark.parametrize("exc, code, line", [
    (KeyboardInterrupt, 130, "error: interrupted"),
    (RuntimeError("a bug"), None, None),
])
def test_cli_main_turns_ctrl_c_into_one_line_and_keeps_bugs_visible(monkeypatch, capsys, exc,
                                                                     code, line):
    """Ctrl-C is one line and exit 130; any other exception keeps its own type (the except
    clause must not fail on a click class the vendored click lacks)."""
    import adflora_analysis.cli as cli

    def boom(**kw):
        raise exc

    monkeypatch.setattr(cli, "app", boom)
    if code is None:
        with pytest.raises(RuntimeError, match="a bug"):
            cli.main(["--help"])
        return
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == code and line in capsys.readouterr().err
