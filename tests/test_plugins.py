"""Method plugins (adflora_analysis/plugins.py): a fifth method from the user's own file or
package, through register_method, a config's ``plugins`` key, ADFLORA_PLUGINS and the entry
point group ``adflora_analysis.methods``; each bad plugin is one error line."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from adflora_analysis import plugins
from adflora_analysis.cli import main
from adflora_analysis.config import load_config
from adflora_analysis.core import methods
from adflora_analysis.core.methods import METHODS, MethodSpec, get_method, register_method
from adflora_analysis.errors import AdfloraError
from adflora_analysis.synthetic.config import SyntheticConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_method" / "my_method.py"
TINY = dict(n_clients=4, rounds=4, local_steps=2, rank=2, seeds=2, d_in=5, d_out=4,
            target_rank=2, samples_per_client=12, batch_size=4, constants_every=2,
            topology_samples=500)


def _snapshot() -> tuple:
    return (dict(dict.items(METHODS)), dict(methods.ORIGIN), dict(plugins._FILES),
            methods._LOADED[0])


def _restore(snap: tuple) -> None:
    reg, origin, files, loaded = snap
    dict.clear(METHODS)
    dict.update(METHODS, reg)
    methods.ORIGIN.clear()
    methods.ORIGIN.update(origin)
    plugins._FILES.clear()
    plugins._FILES.update(files)
    methods._LOADED[0] = loaded


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """The registry is global: every test leaves it as it found it."""
    monkeypatch.delenv(plugins.ENV, raising=False)
    snap = _snapshot()
    yield
    _restore(snap)


def _file(tmp_path: Path, body: str, name: str = "plugin.py") -> Path:
    p = tmp_path / name
    p.write_text("from adflora_analysis.core import MethodSpec, register_method\n"
                 + textwrap.dedent(body))
    return p


def _toml(path: Path, **extra) -> Path:
    data = {**TINY, **extra}
    path.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in data.items())
                    + '\n[topology]\ngraph = "ring"\nweights = "metropolis"\n')
    return path


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0), out.getvalue(), err.getvalue()


# --------------------------------------------------------------------------- specs
def test_builtins_are_the_same_data():
    """The four built-ins keep their rules (strings, not per-phase tables), so every round
    trains and gossips what it did before the per-phase rule existed."""
    got = {n: (s.train, s.mix, s.default_switch_interval, s.alternates)
           for n, s in dict.items(METHODS) if n in methods.BUILTIN}
    assert got == {"adf-lora": ("phase", "AB", 5, True), "rolora": ("phase", "phase", 1, True),
                   "ffa-lora": ("B", "B", 1, False), "lora": ("AB", "AB", 1, False)}
    ph = torch.tensor([[True, False, True]])
    m = get_method("rolora").mixed_masks(ph)
    assert m["A"].tolist() == [[True, False, True]] and m["B"].tolist() == [[False, True, False]]
    assert get_method("ffa-lora").trained_masks(ph)["A"].tolist() == [[False] * 3]


def test_per_phase_rule_gossips_the_frozen_factor_every_other_round():
    spec = MethodSpec("hg", "phase", {"A": "A", "B": "AB"}, 1, "")
    assert spec.mix == (("A", "A"), ("B", "AB")) and hash(spec)
    assert [spec.trained_blocks(t) for t in range(4)] == [("B",), ("A",), ("B",), ("A",)]
    assert [spec.mixed_blocks(t) for t in range(4)] == [("A", "B"), ("A",), ("A", "B"), ("A",)]
    frozen = [tuple(b for b in ("A", "B") if b not in spec.trained_blocks(t)) for t in range(4)]
    assert [f[0] in spec.mixed_blocks(t) for t, f in enumerate(frozen)] == [True, False] * 2
    ph = torch.tensor([True, False])                       # per-client phases (clock drift)
    m = spec.mixed_masks(ph)
    assert m["A"].tolist() == [True, True] and m["B"].tolist() == [False, True]
    assert m["A"].dtype == torch.bool
    assert spec.gossips_frozen("A") and not spec.gossips_frozen("B") and spec.alternates
    assert MethodSpec("hg", "phase", spec.mix, 1, "") == spec  # the stored form round-trips


# --------------------------------------------------------------------------- bad input
BAD = {
    "raises": ("x = 1 / 0\n", "failed to import: ZeroDivisionError: division by zero "
               "(hint: fix the file; it must run with `python FILE.py`)"),
    "builtin-name": ('register_method(MethodSpec("lora", "AB", "AB", 1, "mine"))\n',
                     ": method 'lora' is already registered (built in) "
                     "(hint: pick another name)"),
    "no-such-block": ('register_method(MethodSpec("m", "phase", "C", 1, ""))\n',
                      ": method 'm': mix = 'C' declares a block that does not exist (hint: "
                      'blocks are "A" and "B": use "phase", "A", "B" or "AB", or one per '
                      'phase, e.g. {"A": "A", "B": "AB"})'),
    "no-such-phase": ('register_method(MethodSpec("m", {"A": "A", "C": "B"}, "AB", 1, ""))\n',
                      ": method 'm': train = {'A': 'A', 'C': 'B'} names phases 'A', 'C'; the "
                      "phases are 'A' and 'B' (hint: "),
    "not-a-spec": ('register_method({"name": "m", "train": "A"})\n',
                   ": register_method got a dict, not a MethodSpec (hint: pass MethodSpec("),
    "nothing": ("M = MethodSpec('m', 'A', 'A', 1, '')\n",
                " registers no method (hint: call register_method(MethodSpec(...)) in it)"),
    "exits": ("import sys\nsys.exit(3)\n", "failed to import: called sys.exit(3)"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_plugin_file_is_one_line_naming_it(tmp_path, case):
    body, tail = BAD[case]
    first = "" if case == "nothing" else 'register_method(MethodSpec("ok", "B", "B", 1, ""))\n'
    p = _file(tmp_path, first + body)                  # "ok" is rolled back
    before = set(METHODS)
    with pytest.raises(AdfloraError) as e:
        plugins.load_plugin_file(p)
    msg = str(e.value)
    assert msg.startswith(f"plugin file {str(p.resolve())!r}")
    assert tail in msg and "\n" not in msg and "(hint: " in msg
    assert set(METHODS) == before        # a file that fails registers nothing


def test_a_name_registered_by_another_plugin_is_refused(tmp_path):
    a = _file(tmp_path, 'register_method(MethodSpec("mine", "B", "B", 1, ""))\n', "a.py")
    b = _file(tmp_path, 'register_method(MethodSpec("mine", "A", "A", 1, ""))\n', "b.py")
    assert plugins.load_plugin_file(a)[2] == ("mine",)
    assert plugins.load_plugin_file(a)[2] == ("mine",)      # again: a no-op
    with pytest.raises(AdfloraError, match=r"^plugin file '.*b\.py': method 'mine' is already "
                       r"registered \(plugin file '.*a\.py'\) \(hint: pick another name\)$"):
        plugins.load_plugin_file(b)
    assert get_method("mine").train == "B"


def test_missing_file_and_register_method_in_code():
    with pytest.raises(AdfloraError, match="plugin file 'nope.py' does not exist"):
        plugins.load_plugin_file("nope.py")
    with pytest.raises(AdfloraError, match="got a str, not a MethodSpec"):
        register_method("lora")
    with pytest.raises(AdfloraError, match="default_switch_interval = 0 must be"):
        MethodSpec("m", "A", "A", 0, "")
    with pytest.raises(AdfloraError, match="method name 'a, b' is not a plain name"):
        MethodSpec("a, b", "A", "A", 1, "")
    spec = register_method(MethodSpec("in-notebook", "AB", "B", 1, "s"))
    assert get_method("in-notebook") is spec and methods.ORIGIN["in-notebook"]
    methods.unregister_method("in-notebook")
    assert "in-notebook" not in METHODS
    with pytest.raises(AdfloraError, match="method 'lora' is built in"):
        methods.unregister_method("lora")


# --------------------------------------------------------------------------- entry points
def _entry_points(monkeypatch, tmp_path, module_src: str, eps: dict[str, str]) -> None:
    (tmp_path / "ep_pkg.py").write_text(textwrap.dedent(module_src))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_pkg", raising=False)
    fake = [EntryPoint(n, v, plugins.ENTRY_POINT_GROUP) for n, v in eps.items()]

    def entry_points(group=None, **_kw):
        return fake if group == plugins.ENTRY_POINT_GROUP else []
    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    methods._LOADED[0] = False           # as in a fresh process


SRC = """
from adflora_analysis.core import MethodSpec
SPEC = MethodSpec("ep-spec", "phase", {"A": "A", "B": "AB"}, 1, "from a package")
def make():
    return MethodSpec("ep-call", "B", "AB", 1, "from a factory")
NOT = {"name": "x"}
def broken():
    raise RuntimeError("no GPU here")
"""


def test_entry_points_load_on_first_use(monkeypatch, tmp_path):
    _entry_points(monkeypatch, tmp_path, SRC, {"ep-spec": "ep_pkg:SPEC", "ep-call": "ep_pkg:make"})
    assert "ep_pkg" not in sys.modules
    assert get_method("ep-call").mix == "AB"        # the first read loads them
    assert METHODS.get("ep-spec").summary == "from a package"
    assert "entry point 'ep-spec' (ep_pkg:SPEC" in methods.ORIGIN["ep-spec"]
    with pytest.raises(AdfloraError, match=r"already registered \(entry point 'ep-spec'"):
        register_method(MethodSpec("ep-spec", "A", "A", 1, ""))


@pytest.mark.parametrize("value, match", [
    ("ep_pkg:NOT", r"^entry point 'bad' \(ep_pkg:NOT\) gives a dict, not a MethodSpec "
                   r"\(hint: point it at a MethodSpec or a function returning one\)$"),
    ("ep_pkg:broken", r"^entry point 'bad' \(ep_pkg:broken\) failed to load: RuntimeError: "
                      r"no GPU here \(hint: fix or uninstall the package\)$"),
    ("ep_pkg:MISSING", r"failed to load: AttributeError"),
])
def test_a_bad_entry_point_is_one_line(monkeypatch, tmp_path, value, match):
    _entry_points(monkeypatch, tmp_path, SRC, {"bad": value})
    with pytest.raises(AdfloraError, match=match):
        get_method("lora")


# --------------------------------------------------------------------------- config route
def test_config_key_records_path_and_sha256(tmp_path, monkeypatch):
    shutil.copy(EXAMPLE, tmp_path / "my_method.py")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(SyntheticConfig, data={**TINY, "plugins": ["my_method.py"],
                                             "methods": ["half-gossip", "adf-lora"]})
    path, digest = plugins.split_entry(cfg.plugins[0])
    assert path == str(tmp_path / "my_method.py") and len(cfg.plugins) == 1
    assert digest == plugins.sha256_file(EXAMPLE)
    assert cfg.switch_for("half-gossip") == 1
    again = load_config(SyntheticConfig, data={**TINY, "plugins": cfg.plugins,
                                               "methods": ["half-gossip"]})
    assert again.plugins == cfg.plugins                 # recorded entries are stable
    (tmp_path / "my_method.py").write_text(EXAMPLE.read_text() + "# changed\n")
    with pytest.raises(AdfloraError, match=r"^plugin file '.*my_method\.py' changed since the "
                       r"run was configured: its SHA-256 is [0-9a-f]{12}\.\.\., the config "
                       r"records [0-9a-f]{12}\.\.\. \(hint: restore the file"):
        load_config(SyntheticConfig, data={**TINY, "plugins": cfg.plugins})
    with pytest.raises(AdfloraError, match="sweep over 'plugins' is not supported"):
        load_config(SyntheticConfig, data={**TINY, "sweep": {"plugins": [[], []]}})


def test_unknown_method_without_its_plugin_lists_the_valid_ones():
    with pytest.raises(AdfloraError, match="unknown method 'half-gossip'; valid: adf-lora"):
        load_config(SyntheticConfig, data={**TINY, "methods": ["half-gossip"]})


def test_env_var_plugins_load_on_first_use_and_are_recorded(tmp_path, monkeypatch):
    p = shutil.copy(EXAMPLE, tmp_path / "hg.py")
    monkeypatch.setenv(plugins.ENV, str(p))
    methods._LOADED[0] = False
    assert get_method("half-gossip").mixed_in("A") == ("A",)
    assert "ADFLORA_PLUGINS" in methods.ORIGIN["half-gossip"]
    cfg = SyntheticConfig(**TINY, methods=["half-gossip"])
    assert [plugins.split_entry(e)[0] for e in cfg.plugins] == [str(p)]
    both = SyntheticConfig(**TINY, methods=["half-gossip"], plugins=[str(p)])
    assert both.plugins == cfg.plugins                  # one file, recorded once


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """``adflora synthetic run CONFIG --out DIR`` on a config naming the example plugin."""
    snap = _snapshot()
    d = tmp_path_factory.mktemp("plugin-run")
    cfg = _toml(d / "study.toml", methods=["half-gossip", "adf-lora"], plugins=[str(EXAMPLE)])
    code, _, err = _cli("synthetic", "run", str(cfg), "--out", str(d / "run"))
    _restore(snap)
    assert code == 0, err
    yield d / "run"


def test_cli_run_rows_carry_the_plugin_method(plugin_run):
    import pandas as pd

    df = pd.read_parquet(plugin_run / "metrics.parquet")
    assert set(df.method) == {"half-gossip", "adf-lora"}
    hg = df[df.method == "half-gossip"]
    assert sorted(hg["seed"].unique()) == [0, 1] and hg["round"].max() == 3
    config = (plugin_run / "config.toml").read_text()
    assert f'"{EXAMPLE}#sha256={plugins.sha256_file(EXAMPLE)}"' in config


def test_cli_check_lists_the_plugin_method(plugin_run, capsys):
    code, out, err = _cli("synthetic", "check", str(plugin_run), "--json", "--no-save")
    assert code == 0, err
    items = json.loads(out)["results"]
    mine = {i["check"] for i in items if i["method"] == "half-gossip"}
    assert {"mixing-validity", "gossip-contraction", "frozen-block-consensus"} <= mine
    code, out, err = _cli("synthetic", "check", str(plugin_run), "--no-save")
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ln.split()[2:3] == ["half-gossip"]]
    assert len(rows) == sum(i["method"] == "half-gossip" for i in items) >= 3


def test_cli_report_mentions_the_plugin_method(plugin_run, tmp_path):
    code, _, err = _cli("report", str(plugin_run), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "half-gossip" in md and "| frozen-block-consensus | half-gossip |" in md


def test_cli_resume_verifies_the_plugin_file(tmp_path, monkeypatch):
    from adflora_analysis.rundir import update_meta

    p = Path(shutil.copy(EXAMPLE, tmp_path / "my_method.py"))
    cfg = _toml(tmp_path / "study.toml", methods=["half-gossip"], plugins=[str(p)],
                rounds=2, seeds=1, constants_every=0)
    run = tmp_path / "run"
    code, _, err = _cli("synthetic", "run", str(cfg), "--out", str(run))
    assert code == 0, err
    update_meta(run, status="stopped")                  # as if stopped by Ctrl-C
    methods._LOADED[0] = False
    dict.pop(METHODS, "half-gossip")
    plugins._FILES.clear()                              # as in a new process
    plugins._NAMED.clear()
    # a run directory is untrusted: the plugin its config.toml names is not imported unless
    # the user names the file too
    code, _, err = _cli("synthetic", "run", "--resume", str(run))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: the run's config names the plugin file {str(p)!r}, which "
                          "this command was not given")
    assert "half-gossip" not in METHODS and not plugins._FILES
    monkeypatch.setenv("ADFLORA_PLUGINS", str(p))
    original = p.read_text()
    p.write_text(original.replace("every other round", "sometimes"))
    code, _, err = _cli("synthetic", "run", "--resume", str(run))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: plugin file {str(p)!r} changed since the run was "
                          "configured: its SHA-256 is ")
    assert "half-gossip" not in METHODS                 # the changed file was not imported
    p.write_text(original)
    code, _, err = _cli("synthetic", "run", "--resume", str(run))
    assert code == 0, err
    assert get_method("half-gossip").mix == (("A", "A"), ("B", "AB"))


USER_CHECK = '''
from adflora_analysis.core.methods import get_method
from adflora_analysis.theory import register_check
from adflora_analysis.theory.result import CheckResult

@register_check("spec-known")
def spec_known(ctx):
    mix = get_method(ctx.method).mixed_in("A")
    return CheckResult("spec-known", "user", ctx.method, ctx.variant, "n/a", note=f"mix {mix}")
'''


def test_user_checks_child_knows_env_plugins_not_config_plugins(plugin_run, tmp_path,
                                                                monkeypatch):
    """``--checks`` files run in a child process, which imports ADFLORA_PLUGINS files and entry
    points (its registry's first read) but not the run's ``plugins`` key (a run directory is
    untrusted input: nothing it names is executed)."""
    uc = tmp_path / "uc.py"
    uc.write_text(USER_CHECK)

    def notes() -> dict[str, str]:
        code, out, err = _cli("synthetic", "check", str(plugin_run), "--json", "--no-save",
                              "--checks", str(uc))
        return {i["method"]: i["note"] for i in json.loads(out)["results"]
                if i["check"] == "spec-known"}

    got = notes()
    assert got["adf-lora"] == "mix ('A', 'B')"
    assert "unknown method 'half-gossip'" in got["half-gossip"]
    monkeypatch.setenv(plugins.ENV, str(EXAMPLE))
    assert notes()["half-gossip"] == "mix ('A',)"
