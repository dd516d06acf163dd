"""The backend choice per hybrid linear (cerberus.fhe.pricing, issue #14): priced on the
user's link, exact backends only for ``auto``, and the packed path's predicted bytes are the
bytes it sends."""

from __future__ import annotations

import numpy as np
import pytest

from cerberus.errors import CompileError
from cerberus.fhe.packed import PackedClient, PackedLinear, PackedParams
from cerberus.fhe.pricing import Link, choose, price

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
    p = price("packed", 64, 192, rows, Link())
    assert p.bytes_down == len(reply) == params.output_bytes(rows)
    assert len(message) <= params.input_bytes(rows)  # the bound a miner enforces
    # the prediction is SEAL's compressed size per coefficient, measured: within 10 %
    assert p.bytes_up == pytest.approx(len(message), rel=0.1)
