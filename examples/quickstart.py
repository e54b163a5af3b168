# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # adflora-analysis in a notebook
#
# Runs as a plain script (`python examples/quickstart.py`) and opens as a notebook in
# Jupyter/VS Code (percent cells; `jupytext --to ipynb` converts it). Only the public surface
# `import adflora_analysis as af` is used. Outputs go to `$ADFLORA_EXAMPLE_OUT` (default:
# `examples/out`). About a minute on two cores.

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import adflora_analysis as af  # noqa: E402

OUT = Path(os.environ.get("ADFLORA_EXAMPLE_OUT", Path(__file__).parent / "out"))
OUT.mkdir(parents=True, exist_ok=True)
print("adflora-analysis", af.__version__)

# %% [markdown]
# ## 1. Topology constants
# The expected consensus rate p (Koloskova et al. 2020) of the paper's encounter model
# (each pair of the n = 10 clients meets with probability q = 0.1 per round) against a ring.

# %%
for name, sampler in [("encounter q=0.1", af.build_topology("encounter", 10, q=0.1)),
                      ("ring", af.build_topology("ring", 10))]:
    c = af.topology_constants(sampler, samples=4000)
    print(f"{name:16s} p = {c['p']:.4f} ± {c['p_stderr']:.4f}   "
          f"second-moment rate = {c['second_moment_rate']:.4f}")

# %% [markdown]
# ## 2. A synthetic study into a DataFrame
# Ten clients' LoRA factors on a quadratic problem, three methods, three seeds, in memory.

# %%
df = af.run_synthetic(n_clients=10, rounds=30, seeds=3, methods=["adf-lora", "rolora", "lora"],
                      constants_every=0)
final = df[(df.layer == "all") & (df["round"] == df["round"].max())]
print(final.groupby("method")[["xi_A", "xi_B", "loss"]].mean().to_string(float_format="%.4g"))

# %% [markdown]
# ## 3. Theory checks
# The checks need a run directory (topology constants and the mixing log).

# %%
run = OUT / "run"
if not (run / "metrics.parquet").exists():
    af.run_synthetic(out=run, n_clients=10, rounds=30, seeds=3,
                     methods=["adf-lora", "rolora"], constants_every=0, topology_samples=2000)
checks = af.run_checks(run)
print(checks.groupby(["method", "status"]).size().unstack(fill_value=0).to_string())

# %% [markdown]
# ## 4. A figure
# Consensus error of the B factor per round (seed means): ADF-LoRA gossips the frozen factor,
# RoLoRA does not.

# %%
tot = df[df.layer == "all"]
fig, ax = plt.subplots(figsize=(6, 3.5))
for method, g in tot.groupby("method"):
    mean = g.groupby("round")["xi_B"].mean()
    ax.plot(mean.index, mean.to_numpy(), label=method)
ax.set_yscale("log")
ax.set_xlabel("round")
ax.set_ylabel("Ξ_B")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "xi_B.png", dpi=100)
print("figure:", OUT / "xi_B.png")
