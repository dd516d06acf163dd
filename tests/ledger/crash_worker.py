"""Subprocess for the crash test: apply deterministic blocks to a SQLite chain until killed.

Run as ``python crash_worker.py DB TARGET_HEIGHT``. Blocks depend only on the height and the
state (fixed wallets, fixed times), so the parent test can regenerate the exact same chain.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import BASED  # noqa: E402

CHAIN_ID = "crash-test"
WALLETS = [Wallet.from_seed(f"crash-{i}") for i in range(12)]
OPERATOR = Wallet.from_seed("crash-operator")
PROPOSER = Wallet.from_seed("crash-proposer")
TXS_PER_BLOCK = 20


def crash_genesis() -> Genesis:
    return Genesis(CHAIN_ID, OPERATOR.address, Wallet.from_seed("crash-bridge").address,
                   {w.address: 1_000 * BASED for w in WALLETS}, tempo=4)


def block_txs(chain: Chain, height: int) -> list[Tx]:
    """Transfers every block; at fixed heights, registrations, stakes and weights so that
    epochs pay out and bonds are written."""
    nonces: dict[str, int] = {}

    def tx(w: Wallet, kind: str, **p: object) -> Tx:
        n = nonces.get(w.address, chain.nonce(w.address))
        nonces[w.address] = n + 1
        return make_tx(w, kind, n, CHAIN_ID, fee=height % 3, **p)

    out: list[Tx] = []
    if height == 1:
        out += [tx(w, "register", brain=3, role="validator" if i < 3 else "miner",
                   max_fee=100 * BASED) for i, w in enumerate(WALLETS[:8])]
    elif height == 2:
        out += [tx(w, "stake", brain=3, delegate=w.address, amount=(i + 1) * 10 * BASED)
                for i, w in enumerate(WALLETS[:3])]
    elif height % 7 == 3:
        out += [tx(w, "set_weights", brain=3, uids=[0, 1, 2, 3, 4],
                   weights=[(height * (i + 3) * (u + 1)) % 1000 for u in range(5)])
                for i, w in enumerate(WALLETS[:3])]
    for k in range(TXS_PER_BLOCK - len(out)):
        a, b = WALLETS[(height + k) % 12], WALLETS[(height * 5 + k * 7 + 1) % 12]
        out.append(tx(a, "transfer", to=b.address, amount=1 + (height * 31 + k) % 10**6))
    return out


def next_block(chain: Chain) -> Block:
    h = chain.height + 1
    block, rejected = chain.produce_block(block_txs(chain, h), PROPOSER, 1_000 + h)
    assert not rejected, rejected
    return block


def main() -> None:
    db, target = sys.argv[1], int(sys.argv[2])
    chain = Chain.open_sqlite(db, crash_genesis())
    print("ready", chain.height, flush=True)
    while chain.height < target:
        chain.apply_block(next_block(chain))
    print("done", chain.height, flush=True)


if __name__ == "__main__":
    main()
