"""Run plumbing: configs, overrides, atomic IO, seeded streams, run directories, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from adflora_analysis import fileio
from adflora_analysis.config import (
    apply_overrides,
    config_diff,
    dump_toml,
    load_config,
    read_toml,
    to_dict,
)
from adflora_analysis.errors import AdfloraError
from adflora_analysis.rundir import init_run_dir, make_meta
from adflora_analysis.seeding import expand_seeds, numpy_rng, torch_generator


@dataclass
class Inner:
    q: float | None = None
    graph: str = "ring"


@dataclass
class Outer:
    n_clients: int = 10
    lr: float = 0.1
    seeds: int | list[int] = 3
    methods: list[str] = field(default_factory=lambda: ["adf-lora"])
    flag: bool = False
    topology: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.n_clients < 2:
            raise AdfloraError(f"n_clients = {self.n_clients} must be at least 2")


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_load_config_types_and_overrides(tmp_path):
    p = write(tmp_path, 'n_clients = 4\nlr = 1\nseeds = [1, 2]\n[topology]\nq = 0.1\n')
    cfg = load_config(Outer, p, ["topology.graph=torus", "methods=['lora','rolora']",
                                 "flag=true"])
    assert cfg.n_clients == 4 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.seeds == [1, 2] and cfg.topology.q == 0.1 and cfg.topology.graph == "torus"
    assert cfg.methods == ["lora", "rolora"] and cfg.flag is True


@pytest.mark.parametrize("text, needle", [
    ("n_clent = 4\n", "did you mean 'n_clients'"),
    ("n_clients = 'four'\n", "must be an integer"),
    ("lr = 'fast'\n", "must be a number"),
    ("[topology]\nqq = 1\n", "unknown config key in [topology] 'qq'"),
    ("methods = 'lora'\n", "must be a list"),
    ("n_clients = 1\n", "at least 2"),
    ("n_clients = \n", "not valid TOML"),
])
def test_config_errors_are_one_line(tmp_path, text, needle):
    with pytest.raises(AdfloraError) as e:
        load_config(Outer, write(tmp_path, text))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(AdfloraError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.toml")


def test_toml_roundtrip_and_diff(tmp_path):
    cfg = to_dict(load_config(Outer, data={"topology": {"q": 0.25}}))
    p = tmp_path / "r.toml"
    p.write_text(dump_toml(cfg))
    back = read_toml(p)
    back["topology"].setdefault("q", None)
    assert config_diff(cfg, back) == []
    assert config_diff(cfg, apply_overrides(cfg, ["lr=0.5", "topology.graph=star"])) == [
        "lr", "topology.graph"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "x.json"
    fileio.write_json(p, {"a": 1})

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"a": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]  # no temp file left


def test_jsonl_ignores_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    fileio.append_jsonl(p, [{"round": 0}, {"round": 1}])
    with open(p, "a") as f:
        f.write('{"round": 2, "xi')
    assert [r["round"] for r in fileio.read_jsonl(p)] == [0, 1]
    fileio.truncate_jsonl(p, lambda r: r["round"] < 1)
    assert fileio.read_jsonl(p) == [{"round": 0}]


def test_streams_are_reproducible_and_independent():
    a = numpy_rng(3, "topology", 5).random(4)
    assert np.array_equal(a, numpy_rng(3, "topology", 5).random(4))
    assert not np.array_equal(a, numpy_rng(3, "topology", 6).random(4))
    assert not np.array_equal(a, numpy_rng(4, "topology", 5).random(4))
    assert not np.array_equal(a, numpy_rng(3, "noise", 5).random(4))
    g1, g2 = torch_generator(1, "noise", 2), torch_generator(1, "noise", 2)
    assert torch.equal(torch.randn(3, generator=g1), torch.randn(3, generator=g2))
    assert expand_seeds(2) == [0, 1] and expand_seeds([5]) == [5]
    with pytest.raises(AdfloraError):
        expand_seeds(0)


def test_run_dir_records_config_and_versions(tmp_path):
    out = init_run_dir(tmp_path / "run", {"n_clients": 3, "topology": {"q": 0.1}},
                       make_meta([0, 1], topology={"p": 0.3}))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seeds"] == [0, 1] and meta["topology"]["p"] == 0.3
    assert meta["versions"]["torch"].startswith("2.13") and meta["versions"]["numpy"]
    assert read_toml(out / "config.toml") == {"n_clients": 3, "topology": {"q": 0.1}}


def test_cli_help_and_unknown_command():
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "topology" in r.stdout and "synthetic" in r.stdout
    r = subprocess.run([sys.executable, "-m", "adflora_analysis", "nosuch"],
                       capture_output=True, text=True)
    assert r.returncode == 2
