"""Write the reference rows the bit-identity test compares against (tests/test_bit_identity.py).

Run with the code of the commit whose behaviour is the reference on ``sys.path`` first, e.g.::

    git worktree add /tmp/ref 543a052
    PYTHONPATH=/tmp/ref python tests/data/make_reference_rows.py tests/data

It runs every shipped synthetic study at the reduced size of :data:`SMALL` and one short GLUE run
on a tiny RoBERTa, and writes their metric rows (and the GLUE evaluation rows) as Parquet.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

STUDIES = ["bounds", "heterogeneity", "scale", "t_ablation", "topology_sweep"]
# keys every study is reduced by (rounds cover a phase switch at T = 5; scale keeps its shape
# but not its 1,000 clients)
SMALL = {"seeds": "2", "rounds": "12", "checkpoint_every": "0"}
SMALL_STUDY = {"scale": {"n_clients": "24", "topology_samples": "100", "constants_every": "5"}}
# a short GLUE run on the tiny RoBERTa of tests/conftest.py (built by glue.tiny, deterministic)
GLUE = dict(task="rotten_tomatoes", n_clients=4, rounds=4, local_steps=2, batch_size=8,
            max_length=32, max_train_examples=300, max_eval_examples=40, eval_every=2,
            checkpoint_every=0, lr=5e-3, methods=["adf-lora", "rolora", "ffa-lora", "lora"],
            switch_interval=2, threads=1, train_head=True)


def synthetic_rows(repo: Path, name: str):
    from adflora_analysis.config import load_config
    from adflora_analysis.synthetic.config import SyntheticConfig
    from adflora_analysis.synthetic.runner import run_study

    small = {**SMALL, **SMALL_STUDY.get(name, {})}
    cfg = load_config(SyntheticConfig, str(repo / "synthetic" / f"{name}.toml"),
                      [f"{k}={v}" for k, v in small.items()])
    with tempfile.TemporaryDirectory() as d:
        df = run_study(cfg, Path(d) / "run")
    df.insert(0, "study", name)
    return df


def glue_rows():
    import pandas as pd

    from adflora_analysis.config import load_config
    from adflora_analysis.glue.config import GlueConfig
    from adflora_analysis.glue.runner import run_glue
    from adflora_analysis.glue.tiny import build_tiny_roberta

    with tempfile.TemporaryDirectory() as d:
        build_tiny_roberta(Path(d) / "tiny")
        cfg = load_config(GlueConfig, data={**GLUE, "model": str(Path(d) / "tiny")})
        run_glue(cfg, Path(d) / "run")
        return (pd.read_parquet(Path(d) / "run" / "metrics.parquet"),
                pd.read_parquet(Path(d) / "run" / "eval.parquet"))


def main(out: str) -> None:
    import pandas as pd

    repo = Path(__file__).resolve().parents[2]
    df = pd.concat([synthetic_rows(repo, s) for s in STUDIES], ignore_index=True)
    df.to_parquet(Path(out) / "reference_synthetic.parquet", index=False)
    print(f"synthetic: {len(df)} rows")
    m, e = glue_rows()
    m.to_parquet(Path(out) / "reference_glue_metrics.parquet", index=False)
    e.to_parquet(Path(out) / "reference_glue_eval.parquet", index=False)
    print(f"glue: {len(m)} metric rows, {len(e)} evaluation rows")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
