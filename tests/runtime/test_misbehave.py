"""``cerberus serve --misbehave replay``: the lazy miner validators must catch (SPEC N2,
issue #8).

A real miner process with the switch on answers a program's second request with its
first reply: a ciphertext that decrypts fine under the client's key but to the answer of
the *earlier* input. The honest answer for the second input is checked to differ, so the
test fails if the switch does nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cerberus.artefact import Artefact
from cerberus.errors import CerberusError
from cerberus.ir import evaluate
from runtime.client import MinerClient
from runtime.server import MinerService

from .conftest import Miner


def test_replay_miner_answers_with_its_previous_reply(fhe_artefact: Artefact,
                                                      tmp_path: Path) -> None:
    m = Miner(fhe_artefact.path, tmp_path, "--misbehave", "replay")
    try:
        name = sorted(fhe_artefact.programs)[0]
        shape = (1, int(fhe_artefact.programs[name].meta["d_model"]))  # one row
        graph = fhe_artefact.programs[name]
        x1 = (np.arange(np.prod(shape)).reshape(shape) % 7) - 3
        x2 = (np.arange(np.prod(shape)).reshape(shape) % 5) - 2
        want1, want2 = evaluate(graph, x1)["output"], evaluate(graph, x2)["output"]
        assert not np.array_equal(want1, want2)
        with MinerClient(m.address, cache_dir=tmp_path / "cache", seed=7) as c:
            first = c.infer(name, x1)
            second = c.infer(name, x2)
        assert np.array_equal(first, want1)  # the first answer is computed honestly
        assert np.array_equal(second, want1)  # then the old work is replayed
        assert not np.array_equal(second, want2)
    finally:
        assert m.stop() == 0


def test_unknown_misbehaviour_is_refused(fhe_artefact: Artefact) -> None:
    with pytest.raises(CerberusError, match="unknown misbehaviour"):
        MinerService(fhe_artefact.path, misbehave="sleepy")
