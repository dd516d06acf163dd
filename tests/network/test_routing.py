"""Routing by embedding radius (SPEC N3, paper §4.3, issue #8).

Embeddings are the tiny model's own (``embed_query``); the fallback test routes a real
encrypted generation to a real miner after a real dead address on 127.0.0.1 refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tolerance import U64, gamma

from cerberus.artefact import Artefact
from cerberus.errors import CerberusError
from network.routing import Router, RoutingError, embed_query
from runtime.client import MinerClient, MinerError

QUERIES = ["import os", "class A:", "The for statement is used to"]


def test_embed_query_is_the_normalised_mean_of_the_model_s_token_embeddings(
        fhe_artefact: Artefact) -> None:
    e = embed_query(fhe_artefact, "def f(x):")
    d = fhe_artefact.client.cfg.d_model
    # float64: the normalisation (d squares, a sum, sqrt, d divides) and this norm again
    tol = gamma(2 * d + 4, U64)
    assert e.shape == (d,) and abs(np.linalg.norm(e) - 1) <= tol
    assert np.array_equal(e, embed_query(fhe_artefact, "def f(x):"))
    ids = fhe_artefact.tokenizer("def f(x):").input_ids
    row = fhe_artefact.client.state["tok_emb.weight"][ids[0]].double().numpy()
    if len(set(ids)) > 1:  # the mean of several rows is not any single row's direction
        assert np.abs(e - row / np.linalg.norm(row)).max() > 2 * tol  # beyond rounding
    assert np.abs(e - embed_query(fhe_artefact, "import os")).max() > 2 * tol
    with pytest.raises(CerberusError, match="empty"):
        embed_query(fhe_artefact, "")


def test_a_query_goes_to_the_miner_whose_past_embeddings_are_nearest(
        fhe_artefact: Artefact) -> None:
    es = [embed_query(fhe_artefact, q) for q in QUERIES]
    router = Router(["a", "b", "c"])
    for m, e in zip("abc", es, strict=True):
        router.record(m, e)
    for m, e in zip("abc", es, strict=True):
        assert router.order(e)[0] == m
    # a query similar to "import os" goes where "import os" went
    near = embed_query(fhe_artefact, "import sys")
    radii = router.radii(near)
    assert router.order(near) == sorted(radii, key=lambda m: radii[m])  # type: ignore[arg-type]


def test_cold_miners_first_least_used_then_by_radius(fhe_artefact: Artefact) -> None:
    es = [embed_query(fhe_artefact, q) for q in QUERIES]
    router = Router(["a", "b", "c"])
    served = [router.route(es[0], lambda m: m)[0] for _ in range(3)]
    assert sorted(served) == ["a", "b", "c"]  # the same query spread over all cold miners
    router.update(["a", "b", "c", "d"])  # a new miner joins: it gets the next query
    assert router.route(es[0], lambda m: m)[0] == "d"
    assert len(router.history_of("d")) == 1 and len(router.history_of("a")) == 1


def test_history_is_bounded_and_drops_the_oldest(fhe_artefact: Artefact) -> None:
    es = [embed_query(fhe_artefact, q) for q in [*QUERIES, "def f(x):", "return x"]]
    router = Router(["a"], history=3)
    for e in es:
        router.record("a", e)
    kept = router.history_of("a")
    assert len(kept) == 3 and all(np.array_equal(k, e) for k, e in zip(kept, es[2:],
                                                                          strict=True))
    assert router.radii(es[-1])["a"] == 0.0
    assert router.radii(es[0])["a"] > 0.0  # the oldest was forgotten


def test_fallback_to_the_next_miner_when_the_nearest_is_down(
        fhe_artefact: Artefact, start_miner: Callable[..., str], dead_address: str,
        tmp_path: Path) -> None:
    live = start_miner()
    text = "def f(x):"
    e = embed_query(fhe_artefact, text)
    router = Router([live, dead_address])
    router.record(dead_address, e)  # the dead miner served this very query before
    router.record(live, embed_query(fhe_artefact, "The for statement is used to"))
    assert router.order(e) == [dead_address, live]
    ids = fhe_artefact.tokenizer(text).input_ids

    def generate(address: str) -> list[int]:
        with MinerClient(address, artefact=Path(fhe_artefact.path), retries=0,
                         cache_dir=tmp_path / "client", seed=3, timeout=120) as c:
            return c.generate(ids, 1).ids

    miner, out = router.route(e, generate)
    assert miner == live and out == fhe_artefact.generate(ids, 1)
    # the dead miner that just failed is now tried last, not first
    assert router.order(e) == [live, dead_address]


def test_all_miners_down_is_a_clear_error(dead_address: str) -> None:
    router = Router([dead_address, "127.0.0.1:1"])

    def health(address: str) -> str:
        with MinerClient(address, retries=0, timeout=10) as c:
            return c.health().status

    with pytest.raises(RoutingError, match="all 2 miners failed") as info:
        router.route(np.ones(4), health)
    assert set(info.value.failures) == {dead_address, "127.0.0.1:1"}
    assert all(isinstance(x, MinerError) for x in info.value.failures.values())
    with pytest.raises(RoutingError, match="no miners"):
        Router([]).route(np.ones(4), health)


def test_only_miner_errors_fall_back() -> None:
    def broken(address: str) -> str:
        raise ValueError("a bug in the caller")

    with pytest.raises(ValueError, match="bug"):
        Router(["a", "b"]).route(np.ones(4), broken)
