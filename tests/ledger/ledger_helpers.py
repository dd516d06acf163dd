"""Shared builders for the ledger tests (deterministic wallets, genesis, block helpers)."""

from __future__ import annotations

from ledger.block import Block
from ledger.chain import Chain
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.state import State
from ledger.tx import Tx, make_tx
from ledger.units import BASED

CHAIN_ID = "cerberus-test"
OPERATOR = Wallet.from_seed("operator")
BRIDGE = Wallet.from_seed("bridge")
PROPOSER = Wallet.from_seed("proposer")
USERS = [Wallet.from_seed(f"user-{i}") for i in range(8)]
START_BALANCE = 10_000 * BASED


def genesis(**overrides: object) -> Genesis:
    params: dict[str, object] = {
        "chain_id": CHAIN_ID,
        "operator": OPERATOR.address,
        "bridge": BRIDGE.address,
        "balances": {u.address: START_BALANCE for u in USERS} | {OPERATOR.address: START_BALANCE},
        "tempo": 1_000_000,  # epochs only where a test asks for them
        "max_block_txs": 20_000,  # some tests fill every Brain or miner slot in one block
    }
    params.update(overrides)
    return Genesis(**params)  # type: ignore[arg-type]


class Signer:
    """Signs txs for a chain, tracking each wallet's next nonce locally."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.nonces: dict[str, int] = {}

    def tx(self, wallet: Wallet, kind: str, fee: int = 0, **payload: object) -> Tx:
        n = self.nonces.get(wallet.address, self.chain.nonce(wallet.address))
        self.nonces[wallet.address] = n + 1
        return make_tx(wallet, kind, n, self.chain.genesis.chain_id, fee=fee, **payload)


def next_block(chain: Chain, txs: list[Tx] | tuple[Tx, ...] = ()) -> tuple[Block, list]:
    """Produce and apply the next block (time = height); returns it and the rejected txs."""
    block, rejected = chain.produce_block(list(txs), PROPOSER, chain.height + 1)
    chain.apply_block(block)
    return block, rejected


def apply_ok(chain: Chain, *txs: Tx) -> Block:
    """Apply txs that must all be valid."""
    block, rejected = next_block(chain, txs)
    assert rejected == [], rejected
    return block


def reason(chain: Chain, tx: Tx) -> str:
    """The rejection reason of a tx that must be invalid."""
    r = chain.validate_tx(tx)
    assert r is not None, "tx unexpectedly valid"
    return r


def conserved(state: State) -> bool:
    """supply = genesis + emitted − burned, from independent sums."""
    return state.supply() == (state.meta("genesis_supply") + state.meta("issued")
                              - state.meta("burned"))
