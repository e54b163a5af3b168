"""User theory checks for ``adflora synthetic check RUN --checks examples/checks/my_checks.py``.

A check is a function of a :class:`~adflora_analysis.theory.data.Context` (one
method and variant of the run) returning a ``CheckResult``, a list of them, or None (does not
apply). :func:`bound_check` turns a measured (seeds, rounds) curve and its bound into a result
with the built-in checks' statistics (pooled ratio, interval, power). User checks run in a
child process with a time limit (``--check-timeout``): a check that raises, hangs or calls
``sys.exit`` is that check's ``error`` line, never the command's verdict.
"""

from __future__ import annotations

import numpy as np

from adflora_analysis.theory import bound_check, register_check


@register_check("loss-below-start")
def loss_below_start(ctx):
    """The loss at the averaged model stays below its value after the first round (a weak
    sanity claim: descent on average, not a theorem)."""
    loss = ctx.run.mat("loss")                      # (seeds, rounds)
    start = np.repeat(loss[:, :1], loss.shape[1], axis=1)
    return bound_check(ctx, "loss-below-start", "u1", loss, start,
                       note="loss(t) <= loss(0) at the averaged model")


@register_check("consensus-shrinks")
def consensus_shrinks(ctx):
    """Over the second half of the run the consensus error of B is no larger than over the
    first half (gossip contracts what local steps add)."""
    xi = ctx.run.mat("xi_B")                        # (seeds, rounds)
    h = xi.shape[1] // 2
    if h < 1:
        return None
    late, early = xi[:, h:2 * h].mean(1), xi[:, :h].mean(1)
    return bound_check(ctx, "consensus-shrinks", "u2", late, early + 1e-12,
                       note="mean Xi_B, second half vs first half")
