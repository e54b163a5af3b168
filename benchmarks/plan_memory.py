"""Validate ``adflora plan``'s memory prediction against measured peak memory on CPU.

For each shape, a fresh Python process builds the model from its config with random weights
(``AutoModelForCausalLM.from_config``, float32), attaches peft LoRA adapters, allocates the
stacked adapters of ``n`` clients and a gossip buffer of the same size (what the GLUE runner
keeps resident), and runs one forward + backward + AdamW step at batch ``b`` and sequence ``s``.
Measured = peak RSS (``VmHWM`` of ``/proc/self/status``, the kernel's high-water mark, so
no sampling can miss a short peak) minus the RSS after imports. The child runs with
``MALLOC_MMAP_THRESHOLD_=65536`` and one torch thread, so glibc serves every large tensor with
its own mmap and gives it back when freed (RSS then follows live tensors rather than the heap's
high water, and per-thread arenas add no slack). torch's CPU allocator has no cache, so live
tensors are what RSS holds.

Usage: python benchmarks/plan_memory.py [--quick | --last] [--big [--only-big]]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from adflora_analysis.plan import PlanInput, arch_from_config, make_plan

CHILD = textwrap.dedent(r"""
    import gc as gc_, json, os, resource, sys
    import psutil, torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers import GPT2LMHeadModel, LlamaForCausalLM  # noqa: F401 (lazy modules)
    from peft import LoraConfig, get_peft_model
    from peft.tuners import lora  # noqa: F401
    torch.set_num_threads(1)
    a = json.loads(sys.argv[1])

    def step(cfg, targets, batch, seq, gc):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=getattr(torch, a["dtype"]))
        if gc:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=a["rank"], lora_alpha=2 * a["rank"],
                                                 target_modules=targets,
                                                 lora_dropout=a["dropout"]))
        model.train()
        train = [p for p in model.parameters() if p.requires_grad]
        A = sum(p.numel() for p in train)
        states = torch.ones(a["clients"], A)           # stacked client adapters
        gossip = torch.ones(a["clients"], A)           # gossip buffer
        opt = torch.optim.AdamW(train, lr=1e-4)
        x = torch.randint(0, cfg.vocab_size, (batch, seq))
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return A

    # warm-up on a minute model of the same family: lazy imports, kernel and autograd set-up
    small = dict(a["config"], vocab_size=64)
    small.update({k: 16 for k in ("hidden_size", "n_embd", "intermediate_size") if k in small})
    small.update({k: 1 for k in ("num_hidden_layers", "n_layer", "num_attention_heads",
                                 "num_key_value_heads", "n_head") if k in small})
    step(AutoConfig.for_model(**small), a["targets"], 1, 8, a["gc"])
    gc_.collect()
    rss0 = psutil.Process().memory_info().rss
    torch.manual_seed(0)
    A = step(AutoConfig.for_model(**a["config"]), a["targets"], a["batch"], a["seq"], a["gc"])
    # VmHWM: the high-water mark of this process's own memory map. ru_maxrss is not: Linux
    # carries the pre-exec map's peak into it, i.e. the parent's RSS when it started us (a
    # 700 MB pytest made a 47 MB step read 670 MB)
    with open("/proc/self/status") as f:
        peak = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) * 1024
    print(json.dumps({"measured": peak - rss0, "adapter_params": A}))
""")


def measure(config: dict, *, clients: int, rank: int, batch: int, seq: int, targets: list[str],
            gc: bool = False, dropout: float = 0.0, dtype: str = "float32") -> dict:
    """Peak RSS growth (bytes) of one training step in a fresh subprocess (see module doc)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    arg = json.dumps({"config": config, "clients": clients, "rank": rank, "batch": batch,
                      "seq": seq, "targets": targets, "gc": gc, "dropout": dropout,
                      "dtype": dtype})
    r = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, capture_output=True,
                       text=True, check=False)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def predict(config: dict, *, clients: int, rank: int, batch: int, seq: int,
            targets: list[str], gc: bool = False, dropout: float = 0.0,
            dtype: str = "float32") -> dict:
    """The planner's prediction (device cpu) for the same shape."""
    p = make_plan(PlanInput(model="bench", clients=clients, rank=rank, batch=batch, seq=seq,
                            device="cpu", dtype=dtype, targets=tuple(targets),
                            gradient_checkpointing=gc, lora_dropout=dropout),
                  arch=arch_from_config(config, "bench"), device_bytes=64 * 1024**3,
                  peak_flops=1e11)
    return {"predicted": p.total_bytes, "adapter_params": p.adapter_params}


TINY_LLAMA = {"model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4, "intermediate_size": 344,
              "vocab_size": 8000, "max_position_embeddings": 256}
TINY_GPT2 = {"model_type": "gpt2", "n_embd": 256, "n_layer": 4, "n_head": 4,
             "vocab_size": 50257, "n_positions": 256}
GQA_LLAMA = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 688,
             "vocab_size": 32000, "max_position_embeddings": 512}
MID_LLAMA = {"model_type": "llama", "hidden_size": 512, "num_hidden_layers": 8,
             "num_attention_heads": 8, "num_key_value_heads": 8, "intermediate_size": 1376,
             "vocab_size": 32000, "max_position_embeddings": 512}

# (name, config, clients, rank, batch, seq, targets, gradient checkpointing[, LoRA dropout,
# dtype])
CASES = [
    ("tiny-llama h128 L2 V8k", TINY_LLAMA, 1, 4, 2, 64, ["q_proj", "v_proj"], False),
    ("tiny-gpt2 h256 L4 V50k", TINY_GPT2, 2, 8, 2, 128, ["c_attn"], False),
    ("gqa-llama h256 L4 kv2 V32k", GQA_LLAMA, 3, 8, 4, 128,
     ["q_proj", "k_proj", "v_proj", "o_proj"], False),
    ("mid-llama h512 L8 V32k", MID_LLAMA, 4, 8, 4, 256, ["q_proj", "v_proj"], False),
    ("mid-llama h512 L8 V32k +gc", MID_LLAMA, 4, 8, 4, 256, ["q_proj", "v_proj"], True),
    ("mid-llama h512 L8 all-linear", MID_LLAMA, 2, 16, 8, 256,
     ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], False),
    ("mid-llama h512 L8 qkvo dropout .05", MID_LLAMA, 4, 8, 4, 256,
     ["q_proj", "k_proj", "v_proj", "o_proj"], False, 0.05),
    ("mid-llama h512 L8 V32k bfloat16", MID_LLAMA, 4, 8, 4, 256, ["q_proj", "v_proj"], False,
     0.0, "bfloat16"),
    ("mid-llama h512 L8 bfloat16 +gc", MID_LLAMA, 4, 8, 4, 256, ["q_proj", "v_proj"], True,
     0.0, "bfloat16"),
]


LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
            "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 5504,
            "vocab_size": 32000, "max_position_embeddings": 512}
# with --big: the 1 B random Llama (about 4 GiB of fp32 weights, a few minutes)
BIG = [("llama-1b h2048 L16 V32k", LLAMA_1B, 2, 8, 2, 128, ["q_proj", "v_proj"], False)]


def run(cases=CASES) -> list[dict]:
    """Measure and predict every case; return rows (shape, predicted, measured, ratio)."""
    rows = []
    for name, cfg, n, r, b, s, tg, gc, *rest in cases:
        kw = {"clients": n, "rank": r, "batch": b, "seq": s, "targets": tg, "gc": gc,
              "dropout": rest[0] if rest else 0.0, "dtype": rest[1] if len(rest) > 1
              else "float32"}
        m, p = measure(cfg, **kw), predict(cfg, **kw)
        assert m["adapter_params"] == p["adapter_params"], (name, m, p)
        rows.append({"shape": name, "clients": n, "rank": r, "batch": b, "seq": s,
                     "predicted_mib": p["predicted"] / 2**20,
                     "measured_mib": m["measured"] / 2**20,
                     "ratio": p["predicted"] / m["measured"]})
    return rows


def main() -> None:
    cases = CASES[:2] if "--quick" in sys.argv else CASES
    if "--last" in sys.argv:
        cases = CASES[-1:]
    if "--big" in sys.argv:
        cases = [*cases, *BIG] if "--only-big" not in sys.argv else BIG
    rows = run(cases)
    print(f"{'shape':34s} {'n':>2s} {'r':>3s} {'b':>2s} {'s':>4s} {'predicted':>12s} "
          f"{'measured':>12s} {'ratio':>6s}")
    for w in rows:
        print(f"{w['shape']:34s} {w['clients']:2d} {w['rank']:3d} {w['batch']:2d} "
              f"{w['seq']:4d} {w['predicted_mib']:8.1f} MiB {w['measured_mib']:8.1f} MiB "
              f"{w['ratio']:6.3f}")
    worst = max(abs(w["ratio"] - 1) for w in rows)
    print(f"worst |predicted/measured - 1| = {100 * worst:.1f} %")


if __name__ == "__main__":
    main()
