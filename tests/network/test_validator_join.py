"""``cerberus join --role validator`` without ``--artefact`` (SPEC N2, N4; issue #15 (c)).

A validator needs both halves of the Brain's artefact (it re-runs the miner's programs in
the simulator). Started as the README says, without ``--artefact``, it must either find
that artefact locally by the Brain's task (its sha256) or stop with one clear line —
before it pays the registration fee, and never by fetching a half from a miner.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from cerberus.artefact import Artefact
from cerberus.errors import CerberusError
from ledger.genesis import Genesis
from ledger.keys import Wallet
from ledger.units import BASED
from network.join import JoinOptions, Participant
from network.wallet import save

BRAIN = 1
VALIDATOR = Wallet.from_seed("join-validator")


def _genesis(tmp: Path) -> Path:
    """The validator is the operator and the only authority: it makes blocks alone."""
    g = Genesis(chain_id="cerberus-join-test", operator=VALIDATOR.address,
                bridge=VALIDATOR.address, balances={VALIDATOR.address: 1000 * BASED},
                time=int(time.time()) - 1, block_time=1, tempo=1000,
                authorities=(VALIDATOR.address,))
    path = tmp / "genesis.json"
    path.write_text(json.dumps(g.to_dict()))
    return path


def _opts(tmp: Path, wait: float = 60) -> JoinOptions:
    (tmp / "v").mkdir(exist_ok=True)
    key = tmp / "v" / "wallet.key"
    save(VALIDATOR, key)
    return JoinOptions(brain=BRAIN, role="validator", genesis=_genesis(tmp), data=tmp / "v",
                       wallet=key, artefact=None, block_interval=0.2, round_timeout=1.0,
                       progress_every=60, wait_timeout=wait)


def test_without_artefact_and_none_to_find_it_stops_before_registering(
        tmp_path: Path) -> None:
    said: list[str] = []
    p = Participant(_opts(tmp_path, wait=3), say=said.append)
    with pytest.raises(CerberusError) as e:
        p.run(threading.Event())
    assert "--artefact" in str(e.value) and "\n" not in str(e.value)
    assert not any(line.startswith("registered") for line in said), \
        f"it paid the registration fee before failing: {said}"


def test_without_artefact_it_finds_the_brains_artefact_by_its_task(
        packed_artefact: Artefact, tmp_path: Path) -> None:
    shutil.copytree(packed_artefact.path, tmp_path / "tiny.cerb")  # next to the data folder
    p = Participant(_opts(tmp_path), say=lambda _: None)
    try:
        p.start_node()
        p.sync()
        p._send("brain_config", brain=BRAIN, key="task", value=packed_artefact.sha256)
        deadline = time.monotonic() + 60
        while (p.node.brain_info(BRAIN) or {}).get("task") != packed_artefact.sha256:
            assert time.monotonic() < deadline, "the task tx never landed"
            time.sleep(0.2)
        p.start_validator()
        assert p.validator.artefact.sha256 == packed_artefact.sha256
    finally:
        p.close()
