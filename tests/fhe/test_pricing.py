"""The backend choice per hybrid linear (cerberus.fhe.pricing, issue #14): priced on the
user's link, exact backends only for ``auto``, and the packed path's predicted bytes are the
bytes it sends."""

from __future__ import annotations

import numpy as np
import pytest

from cerberus.errors import CompileError
from cerberus.fhe.packed import PackedClient, PackedLinear, PackedParams
from cerberus.fhe.pricing import Link, choose, packed_params, packed_variants, price

SHAPES = [(64, 192), (64, 256), (256, 64), (384, 1152)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rows", [1, 8])
def test_auto_takes_the_cheapest_exact_backend(shape, rows) -> None:
    chosen, prices = choose("auto", *shape, rows, Link())
    exact = {b: p for b, p in prices.items() if p["exact"] and b != "glwe"}
    assert chosen == min(exact, key=lambda b: exact[b]["seconds"])
    assert not prices["glwe"]["exact"]  # priced, never chosen by auto


def test_a_slow_link_prices_bytes_and_a_fast_one_compute() -> None:
    slow, fast = Link(mbps=1.0, rtt_ms=0), Link(mbps=1e6, rtt_ms=0)
    for backend in ("lwe", "packed"):
        s, f = price(backend, 384, 1152, 1, slow), price(backend, 384, 1152, 1, fast)
        wire = (s.bytes_up + s.bytes_down) * 8 / 1e6
        assert s.seconds == pytest.approx(s.miner_s + s.client_s + wire)
        assert f.seconds == pytest.approx(f.miner_s + f.client_s, rel=1e-3)


def test_an_explicit_backend_is_kept_and_an_unknown_one_named() -> None:
    assert choose("lwe", 64, 192, 1, Link())[0] == "lwe"
    assert choose("packed", 64, 192, 1, Link())[0] == "packed"
    with pytest.raises(CompileError, match="lwe, packed, auto"):
        choose("glwe", 64, 192, 1, Link())
    with pytest.raises(CompileError, match="bandwidth"):
        Link(mbps=0)


def test_packed_is_refused_where_its_accumulator_does_not_fit() -> None:
    # 2^20 inputs of 8 bits: a 35-bit accumulator, too wide for one 54-bit prime
    with pytest.raises(CompileError, match="split the input dimension"):
        choose("packed", 1 << 20, 4, 1, Link())
    assert choose("auto", 1 << 20, 4, 1, Link())[0] == "lwe"


@pytest.mark.parametrize("rows", [1, 5])
def test_predicted_packed_bytes_are_the_bytes_sent(rows) -> None:
    params = PackedParams(64, 192)
    rng = np.random.default_rng(rows)
    client = PackedClient(params)
    client.keygen()
    message = client.encrypt_rows(rng.integers(-128, 128, (rows, 64)))
    reply = PackedLinear(rng.integers(-127, 128, (64, 192)), params).run(message)
    p = price("packed", 64, 192, rows, Link(), params=params)
    assert p.bytes_down == len(reply) == params.output_bytes(rows)
    assert len(message) <= params.input_bytes(rows)  # the bound a miner enforces
    # the prediction is SEAL's compressed size per coefficient, measured: within 10 %
    assert p.bytes_up == pytest.approx(len(message), rel=0.1)


def _call(params: PackedParams, rows: int) -> tuple[PackedClient, bytes, bytes]:
    """A client, its message for ``rows`` random rows and the miner's reply."""
    rng = np.random.default_rng(rows)
    client = PackedClient(params)
    client.keygen()
    message = client.encrypt_rows(rng.integers(-128, 128, (rows, params.n_in)))
    linear = PackedLinear(rng.integers(-127, 128, (params.n_in, params.n_out)), params)
    return client, message, linear.run(message, client.evaluation_keys())


@pytest.mark.parametrize("rows", [1, 5])
def test_predicted_packing_bytes_are_the_bytes_sent(rows) -> None:
    params = PackedParams(64, 192, pack=True, width=32)
    client, message, reply = _call(params, rows)
    p = price("packed", 64, 192, rows, Link(), params=params)
    assert p.bytes_down == len(reply) == params.output_bytes(rows)
    assert len(message) <= params.input_bytes(rows)
    assert p.bytes_up == pytest.approx(len(message), rel=0.1)
    assert len(client.evaluation_keys()) <= params.key_bytes()  # the cap a miner enforces


def test_packed_prices_its_parameter_sets_and_takes_the_cheapest() -> None:
    """A fast link takes the keyless N = 2048 set (no key switches); a slow one packs, and
    the bytes it then moves are a fraction of the unpacked set's."""
    shape = (768, 2304)
    fast, slow = Link(mbps=1000.0), Link(mbps=1.0)
    variants = packed_variants(*shape)
    assert {p.pack for p in variants} == {False, True}
    for link in (fast, slow):
        best = packed_params(*shape, 1, link)
        prices = [price("packed", *shape, 1, link, params=p).seconds for p in variants]
        assert price("packed", *shape, 1, link).seconds == min(prices)
        assert price("packed", *shape, 1, link, params=best).seconds == min(prices)
    assert not packed_params(*shape, 1, fast).pack and packed_params(*shape, 1, slow).pack
    unpacked = price("packed", *shape, 1, slow, params=PackedParams(*shape))
    packed = price("packed", *shape, 1, slow)
    assert packed.bytes_up + packed.bytes_down < (unpacked.bytes_up + unpacked.bytes_down) / 4
    assert packed.variant.startswith("N=4096")


@pytest.mark.parametrize("rows", [1, 5])
def test_predicted_sparse_input_bytes_are_the_bytes_sent(rows) -> None:
    params = PackedParams(64, 192, pack=True, sparse=True)
    _, message, reply = _call(params, rows)
    p = price("packed", 64, 192, rows, Link(), params=params)
    assert p.bytes_up == len(message) == params.input_bytes(rows)  # exact, not a bound
    assert p.bytes_down == len(reply) == params.output_bytes(rows)
    assert "sparse input" in p.variant


def test_a_slow_enough_link_takes_sparse_input() -> None:
    """Sparse input moves the fewest bytes (GPT-2's 768 inputs in ~5 KB instead of a 34 KB
    ciphertext) for one key switch per output: the cost model takes it only where the link
    is slow enough for that to pay."""
    shape = (768, 768)
    assert any(p.sparse for p in packed_variants(*shape))
    crawl, fast = Link(mbps=0.01), Link(mbps=1000.0)
    assert packed_params(*shape, 1, crawl).sparse
    assert not packed_params(*shape, 1, fast).sparse
    sparse = price("packed", *shape, 1, crawl)
    dense = price("packed", *shape, 1, crawl, params=PackedParams(*shape, pack=True))
    assert sparse.bytes_up < dense.bytes_up / 5 and sparse.seconds < dense.seconds
