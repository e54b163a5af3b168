"""Draw docs/round_structure.png from the method specs themselves (so it cannot drift).

Run: python docs/make_round_figure.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from adflora_analysis.core.methods import METHODS  # noqa: E402

ROUNDS, T = 20, 5


def main(out: Path = Path(__file__).with_name("round_structure.png")) -> Path:
    specs = list(METHODS.values())
    fig, ax = plt.subplots(figsize=(11, 0.9 * 2 * len(specs) + 1))
    colors = {"train": "#3182bd", "gossip": "#fdae6b", "idle": "#f0f0f0"}
    labels = []
    for i, spec in enumerate(specs):
        Tm = T if spec.alternates else spec.default_switch_interval
        for j, block in enumerate(("A", "B")):
            y = -(2 * i + j)
            labels.append((y, f"{spec.name}  {block}" + (f"  (T={Tm})" if j == 0 and
                                                        spec.alternates else "")))
            for t in range(ROUNDS):
                trained = block in spec.trained_blocks(t, Tm)
                mixed = block in spec.mixed_blocks(t, Tm)
                ax.add_patch(Rectangle((t, y), 0.48, 0.8, color=colors["train" if trained
                                                                          else "idle"]))
                ax.add_patch(Rectangle((t + 0.5, y), 0.48, 0.8, color=colors["gossip" if mixed
                                                                               else "idle"]))
    ax.set_xlim(0, ROUNDS)
    ax.set_ylim(-2 * len(specs) + 0.8, 1)
    ax.set_yticks([y + 0.4 for y, _ in labels], [lbl for _, lbl in labels], fontsize=9)
    ax.set_xticks(range(0, ROUNDS + 1, T))
    ax.set_xlabel("round t (each round: local steps on the trained block, then gossip W^t)")
    ax.legend(handles=[Patch(color=colors["train"], label="local training (K steps)"),
                       Patch(color=colors["gossip"], label="gossip X <- W^t X"),
                       Patch(color=colors["idle"], label="neither (block unchanged)")],
              loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3, fontsize=9)
    ax.set_title("Round structure of each method: which factor trains, which is gossiped")
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(main())
