"""Per-source-address limits of the miner (issue #15; SPEC R3): a budget belongs to the
address, not to the connection, so opening more connections gains a flooder nothing,
while another address keeps its own budget.

The live tests run a real ``MinerService`` on 127.0.0.1; a second source address is
reached through ``network.relay.Relay``, whose outgoing connection is bound to 127.0.0.x.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from cerberus.artefact import Artefact
from network.relay import Relay
from runtime.limits import PerAddressLimiter, peer_ip
from runtime.metrics import parse
from runtime.protos import miner_pb2 as pb
from runtime.protos import miner_pb2_grpc as pb_grpc
from runtime.server import PROTOCOL, PROTOCOL_HEADER, MinerService, start

META = ((PROTOCOL_HEADER, str(PROTOCOL)),)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_peer_ip_drops_the_port() -> None:
    assert peer_ip("ipv4:127.0.0.5:4242") == "127.0.0.5"
    assert peer_ip("ipv6:[::1]:4242") == "::1"


def test_a_budget_is_per_address_and_refills_at_the_rate() -> None:
    clock = Clock()
    lim = PerAddressLimiter(in_flight=10, rate=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert lim.enter("10.0.0.1") is None
        lim.leave("10.0.0.1")
    assert "calls/s" in (lim.enter("10.0.0.1") or "")
    assert lim.enter("10.0.0.2") is None  # another address: its own bucket
    clock.now += 0.5  # one token back at 2/s
    assert lim.enter("10.0.0.1") is None
    assert lim.enter("10.0.0.1") is not None
    assert lim.refused == 2


def test_calls_in_flight_are_capped_and_released() -> None:
    lim = PerAddressLimiter(in_flight=2, rate=1e6, burst=1e6, clock=Clock())
    assert lim.enter("a") is None and lim.enter("a") is None
    assert "in flight" in (lim.enter("a") or "")
    lim.leave("a")
    assert lim.enter("a") is None
    lim.leave("unknown")  # never admitted: no effect, no error


def test_the_table_forgets_idle_addresses_never_busy_ones() -> None:
    clock = Clock()
    lim = PerAddressLimiter(in_flight=1, rate=1.0, burst=1, max_addresses=2, clock=clock)
    assert lim.enter("busy") is None  # stays in flight
    assert lim.enter("idle") is None
    lim.leave("idle")
    assert lim.enter("third") is None  # over the table's size: "idle" is forgotten
    lim.leave("third")
    assert lim.enter("idle") is None  # forgotten, so a fresh bucket
    assert "in flight" in (lim.enter("busy") or "")  # still counted


@pytest.mark.parametrize("kwargs", [{"in_flight": 0}, {"rate": 0}, {"burst": 0.5},
                                    {"max_addresses": 0}])
def test_nonsense_limits_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PerAddressLimiter(**kwargs)


@pytest.fixture
def limited(packed_artefact: Artefact) -> Iterator[tuple[MinerService, str]]:
    service = MinerService(packed_artefact.path, per_address=PerAddressLimiter(
        in_flight=1, rate=1e-3, burst=3))
    server, port = start(service, "127.0.0.1", 0)
    yield service, f"127.0.0.1:{port}"
    server.stop(0).wait()
    service.close()


def health(address: str) -> grpc.StatusCode:
    """One Health call on a new channel (a new connection): its status."""
    with grpc.insecure_channel(address) as ch:
        try:
            pb_grpc.MinerStub(ch).Health(pb.HealthRequest(), metadata=META, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def test_new_connections_do_not_reset_an_address_budget(limited) -> None:
    service, address = limited
    assert [health(address) for _ in range(4)] == [grpc.StatusCode.OK] * 3 + [
        grpc.StatusCode.RESOURCE_EXHAUSTED]
    with Relay(address, "127.0.0.2") as relay:  # another source address: served
        assert health(relay.address) == grpc.StatusCode.OK
    with Relay(address, "127.0.0.3") as relay, grpc.insecure_channel(relay.address) as ch:
        text = pb_grpc.MinerStub(ch).Metrics(pb.MetricsRequest(), metadata=META,
                                             timeout=10).text
    assert parse(text)["cerberus_rate_limited_total"] >= 1


def test_one_address_cannot_hold_more_than_its_calls_in_flight(packed_artefact) -> None:
    service = MinerService(packed_artefact.path, per_address=PerAddressLimiter(
        in_flight=1, rate=1e6, burst=1e6))
    server, port = start(service, "127.0.0.1", 0)
    address = f"127.0.0.1:{port}"
    release = threading.Event()

    def requests() -> Iterator[pb.InferRequest]:
        release.wait(30)  # holds the stream open, sending nothing
        return
        yield

    try:
        with grpc.insecure_channel(address) as ch:
            stream = pb_grpc.MinerStub(ch).Generate(requests(), metadata=META, timeout=30)
            deadline = time.monotonic() + 10
            while service.metrics.in_flight < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert service.metrics.in_flight == 1
            assert health(address) == grpc.StatusCode.RESOURCE_EXHAUSTED
            with Relay(address, "127.0.0.2") as relay:
                assert health(relay.address) == grpc.StatusCode.OK
            release.set()
            assert list(stream) == []
        assert health(address) == grpc.StatusCode.OK  # the finished stream gave it back
    finally:
        release.set()
        server.stop(0).wait()
        service.close()


@pytest.mark.parametrize("flag", [("--per-ip-calls", "0"), ("--per-ip-rate", "-1")])
def test_serve_refuses_nonsense_per_ip_flags_in_one_line(
        flag: tuple[str, str], tmp_path, capsys: pytest.CaptureFixture) -> None:
    from cerberus_cli.main import main

    code = main(["serve", str(tmp_path), *flag])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "--per-ip" in err
