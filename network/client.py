"""``NodeClient``: what miners, validators, ``cerberus join`` and tests use to talk to a node
(SPEC N1, issue #8). Same reads as ``Node`` itself, over gRPC, with bounded waits only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import grpc

from ledger.block import Block
from ledger.encoding import canonical
from ledger.tx import Tx
from network.protos import node_pb2, node_pb2_grpc

OPTIONS = [("grpc.max_receive_message_length", 4 * 1024 * 1024),
           ("grpc.max_send_message_length", 4 * 1024 * 1024)]


class NodeClient:
    """A gRPC client of one node at ``address`` ("host:port")."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        self.address = address
        self.timeout = timeout
        self.channel = grpc.insecure_channel(address, options=OPTIONS)
        self.stub = node_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reads -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The node's ``status()`` dict (height, finalized_height, state_root, …)."""
        return json.loads(self.stub.Status(node_pb2.Empty(), timeout=self.timeout).json)

    def account(self, address: str) -> dict[str, Any]:
        """{"address", "balance", "nonce", "pending_nonce", "height"} at the node's head."""
        return json.loads(self.stub.Account(node_pb2.AccountRequest(address=address),
                                            timeout=self.timeout).json)

    def balance(self, address: str) -> int:
        return int(self.account(address)["balance"])

    def nonce(self, address: str) -> int:
        """The nonce the account's next tx must carry (mempool not counted)."""
        return int(self.account(address)["nonce"])

    def pending_nonce(self, address: str) -> int:
        """The nonce after the account's txs waiting in this node's mempool."""
        return int(self.account(address)["pending_nonce"])

    def brain(self, brain_id: int) -> dict[str, Any] | None:
        """The Brain's config and registrations (uids as ints), or None if it does not exist."""
        try:
            reply = self.stub.Brain(node_pb2.BrainRequest(brain=brain_id), timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        info = json.loads(reply.json)
        for role in ("miners", "validators"):
            info[role] = {int(uid): addr for uid, addr in info[role].items()}
        return info

    def directory(self, brain_id: int) -> dict[str, str]:
        """Registered miners' announced endpoints of a Brain: {address: endpoint}."""
        return json.loads(self.stub.Directory(node_pb2.BrainRequest(brain=brain_id),
                                              timeout=self.timeout).json)

    def blocks(self, lo: int, hi: int) -> list[tuple[Block, list[dict[str, Any]]]]:
        """Final blocks lo..hi (the node caps one call at 128) with their votes."""
        out = []
        for item in self.stub.GetBlocks(node_pb2.BlocksRequest(from_height=lo, to_height=hi),
                                        timeout=max(self.timeout, 30.0)):
            out.append((Block.from_dict(json.loads(item.block)), json.loads(item.votes)))
        return out

    # ---- writes ------------------------------------------------------------------------
    def submit(self, tx: Tx) -> str | None:
        """Send ``tx`` to the node's mempool; None if admitted, else the reason."""
        try:
            reply = self.stub.SubmitTx(node_pb2.TxRequest(tx=canonical(tx.to_dict())),
                                       timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                return e.details() or "invalid tx"
            raise
        return None if reply.accepted else reply.reason

    def submit_many(self, txs: list[Tx]) -> list[str | None]:
        """Send up to 1,000 txs in one call (``SubmitTxs``); per tx, None if admitted,
        else the reason. The node judges them in order, so a sender's consecutive nonces
        can go in one batch."""
        reply = self.stub.SubmitTxs(
            node_pb2.TxsRequest(txs=[canonical(tx.to_dict()) for tx in txs]),
            timeout=max(self.timeout, 30.0))
        return [None if r.accepted else r.reason for r in reply.replies]

    # ---- waiting -----------------------------------------------------------------------
    def wait_until(self, predicate: Callable[[dict[str, Any]], bool], timeout: float,
                   interval: float = 0.25) -> dict[str, Any]:
        """Poll ``status()`` until ``predicate(status)`` holds; returns that status.

        Raises ``TimeoutError`` (with the last status seen) after ``timeout`` seconds. A
        node that is down for a moment (restarting) counts as "not yet", not as failure.
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "no status yet"
        while True:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except grpc.RpcError as e:
                last = f"{e.code()}: {e.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.address}: condition not met in {timeout} s; "
                                   f"last status: {last}")
            time.sleep(interval)
