"""Fuzzing live nodes (issue #15; SPEC N1): three validator processes on 127.0.0.1, and
2,000 hostile messages per gossip kind and per RPC sent to one of them by hypothesis —
real envelopes with fields replaced by any JSON (huge, negative and float integers, wrong
types, deep nesting), byte-level cuts and flips, and garbage. Every message must get a
status (never a crash or a hang); afterwards the network keeps finalizing, every node holds
the same final block and state root, and each process stays under 2 GB resident.

The fuzzed node's rate limit is raised so the messages reach the parsers (the limit itself
is tested in test_node_robustness.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_harness import (  # noqa: E402
    CHAIN_ID,
    OPERATOR,
    USER,
    VALIDATORS,
    NodeProc,
    block_at,
    make_genesis,
)

from ledger.tx import make_tx  # noqa: E402
from network.finality import Announcement, Vote  # noqa: E402
from network.protos import node_pb2, node_pb2_grpc  # noqa: E402

EXAMPLES = 2000
RSS_LIMIT = 2 << 30
WAIT = 60.0
OK_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.OUT_OF_RANGE}
GOSSIP = ("tx", "txs", "vote", "announce", "block")
RPCS = ("Hello", "GetBlocks", "SubmitTx", "SubmitTxs", "Account", "Brain", "Directory",
        "Status")


class Net:
    def __init__(self, root: Path) -> None:
        g = make_genesis()
        fast = ["--rate", "1000000", "--burst", "1000000"]
        self.procs = [NodeProc(root, "v0", g, VALIDATORS[0], [], extra=fast).start()]
        self.procs += [NodeProc(root, f"v{i}", g, VALIDATORS[i], [self.procs[0].listen]).start()
                       for i in (1, 2)]
        self.target = self.procs[0]
        self.channel = grpc.insecure_channel(self.target.listen, options=[
            ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
        self.stub = node_pb2_grpc.NodeStub(self.channel)
        with self.target.client() as c:
            c.wait_until(lambda s: s["height"] >= 2, WAIT)
            [(block, votes)] = c.blocks(1, 1)
        self.samples: dict[str, Any] = {
            "tx": make_tx(USER, "transfer", 0, CHAIN_ID, to=OPERATOR.address,
                          amount=1).to_dict(),
            "txs": [make_tx(USER, "transfer", n, CHAIN_ID, to=OPERATOR.address,
                            amount=1).to_dict() for n in (0, 1)],
            "vote": Vote.make(VALIDATORS[1], CHAIN_ID, 10**6, "ab" * 32).to_dict(),
            "announce": Announcement.make(USER, CHAIN_ID, 1, "127.0.0.1:9", 1).to_dict(),
            "block": block.to_dict(),
        }

    def height(self, p: NodeProc) -> int:
        with p.client() as c:
            return int(c.status()["height"])

    def rss(self, p: NodeProc) -> int:
        assert p.proc is not None
        status = Path(f"/proc/{p.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmRSS:"))) * 1024


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    n = Net(tmp_path_factory.mktemp("fuzz-net"))
    try:
        yield n
    finally:
        n.channel.close()
        for p in n.procs:
            p.kill()


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.integers(-(2**70), 2**70) | st.sampled_from([2**63, -1, 2**64, 0]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


def replace_field(sample: Any) -> st.SearchStrategy[Any]:
    """``sample`` with one (possibly nested) field or list item replaced by any JSON, or
    dropped."""
    paths: list[tuple] = []

    def walk(obj: object, path: tuple) -> None:
        items = obj.items() if isinstance(obj, dict) else (
            enumerate(obj) if isinstance(obj, list) else ())
        for k, v in items:
            paths.append((*path, k))
            walk(v, (*path, k))

    walk(sample, ())

    def apply(args: tuple[tuple, object, bool]) -> dict:
        path, value, drop = args
        doc = json.loads(json.dumps(sample))
        node = doc
        for k in path[:-1]:
            node = node[k]
        if drop:
            node.pop(path[-1])
        else:
            node[path[-1]] = value
        return doc
    return st.tuples(st.sampled_from(paths), JSON, st.booleans()).map(apply)


def payloads(sample: Any) -> st.SearchStrategy[bytes]:
    raw = json.dumps(sample).encode()
    cut = st.integers(0, len(raw) - 1).map(lambda i: raw[:i])

    def flip(args: tuple[int, int]) -> bytes:
        b = bytearray(raw)
        b[args[0] % len(b)] ^= 1 << args[1]
        return bytes(b)
    return st.one_of(replace_field(sample).map(lambda d: json.dumps(d).encode()),
                     replace_field(sample).map(lambda d: json.dumps(d).encode()),
                     cut, st.tuples(st.integers(0, len(raw)), st.integers(0, 7)).map(flip),
                     JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=128),
                     st.just(b"[" * 5000))


def rpc_calls(net: Net, method: str) -> st.SearchStrategy:
    u64 = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 100))
    u32 = st.integers(0, 2**32 - 1)
    text = st.text(max_size=100)
    return {
        "Hello": st.builds(node_pb2.HelloRequest, genesis_hash=text, address=text,
                           listen=st.one_of(text, st.just("127.0.0.1:1")), height=u64),
        "GetBlocks": st.builds(node_pb2.BlocksRequest, from_height=u64, to_height=u64),
        "SubmitTx": payloads(net.samples["tx"]).map(lambda b: node_pb2.TxRequest(tx=b)),
        "SubmitTxs": st.lists(payloads(net.samples["tx"]), max_size=4).map(
            lambda bs: node_pb2.TxsRequest(txs=bs)),
        "Account": st.builds(node_pb2.AccountRequest, address=text),
        "Brain": st.builds(node_pb2.BrainRequest, brain=u32),
        "Directory": st.builds(node_pb2.BrainRequest, brain=u32),
        "Status": st.just(node_pb2.Empty()),
    }[method]


def call(net: Net, method: str, message) -> None:
    try:
        if method == "GetBlocks":
            for _ in net.stub.GetBlocks(message, timeout=30):
                pass
        else:
            getattr(net.stub, method)(message, timeout=30)
    except grpc.RpcError as e:
        assert e.code() in OK_CODES, (method, e.code(), e.details())


def check_alive(net: Net) -> None:
    """Still finalizing, one chain on every node, every process under 2 GB."""
    h = max(net.height(p) for p in net.procs)
    for p in net.procs:
        with p.client() as c:
            c.wait_until(lambda s: s["height"] > h, WAIT)
        assert p.proc is not None and p.proc.poll() is None
        assert net.rss(p) < RSS_LIMIT
    assert len({block_at(p, h) for p in net.procs}) == 1


@pytest.mark.parametrize("kind", GOSSIP)
def test_gossip_survives_hostile_envelopes(net: Net, kind: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(payload=payloads(net.samples[kind]),
           as_kind=st.one_of(st.just(kind), st.just(kind), st.just(kind), st.text(max_size=12)))
    def fuzz(payload: bytes, as_kind: str) -> None:
        sent.append(payload)
        call(net, "Gossip", node_pb2.Envelope(kind=as_kind, payload=payload))

    sent: list[bytes] = []
    fuzz()
    assert len(sent) >= EXAMPLES
    check_alive(net)


@pytest.mark.parametrize("method", RPCS)
def test_rpcs_survive_hostile_requests(net: Net, method: str) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(message=rpc_calls(net, method))
    def fuzz(message) -> None:
        sent.append(message)
        call(net, method, message)

    sent: list = []
    fuzz()
    assert len(sent) >= (1 if method == "Status" else EXAMPLES)  # Status takes no input
    check_alive(net)
