#!/usr/bin/env bash
# GPU check of the causal-LM testbed (adflora lm), under 8 minutes on one H100/H200:
#
#   1. families  a short `lm run` of each tiny family (llama, qwen2, mistral, gpt2), device=cuda
#   2. torchrun  the same study as 2 processes under torchrun on the one GPU (gloo collectives),
#                its metrics compared with the in-process run of step 1 (llama)
#   3. measure   throughput (tokens/s of local LoRA steps) and peak GPU memory of one client at a
#                1 B-parameter random Llama shape (hidden 2048, 16 layers, 16 heads, intermediate
#                5504, vocab 32000; bf16, LoRA r on q,k,v,o)
#   4. plan      the planner's prediction for that shape (`adflora plan ... --json`), printed
#                beside the measurement (skipped with one line when `adflora plan` is missing)
#
#   bash benchmarks/gpu_check.sh                    # everything, on cuda
#   DEVICE=cpu SHAPE=tiny bash benchmarks/gpu_check.sh measure plan   # CPU fallback (tests)
#
# Environment: DEVICE (cuda; cpu without a GPU), SHAPE (1b | tiny), WORK (scratch folder),
# BATCH, SEQ, RANK, CLIENTS, STEPS (timed local steps). Prints what it measured; exits non-zero
# when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg
export TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONWARNINGS=ignore
# tiny bases are pre-trained on the CPU when first built: keep that short here
export ADFLORA_TINY_PRETRAIN=${ADFLORA_TINY_PRETRAIN:-50}
PY=${PY:-python}
if [[ -z "${DEVICE:-}" ]]; then
  if $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    DEVICE=cuda
  else
    DEVICE=cpu
    echo "gpu_check: no CUDA GPU here; running the CPU fallback (tiny shapes)"
  fi
fi
SHAPE=${SHAPE:-$([[ $DEVICE == cuda ]] && echo 1b || echo tiny)}
WORK=${WORK:-$(mktemp -d)}
BATCH=${BATCH:-8} SEQ=${SEQ:-512} RANK=${RANK:-8} CLIENTS=${CLIENTS:-10} STEPS=${STEPS:-10}
[[ $SHAPE == tiny ]] && SEQ=${SEQ_TINY:-64}
export ADFLORA_TINY_DIR=${ADFLORA_TINY_DIR:-$WORK/tiny}
STEPS_TO_RUN=("$@")
[[ ${#STEPS_TO_RUN[@]} -eq 0 ]] && STEPS_TO_RUN=(families torchrun measure plan)
want() { [[ " ${STEPS_TO_RUN[*]} " == *" $1 "* ]]; }
LM=(-m adflora_analysis.lm.cli run adflora_analysis/configs/lm_runs/tiny_llama.toml)
SMALL=(rounds=4 eval_every=2 checkpoint_every=0 n_clients=4 max_train_examples=400
       max_eval_examples=32 "methods=[\"adf-lora\",\"lora\"]" threads=0 "device=$DEVICE")
echo "gpu_check: device=$DEVICE shape=$SHAPE work=$WORK steps=${STEPS_TO_RUN[*]}"

if want families; then
  for fam in llama qwen2 mistral gpt2; do
    t0=$(date +%s.%N)
    $PY "${LM[@]}" --out "$WORK/fam-$fam" --quiet "model=tiny-$fam" "${SMALL[@]}" \
      > "$WORK/fam-$fam.txt"
    echo "families: tiny-$fam on $DEVICE: $(awk -v a="$t0" -v b="$(date +%s.%N)" \
      'BEGIN{printf "%.1f", b-a}') s; final rows:"
    sed 's/^/    /' "$WORK/fam-$fam.txt"
  done
fi

if want torchrun; then
  [[ -d $WORK/fam-llama ]] || $PY "${LM[@]}" --out "$WORK/fam-llama" --quiet "${SMALL[@]}" >/dev/null
  $PY -m torch.distributed.run --standalone --nproc-per-node=2 "${LM[@]}" \
    --out "$WORK/dist-llama" --quiet "${SMALL[@]}" > "$WORK/dist.txt"
  $PY - "$WORK/fam-llama" "$WORK/dist-llama" <<'PYEOF'
import sys
import pandas as pd
key = ["job", "round", "layer"]
a, b = (pd.read_parquet(f"{d}/metrics.parquet").sort_values(key).reset_index(drop=True)
        for d in sys.argv[1:3])
cols = [c for c in ("xi_A", "xi_B", "cross_term", "local_loss") if c in a]
gap = float((a[cols] - b[cols]).abs().max().max())
ea, eb = (pd.read_parquet(f"{d}/eval.parquet") for d in sys.argv[1:3])
pa = ea[(ea.client == "averaged") & (ea.metric == "perplexity")].value.tolist()
pb = eb[(eb.client == "averaged") & (eb.metric == "perplexity")].value.tolist()
print(f"torchrun: 2 processes on one GPU vs in-process: max |diff| of {cols} = {gap:.3g}; "
      f"averaged-adapter perplexity {pa[-1]:.4g} vs {pb[-1]:.4g}")
sys.exit(0 if gap < 1e-3 else 1)
PYEOF
fi

if want measure || want plan; then
  $PY - "$WORK/shape" "$SHAPE" <<'PYEOF'
import json, sys
from pathlib import Path
from transformers import LlamaConfig
shape = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
             num_key_value_heads=16, intermediate_size=5504, vocab_size=32000,
             max_position_embeddings=4096) if sys.argv[2] == "1b" else dict(
             hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             intermediate_size=128, vocab_size=1000, max_position_embeddings=256)
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
LlamaConfig(**shape).save_pretrained(sys.argv[1])   # config only: random weights below
PYEOF
fi

if want measure; then
  $PY - "$WORK/shape" "$DEVICE" "$BATCH" "$SEQ" "$RANK" "$STEPS" > "$WORK/measure.json" <<'PYEOF'
import json, sys, time
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
folder, device, b, s, r, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
cfg = AutoConfig.from_pretrained(folder)
dtype = torch.bfloat16 if device == "cuda" else torch.float32
torch.manual_seed(0)
with torch.device(device):
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.config.use_cache = False
model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
x = torch.randint(0, cfg.vocab_size, (b, s), device=device)
def step():
    loss = model(input_ids=x, labels=x).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    return loss
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
step(); sync()                                   # warm-up (kernels, AdamW state)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
t0 = time.perf_counter()
for _ in range(steps):
    loss = step()
sync()
dt = (time.perf_counter() - t0) / steps
peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
print(json.dumps({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                  "base_params": base, "lora_params": sum(p.numel() for p in params),
                  "batch": b, "seq": s, "rank": r, "step_s": dt, "tokens_per_s": b * s / dt,
                  "peak_gib": peak, "loss": float(loss.detach()), "dtype": str(dtype)}))
PYEOF
  $PY - "$WORK/measure.json" <<'PYEOF'
import json, sys
m = json.load(open(sys.argv[1]))
peak = f"{m['peak_gib']:.2f} GiB" if m["peak_gib"] is not None else "n/a (cpu)"
print(f"measure: {m['base_params'] / 1e6:,.1f} M base params + {m['lora_params']:,} LoRA "
      f"(r={m['rank']}) on {m['device']} ({m['dtype']}), batch {m['batch']} x seq {m['seq']}, "
      f"gradient checkpointing: {m['step_s'] * 1e3:.1f} ms/step, "
      f"{m['tokens_per_s']:,.0f} tokens/s, peak memory {peak}")
PYEOF
fi

if want plan; then
  if [[ -z "${PLAN_DEVICE:-}" ]]; then   # the planner's name of the card that measured
    PLAN_DEVICE=cpu
    if [[ $DEVICE == cuda ]]; then
      PLAN_DEVICE=$($PY -c 'import torch; n = torch.cuda.get_device_name().lower(); print(
        "h200" if "h200" in n else "a100" if "a100" in n else "h100")')
    fi
  fi
  PLAN_DTYPE=$([[ $DEVICE == cuda ]] && echo bfloat16 || echo float32)
  if ! $PY -m adflora_analysis plan --help >/dev/null 2>&1; then
    echo "plan: skipped: 'adflora plan' is not available in this checkout (the planner is not" \
         "registered yet); nothing to compare the measurement with"
  elif ! $PY -m adflora_analysis plan --model "$WORK/shape" --clients "$CLIENTS" \
        --rank "$RANK" --batch "$BATCH" --seq "$SEQ" --device "$PLAN_DEVICE" \
        --dtype "$PLAN_DTYPE" --gradient-checkpointing --targets q_proj,k_proj,v_proj,o_proj \
        --json > "$WORK/plan.json" 2> "$WORK/plan.err"; then
    echo "plan: 'adflora plan' failed: $(tail -1 "$WORK/plan.err")"
    exit 1
  else
    $PY - "$WORK/plan.json" "$WORK/measure.json" "$PLAN_DEVICE" <<'PYEOF'
import json, sys
from pathlib import Path
plan = json.loads(Path(sys.argv[1]).read_text())
meas = json.loads(Path(sys.argv[2]).read_text()) if Path(sys.argv[2]).is_file() else {}
print(f"plan: adflora plan --device {sys.argv[3]} --json: peak_memory_gib "
      f"{plan.get('peak_memory_gib')}, tokens_per_s {plan.get('tokens_per_s')}, params "
      f"{plan.get('params')}, fits {plan.get('fits')}")
for what, key, got in (("peak memory (GiB)", "peak_memory_gib", meas.get("peak_gib")),
                       ("throughput (tokens/s)", "tokens_per_s", meas.get("tokens_per_s"))):
    pred = plan.get(key)
    if pred is None:
        print(f"plan vs measured {what}: the plan has no {key!r} (keys: {', '.join(plan)})")
    elif got is None:
        print(f"plan vs measured {what}: predicted {pred:.4g}; not measured on this device")
    else:
        print(f"plan vs measured {what}: predicted {pred:.4g}, measured {got:.4g} "
              f"(measured / predicted = {got / pred:.2f})")
print("plan: note: the measured peak is torch.cuda.max_memory_allocated of one client's "
      "steps (no CUDA context, no other clients' states); the plan's is the whole process")
PYEOF
  fi
fi
echo "gpu_check: done ($WORK)"
