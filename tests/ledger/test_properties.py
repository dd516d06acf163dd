"""Property tests over random tx sequences (SPEC L1, L2, L5, L6).

Invariants checked after every block:
- supply = genesis + emitted − burned, and emitted = the schedule exactly;
- no negative balance or stake; derived stake indexes equal a recount of the stake table;
- nonces: each account's nonce rises by exactly its number of included txs, and within a
  block a sender's nonces strictly increase;
- replayed txs (already included) and mis-signed txs are rejected and change nothing;
- the pure ``apply_block`` reaches the same root as the chain, and the incrementally
  maintained root equals one recomputed from scratch.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ledger_helpers import CHAIN_ID, OPERATOR, PROPOSER, USERS, conserved, genesis

from ledger.block import Block
from ledger.chain import Chain
from ledger.rules import apply_block
from ledger.state import State
from ledger.tx import Tx, make_tx
from ledger.units import BASED, cumulative_issuance

ACTORS = USERS[:5]
BRAINS = [3, 4]

action = st.one_of(
    st.tuples(st.just("transfer"), st.integers(0, 4), st.integers(0, 4),
              st.integers(0, 12_000 * BASED)),
    st.tuples(st.just("stake"), st.integers(0, 4), st.integers(-1, 4), st.integers(1, 500 * BASED)),
    st.tuples(st.just("unstake"), st.integers(0, 4), st.integers(-1, 4),
              st.integers(1, 500 * BASED)),
    st.tuples(st.just("burn"), st.integers(0, 4), st.integers(0, 2), st.integers(1, 50 * BASED)),
    st.tuples(st.just("register"), st.integers(0, 4), st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("deregister"), st.integers(0, 4), st.integers(0, 1), st.integers(0, 1)),
    st.tuples(st.just("weights"), st.integers(0, 4), st.integers(0, 1), st.integers(0, 65_535)),
    st.tuples(st.just("fee"), st.integers(0, 4), st.integers(0, 1), st.integers(0, 300 * BASED)),
)
mutation = st.sampled_from(["ok", "ok", "ok", "ok", "bad_sig", "replay", "skip_nonce"])


def _tx(chain: Chain, nonces: dict[str, int], act: tuple, fee: int) -> Tx:
    kind, i, j, amount = act
    w = ACTORS[i]
    brain = BRAINS[j % 2] if kind in ("register", "deregister", "weights", "fee") else BRAINS[0]
    payload: dict[str, object]
    if kind == "transfer":
        payload = {"to": ACTORS[j].address, "amount": amount}
    elif kind in ("stake", "unstake"):
        vals = [a for a in chain.state.brain(brain).validators if a is not None]
        # mostly a real validator (or the Brain itself), sometimes a non-validator
        delegate = "" if j < 0 else (vals[j % len(vals)] if vals and j < 4 else ACTORS[j].address)
        if kind == "unstake":  # mostly an amount that fits, sometimes too much
            have = chain.state.get("stake", (brain, delegate, w.address), 0)
            amount = min(amount, have) if have and amount % 5 else amount
        payload = {"brain": brain, "delegate": delegate, "amount": amount}
    elif kind == "burn":
        payload = {"amount": amount}
    elif kind == "register":
        payload = {"brain": brain, "role": "validator" if amount else "miner",
                   "max_fee": 10**15}
    elif kind == "deregister":
        payload = {"brain": brain}
    elif kind == "weights":
        b = chain.state.brain(brain)
        vals = [a for a in b.validators if a is not None]
        if vals and i < 4:
            w = next(x for x in ACTORS if x.address == vals[i % len(vals)])
        uids = [u for u, a in enumerate(b.miners) if a is not None]
        payload = {"brain": brain, "uids": uids, "weights": [amount] * len(uids)}
    else:  # the owner changes the registration fee
        w = OPERATOR
        payload = {"brain": brain, "key": "registration_fee", "value": str(amount)}
        kind = "brain_config"
    kind = {"weights": "set_weights"}.get(kind, kind)
    n = nonces.get(w.address, chain.nonce(w.address))
    nonces[w.address] = n + 1
    return make_tx(w, kind, n, CHAIN_ID, fee=fee, **payload)


def _check_invariants(chain: Chain) -> None:
    s = chain.state
    assert conserved(s)
    assert s.meta("issued") == cumulative_issuance(s.height)
    assert all(bal >= 0 and n >= 0 for bal, n in s.tables["acct"].values())
    assert all(v > 0 for v in s.tables["stake"].values())
    recount: Counter[tuple[int, str]] = Counter()
    for (b, d, _), v in s.tables["stake"].items():
        recount[(b, d)] += v
    assert {k: v for k, v in s.delegate_stake.items() if v} == dict(recount)
    assert s.total_stake == sum(recount.values())
    # the cached, incremental root equals a root computed from scratch
    assert State.from_encoded(s.encoded_items()).state_root() == s.state_root()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(action, mutation, st.integers(0, 3)), min_size=6, max_size=40),
       st.integers(1, 6))
def test_random_tx_sequences_keep_the_invariants(steps: list, per_block: int) -> None:
    chain = Chain(genesis(tempo=3))
    included: list[Tx] = []
    for start in range(0, len(steps), per_block):
        nonces: dict[str, int] = {}
        txs: list[Tx] = []
        bad: list[Tx] = []
        for act, mut, fee in steps[start:start + per_block]:
            if mut == "replay" and included:
                bad.append(included[(fee * 7919) % len(included)])
                continue
            tx = _tx(chain, nonces, act, fee)
            if mut == "bad_sig":
                tampered = replace(tx, fee=tx.fee + 1)  # signature no longer matches
                nonces[tx.sender] -= 1
                assert chain.validate_tx(tampered) == "bad signature"
                bad.append(tampered)
            elif mut == "skip_nonce":
                nonces[tx.sender] -= 1
                skipped = make_tx(USERS[5], "transfer", chain.nonce(USERS[5].address) + 1,
                                  CHAIN_ID, to=USERS[6].address, amount=1)
                assert chain.validate_tx(skipped).startswith("bad nonce")
                bad.append(skipped)
            else:
                txs.append(tx)
        for t in bad:
            if t in included:
                assert chain.validate_tx(t).startswith("bad nonce")
        before_nonce = {w.address: chain.nonce(w.address) for w in [*ACTORS, OPERATOR]}
        old_state = chain.state.fork()
        parent = chain.head_hash
        block, rejected = chain.produce_block(txs + bad, PROPOSER, chain.height + 1)
        assert not any(t in block.txs for t in bad)
        chain.apply_block(block)
        included.extend(block.txs)
        for t in block.txs:
            event(f"applied {t.kind}")
        for _, why in rejected:
            event(f"rejected: {why.split(':')[0][:40]}")
        # nonces
        counts = Counter(t.sender for t in block.txs)
        for addr, n0 in before_nonce.items():
            assert chain.nonce(addr) == n0 + counts.get(addr, 0)
        seen: dict[str, list[int]] = defaultdict(list)
        for t in block.txs:
            seen[t.sender].append(t.nonce)
        assert all(ns == sorted(set(ns)) for ns in seen.values())
        # pure apply agrees and left its input alone
        pure = apply_block(old_state, block, chain.genesis, parent)
        assert pure.state_root() == chain.state_root()
        assert old_state.height == chain.height - 1
        _check_invariants(chain)
    # a bad block changes nothing
    if included:
        replay_block, _ = chain.produce_block([], PROPOSER, chain.height + 1)
        forged = Block(replay_block.header, (included[0],))
        root = chain.state_root()
        try:
            chain.apply_block(forged)
            raise AssertionError("forged block accepted")
        except ValueError:
            pass
        assert chain.state_root() == root
