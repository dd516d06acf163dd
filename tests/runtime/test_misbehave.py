"""``cerberus serve --misbehave KIND``: the cheating miners validators must catch (SPEC N2,
issues #8, #15).

A real miner process with the switch on answers a program's second request with its
first reply: a ciphertext that decrypts fine under the client's key but to the answer of
the *earlier* input. The honest answer for the second input is checked to differ, so the
test fails if the switch does nothing. The other kinds (packed programs) are in-process
miners: each reply must decrypt under the client's key (well-formed) to accumulators that
differ from the simulator's, while the same miner without the switch matches them.
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


# -- issue #15: every cheat a validator must catch, each reply well-formed ---------------

def _serve(artefact: Artefact, misbehave: str | None, host: str = "127.0.0.1"):
    from runtime.server import start

    service = MinerService(Path(artefact.path), misbehave=misbehave)
    server, port = start(service, host, 0, workers=2, queue=4)
    return server, service, f"{host}:{port}"


def _first_program(artefact: Artefact) -> tuple[str, np.ndarray]:
    name = sorted(artefact.programs)[0]
    d = int(artefact.programs[name].meta["d_model"])
    x = ((np.arange(3 * d).reshape(3, 1, d) * 37) % 255) - 127  # 3 rows, all in range
    return name, x


@pytest.mark.parametrize("kind", ["lazy", "random", "zero-small", "other", "honest-to"])
def test_weight_cheats_reply_well_formed_but_wrong(packed_artefact: Artefact, kind: str,
                                                   tmp_path: Path) -> None:
    """A packed reply of each cheat decrypts (right header and sizes) to the wrong
    accumulators; the honest miner's reply to the same input is the simulator's."""
    from cerberus.light_client import simulated_miner

    arg = {"other": f"other:{tmp_path / 'none.cerb'}",  # no such programs: zero weights
           "honest-to": "honest-to:10.9.9.9"}.get(kind, kind)
    name, x = _first_program(packed_artefact)
    want = simulated_miner(packed_artefact.programs)(name, x)
    for misbehave in (None, arg):
        server, service, address = _serve(packed_artefact, misbehave)
        try:
            with MinerClient(address, cache_dir=tmp_path / "c") as c:
                c.upload_keys()
                rows: list[np.ndarray] = []
                c.on_call = lambda p, xs, ys, rows=rows: rows.append(ys)
                got = np.stack([c.infer(name, x[i]) for i in range(len(x))])
        finally:
            server.stop(0).wait()
            service.close()
        assert got.shape == want.shape and len(rows) == len(x)
        if misbehave is None:
            assert np.array_equal(got, want)
        else:
            assert not np.array_equal(got, want), f"{kind} answered honestly"


def test_first_token_miner_is_honest_only_on_a_connections_first_call(
        packed_artefact: Artefact, tmp_path: Path) -> None:
    from cerberus.light_client import simulated_miner

    server, service, address = _serve(packed_artefact, "first-token")
    sim = simulated_miner(packed_artefact.programs)
    calls: list[tuple[int, bool]] = []
    token = [0]
    try:
        with MinerClient(address, cache_dir=tmp_path / "c") as c:
            c.on_call = lambda p, xs, ys: calls.append((token[0],
                                                        bool(np.array_equal(ys, sim(p, xs)))))
            c.generate([5, 6, 7], 3, on_token=lambda *_: token.__setitem__(0, token[0] + 1))
    finally:
        server.stop(0).wait()
        service.close()
    first = [ok for t, ok in calls if t == 0]
    later = [ok for t, ok in calls if t > 0]
    assert first and all(first), "the first token was not honest"
    assert later and not any(later), "later tokens were honest"


def test_honest_to_listed_addresses_only(packed_artefact: Artefact, tmp_path: Path) -> None:
    """Honest to its list (here the client's own 127.0.0.1), zero-small to the others."""
    from cerberus.light_client import simulated_miner

    name, x = _first_program(packed_artefact)
    want = simulated_miner(packed_artefact.programs)(name, x[:1])
    server, service, address = _serve(packed_artefact, "honest-to:127.0.0.1")
    try:
        with MinerClient(address, cache_dir=tmp_path / "c") as c:
            c.upload_keys()
            assert np.array_equal(c.infer(name, x[0]), want[0])
    finally:
        server.stop(0).wait()
        service.close()


def test_weight_cheats_refuse_lwe_programs_and_bad_arguments(fhe_artefact: Artefact) -> None:
    with pytest.raises(CerberusError, match="needs packed programs"):
        MinerService(fhe_artefact.path, misbehave="lazy")
    with pytest.raises(CerberusError, match="needs an argument"):
        MinerService(fhe_artefact.path, misbehave="honest-to")
    with pytest.raises(CerberusError, match="takes no argument"):
        MinerService(fhe_artefact.path, misbehave="lazy:3")
