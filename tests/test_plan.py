"""``adflora plan``: parameter counts, memory against a measured step, CLI behaviour."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from adflora_analysis import cli
from adflora_analysis.errors import AdfloraError
from adflora_analysis.plan import (
    SHAPES,
    PlanInput,
    arch_from_config,
    make_plan,
    read_study,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_plan(monkeypatch, capsys):
    """Run ``adflora plan ARGS`` through the real entry point; (exit code, stdout, stderr)."""
    monkeypatch.setitem(cli.LAZY_COMMANDS, "plan", ("adflora_analysis.plan:plan", "Plan."))

    def run(*args: str) -> tuple[int, str, str]:
        try:
            cli.main(["plan", *args])
            rc = 0
        except SystemExit as e:
            rc = int(e.code or 0)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.mark.parametrize("name, params", [("gpt2", 124_439_808),
                                          ("llama-2-7b", 6_738_415_616),
                                          ("llama-2-13b", 13_015_864_320),
                                          ("qwen2.5-0.5b", 494_032_768)])
def test_parameter_count_of_known_shapes(name, params):
    assert resolve_model(name).params() == params


def test_parameter_count_matches_transformers():
    """The count agrees with a real model built from the same config (untied, GQA, bias)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 96,
           "vocab_size": 300, "tie_word_embeddings": False}
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert arch_from_config(cfg).params() == sum(p.numel() for p in m.parameters())


def test_adapter_count_and_formula():
    a = resolve_model("llama-2-7b")
    # q_proj and v_proj: r (4096 + 4096) each, 32 layers
    assert a.adapter_params(("q_proj", "v_proj"), 8) == 32 * 2 * 8 * 8192
    with pytest.raises(AdfloraError, match="LoRA target"):
        a.adapter_params(("c_attn",), 8)


def test_memory_within_15_percent_of_a_measured_step():
    """Peak RSS of one forward+backward+AdamW step of a tiny random Llama with 2 clients
    (fresh subprocess, benchmarks/plan_memory.py) against the prediction."""
    spec = importlib.util.spec_from_file_location("plan_memory",
                                                  ROOT / "benchmarks" / "plan_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 344,
           "vocab_size": 8000, "max_position_embeddings": 128}
    kw = {"clients": 2, "rank": 4, "batch": 4, "seq": 64, "targets": ["q_proj", "v_proj"]}
    # a parent with a large RSS (as pytest has late in the suite) must not count: ru_maxrss
    # carried it across exec (measured 670 MB for this 47 MB step); VmHWM does not
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\1" * len(range(0, len(ballast), 4096))
    measured = bench.measure(cfg, **kw)
    del ballast
    predicted = bench.predict(cfg, **kw)
    assert measured["adapter_params"] == predicted["adapter_params"]
    ratio = predicted["predicted"] / measured["measured"]
    assert 0.85 <= ratio <= 1.15, (predicted, measured)


def test_more_clients_and_checkpointing_move_memory_the_right_way():
    base = dict(model="llama-2-7b", clients=10, rank=8, batch=8, seq=512, device="h100")
    p = make_plan(PlanInput(**base))
    p_gc = make_plan(PlanInput(**base, gradient_checkpointing=True))
    p_more = make_plan(PlanInput(**{**base, "clients": 20}))
    assert p_gc.memory["activations"] < p.memory["activations"] / 5
    assert p_more.total_bytes - p.total_bytes == 10 * p.per_client_bytes
    assert p_gc.seconds_per_round > p.seconds_per_round   # recomputed forward
    assert p.memory["base_weights"] == 6_738_415_616 * 2
    assert p.processes == 1 and p.clients_per_device > 10


def test_json_is_one_object(run_plan):
    rc, out, err = run_plan("--model", "llama-2-7b", "--clients", "10", "--rank", "8",
                            "--batch", "8", "--seq", "512", "--device", "h100", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["params"] == 6_738_415_616 and d["processes"] == 1
    assert d["total_bytes"] == sum(d["memory"].values())
    assert d["inp"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert d["adapter_params"] == 32 * 4 * 8 * 8192 and d["seconds_per_round"] > 0
    assert d["peak_memory_bytes"] == d["total_bytes"] and d["tokens_per_s"] > 0


def test_table_and_study_toml(run_plan, tmp_path):
    toml = tmp_path / "lm.toml"
    toml.write_text('name = "x"\nunknown_key = 3\n[model]\nmodel = "gpt2"\n'
                    'lora_targets = ["c_attn"]\n[train]\nn_clients = 3\nrank = 4\n'
                    'batch_size = 2\nmax_length = 64\ndtype = "float32"\ndevice = "cuda"\n')
    study = read_study(toml)
    assert study["clients"] == 3 and study["lora_dropout"] == 0.05   # LmConfig's default
    rc, out, err = run_plan(str(toml), "--rank", "16")
    assert rc == 0, err
    assert "gpt2" in out and "rank 16" in out and "3 clients" in out and "h100" in out


def test_shipped_lm_study_takes_the_testbeds_defaults(run_plan):
    """lm_runs/tiny_llama.toml: its keys (dropout = 0.0), LmConfig's defaults for the rest
    (float32), a tiny-llama shape from the lm testbed."""
    toml = ROOT / "adflora_analysis" / "configs" / "lm_runs" / "tiny_llama.toml"
    if not toml.is_file():
        pytest.skip("no shipped lm study")
    pytest.importorskip("adflora_analysis.lm.tiny")
    rc, out, err = run_plan(str(toml), "--device", "cpu", "--json")
    assert rc == 0, err
    d = json.loads(out)["inp"]
    assert (d["clients"], d["rank"], d["batch"], d["seq"]) == (6, 4, 8, 48)
    assert d["dtype"] == "float32" and d["lora_dropout"] == 0.0 and d["local_steps"] == 2


def test_lora_dropout_keeps_a_copy_per_module():
    base = dict(model="llama-1b", rank=8, batch=4, seq=256, device="h100",
                targets=("q_proj", "k_proj", "v_proj", "o_proj"))
    plain = make_plan(PlanInput(**base)).memory["activations"]
    drop = make_plan(PlanInput(**base, lora_dropout=0.05)).memory["activations"]
    # q, k, v, o each keep a dropped fp32 input (peft casts to the adapter's dtype) and a
    # 1-byte mask instead of two shared fp32 inputs (q/k/v's and o's): 16 layers x T h
    # (4 x 5 - 2 x 4) bytes more
    assert drop - plain == 16 * 4 * 256 * 2048 * (4 * 5 - 2 * 4)
    with pytest.raises(AdfloraError, match="lora_dropout"):
        make_plan(PlanInput(**base, lora_dropout=1.0))


def test_over_memory_is_one_error_line(run_plan):
    rc, out, err = run_plan("--model", "llama-2-13b", "--batch", "64", "--seq", "4096",
                            "--device", "h100", "--dtype", "float32")
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: plan needs") and "hint:" in lines[0]
    rc, out, _ = run_plan("--model", "llama-2-13b", "--batch", "64", "--seq", "4096",
                          "--device", "h100", "--dtype", "float32", "--allow-over", "--json")
    assert rc == 0 and json.loads(out)["fits"] is False


def test_unknown_model_offline_is_one_error_line(run_plan, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name in ("no-such-org/no-such-model", "llama-2-8b"):
        rc, out, err = run_plan("--model", name, "--device", "h100")
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ")
    assert "did you mean 'llama-2-7b'" in err


@pytest.mark.parametrize("args, word", [(("--clients", "0"), "clients"),
                                        (("--rank", "-1"), "rank"),
                                        (("--batch", "nan"), "batch"),
                                        (("--mfu", "nan"), "mfu"),
                                        (("--device", "tpu"), "device"),
                                        (("--dtype", "int8"), "dtype")])
def test_bad_values_are_one_line(run_plan, args, word):
    rc, out, err = run_plan("--model", "gpt2", *args)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], err


def test_config_json_path_and_folder(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(SHAPES["llama-1b"]))
    assert resolve_model(str(d)).params() == resolve_model(str(d / "config.json")).params()
    assert resolve_model("llama-1b").params() == 940_640_256


def test_lm_testbed_tiny_names_and_mlp_targets():
    pytest.importorskip("adflora_analysis.lm.tiny")
    a = resolve_model("tiny-llama")
    assert a.family == "llama" and a.layers >= 1
    p = make_plan(PlanInput(model="tiny-llama", device="h100", lora_mlp=True, rank=2))
    assert "down_proj" in p.inp["targets"] and "o_proj" in p.inp["targets"]


if __name__ == "__main__":   # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_large_allocations_are_served_from_the_kept_heap_once_and_numbers_do_not_change():
    """resources.reuse_large_allocations: one mallopt setting per process (glibc), idempotent,
    and a problem at n >= 1,024 turns it on; the run's numbers do not depend on it (the same
    factors with the default allocator are checked in a fresh process)."""
    import subprocess
    import sys

    code = ("import torch\n"
            "from adflora_analysis.config import load_config\n"
            "from adflora_analysis.synthetic.config import SyntheticConfig\n"
            "from adflora_analysis.synthetic.problem import QuadraticProblem\n"
            "from adflora_analysis import resources\n"
            "import sys\n"
            "if sys.argv[1] == 'off': resources._HEAP_KEPT.append(False)\n"
            "c = load_config(SyntheticConfig, data=dict(n_clients=1024, rounds=1, d_in=4, "
            "d_out=4, rank=2, target_rank=2, samples_per_client=4, batch_size=2, "
            "constants_every=0, topology_samples=100, seeds=1, dtype='float32'))\n"
            "p = QuadraticProblem(c)\n"
            "st = p.initial_state()\n"
            "print(resources._HEAP_KEPT, float(p.X.double().sum()), "
            "float(st.A[0][0].double().sum()))\n")
    outs = [subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                           timeout=120) for mode in ("on", "off")]
    for o in outs:
        assert o.returncode == 0, o.stderr[-1500:]
    on, off = (o.stdout.split(" ", 1) for o in outs)
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert on[0] == "[True]" and off[0] == "[False]"
    assert on[1] == off[1]
