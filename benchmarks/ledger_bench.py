"""Ledger benchmark (issue 7): transfers/s applied with SQLite durability on, and one
consensus epoch of a full Brain (256 validators × 1792 miners) through the chain.

Run: ``.venv/bin/python benchmarks/ledger_bench.py`` (add ``--quick`` for a smoke run).
Writes benchmarks/results/ledger.json and the "ledger" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_json, write_section  # noqa: E402
from ledger.block import Block  # noqa: E402
from ledger.chain import Chain  # noqa: E402
from ledger.consensus import yuma_epoch  # noqa: E402
from ledger.epoch import consensus_inputs, run_epoch  # noqa: E402
from ledger.genesis import Genesis  # noqa: E402
from ledger.keys import Wallet  # noqa: E402
from ledger.tx import Tx, make_tx  # noqa: E402
from ledger.units import BASED, MAX_MINERS, MAX_VALIDATORS  # noqa: E402

CHAIN_ID = "bench"
OPERATOR = Wallet.from_seed("bench-operator")
BRIDGE = Wallet.from_seed("bench-bridge")
PROPOSER = Wallet.from_seed("bench-proposer")


def bench_transfers(n_blocks: int, per_block: int, n_accounts: int) -> dict[str, float]:
    """Pre-build blocks of signed transfers, then time a fresh SQLite-backed node applying
    them (signature checks, rules, state root, one durable commit per block)."""
    wallets = [Wallet.from_seed(f"bench-{i}") for i in range(n_accounts)]
    g = Genesis(CHAIN_ID, OPERATOR.address, BRIDGE.address,
                {w.address: 10**6 * BASED for w in wallets})
    producer = Chain(g)
    nonces = [0] * n_accounts
    blocks: list[Block] = []
    for h in range(1, n_blocks + 1):
        txs: list[Tx] = []
        for k in range(per_block):
            i = (h * per_block + k) % n_accounts
            j = (i * 7 + h) % n_accounts
            txs.append(make_tx(wallets[i], "transfer", nonces[i], CHAIN_ID, fee=1,
                               to=wallets[j].address, amount=1 + k))
            nonces[i] += 1
        block, rejected = producer.produce_block(txs, PROPOSER, h)
        assert not rejected
        producer.apply_block(block)
        blocks.append(block)
    with tempfile.TemporaryDirectory() as d:
        node = Chain.open_sqlite(Path(d) / "bench.db", g, synchronous="FULL")
        mode = node.store.db.execute("PRAGMA journal_mode").fetchone()[0]  # type: ignore
        sync = node.store.db.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore
        per_block_s = []
        t0 = time.perf_counter()
        for block in blocks:
            t = time.perf_counter()
            node.apply_block(block)
            per_block_s.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        assert node.state_root() == producer.state_root()
        node.close()
    n_tx = n_blocks * per_block
    return {
        "transfers": n_tx,
        "blocks": n_blocks,
        "txs_per_block": per_block,
        "accounts": n_accounts,
        "seconds": total,
        "transfers_per_s": n_tx / total,
        "median_block_ms": 1000 * statistics.median(per_block_s),
        "journal_mode": mode,
        "synchronous_full": sync == 2,
    }


def _full_brain_chain() -> tuple[Chain, int]:
    """A chain whose Brain 3 holds 256 validators and 1792 miners, all with stake/weights."""
    vals = [Wallet.from_seed(f"bench-v{i}") for i in range(MAX_VALIDATORS)]
    miners = [Wallet.from_seed(f"bench-m{i}") for i in range(MAX_MINERS)]
    balances = {w.address: 1_000 * BASED for w in vals + miners}
    balances[OPERATOR.address] = 1_000 * BASED
    # every miner registers in one block, beyond the default block size (issue #16)
    g = Genesis(CHAIN_ID, OPERATOR.address, BRIDGE.address, balances, tempo=8,
                max_block_txs=20_000)
    chain = Chain(g)
    rng = np.random.default_rng(0)

    def step(txs: list[Tx]) -> None:
        block, rejected = chain.produce_block(txs, PROPOSER, chain.height + 1)
        assert not rejected, rejected[:1]
        chain.apply_block(block)

    step([make_tx(OPERATOR, "brain_config", 0, CHAIN_ID, brain=3, key="registration_fee",
                  value="0")])
    step([make_tx(w, "register", 0, CHAIN_ID, brain=3, role="validator", max_fee=0)
          for w in vals] +
         [make_tx(w, "register", 0, CHAIN_ID, brain=3, role="miner", max_fee=0) for w in miners])
    stakes = rng.integers(1, 500, size=len(vals)) * BASED
    step([make_tx(w, "stake", 1, CHAIN_ID, brain=3, delegate=w.address, amount=int(s))
          for w, s in zip(vals, stakes, strict=True)])
    uids = list(range(MAX_MINERS))
    step([make_tx(w, "set_weights", 2, CHAIN_ID, brain=3, uids=uids,
                  weights=[int(x) for x in rng.integers(0, 65_536, size=MAX_MINERS)])
          for w in vals])
    while chain.height < 12:  # first epoch of Brain 3 at block 5 sets its performance
        step([])
    return chain, 13  # block 13 holds Brain 3's second epoch, with emission to pay


def bench_epoch(repeats: int) -> dict[str, float]:
    chain, epoch_height = _full_brain_chain()
    st, g = chain.state, chain.genesis
    # (a) the chain's epoch path alone: matrices from state, yuma_epoch, bonds, payouts
    times = []
    for _ in range(repeats):
        mark = st.checkpoint()
        t = time.perf_counter()
        run_epoch(st, g, 3, epoch_height)
        times.append(time.perf_counter() - t)
        st.rollback(mark)
    # (b) the consensus function alone, for reference
    _, _, W, S, B = consensus_inputs(st, 3)
    ytimes = []
    for _ in range(repeats):
        t = time.perf_counter()
        yuma_epoch(W, S, B)
        ytimes.append(time.perf_counter() - t)
    # (c) a whole (empty) block whose end-of-block work includes that epoch
    # (built and applied: apply_block adopts the state produce_block computed, issue #16)
    pend = st.get("pend", 3, 0)
    t = time.perf_counter()
    block, _ = chain.produce_block([], PROPOSER, chain.height + 1)
    chain.apply_block(block)
    block_s = time.perf_counter() - t
    assert block.height == epoch_height
    assert st.get("pend", 3) is None and pend > 0
    return {
        "validators": MAX_VALIDATORS,
        "miners": MAX_MINERS,
        "epoch_ms_median": 1000 * statistics.median(times),
        "epoch_ms_min": 1000 * min(times),
        "yuma_epoch_ms_median": 1000 * statistics.median(ytimes),
        "block_with_epoch_ms": 1000 * block_s,
        "emission_pending_before_block_base_units": pend,
        "repeats": repeats,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    args = ap.parse_args()
    if args.quick:
        tr = bench_transfers(n_blocks=3, per_block=200, n_accounts=200)
        ep = bench_epoch(repeats=2)
    else:
        tr = bench_transfers(n_blocks=10, per_block=1_000, n_accounts=2_000)
        ep = bench_epoch(repeats=7)
    print(f"transfers: {tr['transfers_per_s']:.0f}/s over {tr['transfers']} "
          f"({tr['blocks']} blocks of {tr['txs_per_block']}), WAL={tr['journal_mode']}, "
          f"synchronous=FULL={tr['synchronous_full']}")
    print(f"epoch 256x1792: {ep['epoch_ms_median']:.1f} ms median through the chain "
          f"(yuma_epoch alone {ep['yuma_epoch_ms_median']:.1f} ms; whole block "
          f"{ep['block_with_epoch_ms']:.1f} ms)")
    if args.quick:
        return
    write_json("ledger", {"transfers": tr, "epoch": ep,
                          "command": ".venv/bin/python benchmarks/ledger_bench.py"})
    md = (
        "Command: `.venv/bin/python benchmarks/ledger_bench.py`\n\n"
        "| Measure | Result | Goal |\n|---|---|---|\n"
        f"| Transfers applied, SQLite WAL + synchronous=FULL, {tr['txs_per_block']} "
        f"txs/block, {tr['blocks']} blocks | {tr['transfers_per_s']:,.0f} tx/s "
        f"(median block {tr['median_block_ms']:.0f} ms) | ≥ 2,000 tx/s |\n"
        f"| Epoch of a full Brain (256 × 1792) through the chain's epoch path "
        f"(median of {ep['repeats']}) | {ep['epoch_ms_median']:.1f} ms | < 200 ms |\n"
        f"| — of which `yuma_epoch` alone | {ep['yuma_epoch_ms_median']:.1f} ms | |\n"
        f"| Whole block containing that epoch (emission, epoch, root, commit) | "
        f"{ep['block_with_epoch_ms']:.1f} ms | |\n\n"
        "Transfers are signed ed25519 txs checked in full (signature, nonce, balance); the "
        "time includes the state root and one durable SQLite commit per block."
    )
    write_section("ledger", "Ledger (benchmarks/ledger_bench.py)", md)


if __name__ == "__main__":
    main()
