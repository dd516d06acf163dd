"""A real miner process on 127.0.0.1 serving the tiny model under real TFHE (issue #6).

Every test talks to a ``cerberus serve`` child process through gRPC; keys, encryption and
decryption are concrete-python's, and answers are checked against the bit-exact simulator.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from cerberus.artefact import Artefact
from cerberus.fhe.program import FheClient, FheServer
from cerberus.ir import evaluate
from cerberus.light_client import simulated_miner
from cerberus_cli import CLI
from runtime.client import MinerClient, MinerError, _Stream
from runtime.metrics import parse
from runtime.protos import miner_pb2 as pb
from runtime.protos import miner_pb2_grpc as pb_grpc
from runtime.server import PROTOCOL, PROTOCOL_HEADER

from .conftest import Miner

PROMPT = "The for statement is used to"
TOKENS = 16
# every raw call speaks the protocol, as the SDK does (test_bad_input.py checks the refusal)
MD = ((PROTOCOL_HEADER, str(PROTOCOL)),)


def stub(address: str) -> pb_grpc.MinerStub:
    channel = grpc.insecure_channel(address, options=[
        ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)])
    return pb_grpc.MinerStub(channel)


def in_shape(art: Artefact, program: str) -> tuple[int, int]:
    """A hybrid program's input: one row of activations, [1, in_features]."""
    return 1, int(art.programs[program].meta["d_model"])


def programs_per_token(art: Artefact) -> int:
    """Round trips of one decoded token: per block q·k·v fused, o, fc1, fc2 (a block whose
    heads were all squeezed away keeps only fc1 and fc2)."""
    kept = art.manifest["model_config"]["heads_kept"]
    return sum(4 if heads else 2 for heads in kept)


def client(miner: Miner, tmp: Path, seed: int, **kw) -> MinerClient:
    return MinerClient(miner.address, cache_dir=tmp / f"cache-{seed}", seed=seed, **kw)


def test_sixteen_tokens_are_encrypted_kv_cached_and_equal_the_simulator(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    """16 greedy tokens through a ``cerberus serve`` process equal ``Artefact.generate``'s;
    the first step carries the prompt's rows (the prefill), every later step one row per
    program; what the miner received opens only under the client's key."""
    ids = fhe_artefact.tokenizer(PROMPT).input_ids
    expected = fhe_artefact.generate(ids, TOKENS)
    before = miner.record.stat().st_size if miner.record.exists() else 0
    sent: list[tuple[str, np.ndarray, bytes]] = []  # (program, one row, its ciphertext)
    with client(miner, tmp_path, seed=1) as c:
        assert c.info().artefact_sha256 == fhe_artefact.sha256
        c.keygen()
        keys = c._fhe.lwe  # noqa: SLF001 - the test watches what the SDK encrypts
        encrypt = keys.encrypt

        def watched(name: str, x: np.ndarray) -> bytes:
            ct = encrypt(name, x)
            sent.append((name, np.asarray(x).copy(), ct))
            return ct

        keys.encrypt = watched
        out = c.generate(ids, TOKENS)
        # the client half was fetched from the miner and checked against the hash
        assert c.artefact.path != fhe_artefact.path
        max_rows = {p.name: p.max_rows for p in c.info().programs}
    assert out.ids == expected
    assert len(out.token_seconds) == len(out.steps) == TOKENS

    # Round trips and rows, derived from the artefact: the prefill sends each program the
    # prompt's rows (in as few requests as max_rows allows), each later token one row to
    # each program: q, k, v fused, so 4 per block.
    programs = sorted(fhe_artefact.programs)
    assert len(programs) == programs_per_token(fhe_artefact)
    assert sorted(max_rows) == programs
    first, *later = out.steps
    assert sorted(first.programs) == programs
    assert first.round_trips == sum(-(-len(ids) // max_rows[p]) for p in programs)
    assert all(sum(r for r, _, _ in calls) == len(ids) for calls in first.programs.values())
    for step in later:
        assert step.round_trips == len(programs)
        assert sorted(step.programs) == programs
        assert all([r for r, _, _ in calls] == [1] for calls in step.programs.values())
        # every row of a program is a ciphertext of one size: a token's bytes are the same
        assert (step.bytes_sent, step.bytes_received) == (later[0].bytes_sent,
                                                          later[0].bytes_received)
    # the first step's bytes include the prefill: the prompt's rows, each as big as a token's
    assert first.bytes_sent == len(ids) * later[0].bytes_sent > 0
    assert first.bytes_received == len(ids) * later[0].bytes_received > 0
    assert out.bytes_sent == sum(s.bytes_sent for s in out.steps)
    assert out.round_trips == first.round_trips + (TOKENS - 1) * len(programs)

    # Privacy as decryption shows it (issue #15): every ciphertext the miner received, run
    # by the miner's program, decrypts to the simulator's answer for what the client
    # encrypted under the client's key, and to something else under a second client's.
    received = miner.record.read_bytes()[before:]
    # the record holds the uploaded evaluation keys, then exactly the ciphertexts sent
    assert received.endswith(b"".join(ct for _, _, ct in sent)) and sent
    other = FheClient(fhe_artefact.client.fhe_dir, key_cache=tmp_path / "other-keys")
    other.keygen(seed=2)
    server = FheServer(fhe_artefact.miner.fhe_dir)
    simulate = simulated_miner(fhe_artefact.programs)
    for name, x, ct in sent:
        want = simulate(name, x[None])[0]
        reply = server.run(name, ct, keys.evaluation_keys(name))
        assert np.array_equal(keys.decrypt(name, reply), want), name
        assert not np.array_equal(other.decrypt(name, reply), want), name


def test_eight_concurrent_clients_with_distinct_keys(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    prompts = ["def", "class A", "import os", "The while", "return x", "if x", "for i in",
               "A list"]
    tok = fhe_artefact.tokenizer
    expected = [fhe_artefact.generate(tok(p).input_ids, 1) for p in prompts]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    clients = [client(miner, tmp_path, seed=100 + i) for i in range(len(prompts))]

    def work(i: int) -> None:
        try:
            results[i] = clients[i].generate(tok(prompts[i]).input_ids, 1).ids
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert [results[i] for i in range(len(prompts))] == expected
    # distinct secret keys: a ciphertext of one client means nothing under another's key
    # (privacy as the project tests it) the miner's reply decrypts to the simulator's
    # integers under the right key and to something else under another client's key
    for name in sorted(fhe_artefact.programs):
        x = (np.arange(np.prod(in_shape(fhe_artefact, name))).reshape(
            in_shape(fhe_artefact, name)) % 7) - 3
        ct = clients[0]._fhe.lwe.encrypt(name, x)  # noqa: SLF001 - the test reaches into the SDK
        (reply,) = stub(miner.address).Infer(pb.InferRequest(
            key_id=clients[0].keygen(), program=name, ciphertexts=[ct]), metadata=MD,
            timeout=120).ciphertexts
        want = simulated_miner(fhe_artefact.programs)(name, x[None])[0]
        assert np.array_equal(want, evaluate(fhe_artefact.programs[name], x)["output"])
        assert np.array_equal(clients[0]._fhe.lwe.decrypt(name, reply), want)  # noqa: SLF001
        assert not np.array_equal(clients[1]._fhe.lwe.decrypt(name, reply), want)  # noqa: SLF001
    for c in clients:
        c.close()
    m = parse(MinerClient(miner.address).metrics())
    assert m["cerberus_key_cache_bytes"] <= m["cerberus_key_cache_limit_bytes"]
    assert m['cerberus_requests_total{method="Generate",code="OK"}'] >= len(prompts)


def test_bad_requests_get_clear_statuses_and_the_miner_keeps_serving(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    s = stub(miner.address)
    with client(miner, tmp_path, seed=7) as c:
        kid = c.upload_keys()
        names = sorted(fhe_artefact.programs)
        shape = in_shape(fhe_artefact, names[0])
        good = c._fhe.lwe.encrypt(names[0], np.ones(shape, dtype=np.int64))  # noqa: SLF001

        def status(req: pb.InferRequest) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as e:
                s.Infer(req, metadata=MD, timeout=60)
            return e.value.code(), e.value.details()

        code, msg = status(pb.InferRequest(key_id=kid, program=names[0],
                                           ciphertexts=[b"x" * 99]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "bad ciphertext" in msg
        code, msg = status(pb.InferRequest(key_id="0" * 64, program=names[0],
                                           ciphertexts=[good]))
        assert code == grpc.StatusCode.NOT_FOUND and "unknown key id" in msg
        code, msg = status(pb.InferRequest(key_id=kid, program="nope", ciphertexts=[good]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown program" in msg
        other = next(n for n in names if in_shape(fhe_artefact, n) != shape)
        code, msg = status(pb.InferRequest(key_id=kid, program=other, ciphertexts=[good]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "do not match" in msg
        code, msg = status(pb.InferRequest(key_id=kid, program=names[0],
                                           ciphertexts=[good + b"\0" * (2 << 20)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "larger than" in msg
        info = c.info()
        # rows: 1 to max_rows per request; one more (or none) is refused before any work
        rows = {p.name: p.max_rows for p in info.programs}[names[0]]
        assert rows == int(fhe_artefact.manifest["model_config"]["n_positions"])
        for n in (rows + 1, 0):
            code, msg = status(pb.InferRequest(key_id=kid, program=names[0],
                                               ciphertexts=[good] * n))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"{n} ciphertexts" in msg and f"send 1 to {rows}" in msg
        code, msg = status(pb.InferRequest(key_id=kid, program=names[0],
                                           ciphertexts=[b"\0" * (info.max_message_bytes + 1)]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # gRPC's own limit
        # keys generated for another artefact, or for programs this one does not have
        for chunk, word in ((pb.KeyChunk(artefact_sha256="f" * 64, program=names[0], data=b"k"),
                             "generated for artefact"),
                            (pb.KeyChunk(artefact_sha256=info.artefact_sha256,
                                         program="blocks.9.q", data=b"k"), "another circuit")):
            with pytest.raises(grpc.RpcError) as e:
                s.UploadKeys(iter([chunk]), metadata=MD, timeout=60)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert word in e.value.details()
        with pytest.raises(grpc.RpcError) as e:  # undecodable keys
            s.UploadKeys(iter([pb.KeyChunk(artefact_sha256=info.artefact_sha256, program=n,
                                           data=b"junk" * 4) for n in names]), metadata=MD,
                         timeout=60)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # … and the next good request is answered correctly
        out = c.infer(names[0], np.ones(shape, dtype=np.int64))
        graph = fhe_artefact.programs[names[0]]
        assert np.array_equal(out, evaluate(graph, np.ones(shape, dtype=np.int64))["output"])


KILLED_UPLOADER = """
import sys, time, grpc
from runtime.protos import miner_pb2 as pb, miner_pb2_grpc as pb_grpc
from runtime.server import PROTOCOL, PROTOCOL_HEADER
address, sha, program = sys.argv[1:]
def chunks():
    yield pb.KeyChunk(artefact_sha256=sha, program=program, data=b"\\0" * 10)
    print("sent", flush=True)
    time.sleep(600)
pb_grpc.MinerStub(grpc.insecure_channel(address)).UploadKeys(
    chunks(), metadata=((PROTOCOL_HEADER, str(PROTOCOL)),), timeout=600)
"""


def test_a_client_killed_mid_upload_leaves_no_partial_key(miner: Miner) -> None:
    with MinerClient(miner.address) as c:
        info, before = c.info(), c.health().cached_keys
        cancelled = parse(c.metrics()).get(
            'cerberus_requests_total{method="UploadKeys",code="CANCELLED"}', 0)
        program = info.programs[0].name
        proc = subprocess.Popen([sys.executable, "-c", KILLED_UPLOADER, miner.address,
                                 info.artefact_sha256, program], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        proc.kill()
        proc.wait(timeout=30)
        # bounded (60 s): the miner notices the reset within moments, later on a loaded machine
        for _ in range(600):
            m = parse(c.metrics())
            if m.get('cerberus_requests_total{method="UploadKeys",code="CANCELLED"}', 0) \
                    > cancelled:
                break
            threading.Event().wait(0.1)
        uploads = {k: v for k, v in m.items() if 'method="UploadKeys"' in k}
        assert m.get('cerberus_requests_total{method="UploadKeys",code="CANCELLED"}',
                     0) == cancelled + 1, uploads
        assert c.health().cached_keys == before


def test_unknown_keys_are_uploaded_by_the_sdk(fhe_artefact: Artefact, tmp_path: Path) -> None:
    """A miner that does not hold a client's keys (never uploaded, evicted, restarted)
    answers NOT_FOUND; the SDK uploads them and retries by itself."""
    m = Miner(fhe_artefact.path, tmp_path)  # a fresh miner: an empty key cache
    try:
        with client(m, tmp_path, seed=11) as c:
            name = sorted(fhe_artefact.programs)[0]
            x = np.ones(in_shape(fhe_artefact, name), dtype=np.int64)
            assert np.array_equal(c.infer(name, x),
                                  evaluate(fhe_artefact.programs[name], x)["output"])
            after = parse(c.metrics())
    finally:
        assert m.stop() == 0
    assert after['cerberus_requests_total{method="Infer",code="NOT_FOUND"}'] == 1
    assert after['cerberus_requests_total{method="UploadKeys",code="OK"}'] == 1
    assert after['cerberus_requests_total{method="Infer",code="OK"}'] == 1
    assert after["cerberus_key_cache_bytes"] <= after["cerberus_key_cache_limit_bytes"]
    assert '"request_id"' in m.log.read_text()  # structured logs with request ids


def test_sigterm_lets_in_flight_calls_finish(fhe_artefact: Artefact, tmp_path: Path) -> None:
    m = Miner(fhe_artefact.path, tmp_path)
    with client(m, tmp_path, seed=3) as c:
        kid = c.upload_keys()
        name = sorted(fhe_artefact.programs)[0]
        shape = in_shape(fhe_artefact, name)
        x = np.full(shape, 2, dtype=np.int64)
        stream = _Stream(c.stub, MD, 120)
        req = pb.InferRequest(key_id=kid, program=name,
                              ciphertexts=[c._fhe.lwe.encrypt(name, x)])  # noqa: SLF001
        first = c._fhe.lwe.decrypt(name, stream.step(req).ciphertexts[0])  # noqa: SLF001
        m.proc.send_signal(15)
        for _ in range(600):  # bounded wait (60 s) until the miner reports it is draining
            if '"event": "draining"' in m.log.read_text():
                break
            threading.Event().wait(0.1)
        # in flight: still served
        second = c._fhe.lwe.decrypt(name, stream.step(req).ciphertexts[0])  # noqa: SLF001
        assert np.array_equal(first, second)
        assert np.array_equal(first, evaluate(fhe_artefact.programs[name], x)["output"])
        with pytest.raises(grpc.RpcError):  # new calls are refused while draining
            stub(m.address).Health(pb.HealthRequest(), metadata=MD, timeout=10)
        stream.close()
    assert m.proc.wait(timeout=60) == 0


def test_a_busy_miner_says_resource_exhausted_and_the_client_backs_off(
        fhe_artefact: Artefact, tmp_path: Path) -> None:
    m = Miner(fhe_artefact.path, tmp_path, "--workers", "1", "--queue", "0")
    try:
        holder = client(m, tmp_path, seed=4)
        holder.upload_keys()
        stream = _Stream(holder.stub, MD, 120)  # holds the only slot until closed
        threading.Event().wait(0.5)
        impatient = client(m, tmp_path, seed=5, retries=0)
        with pytest.raises(MinerError) as e:
            impatient.health()
        assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        patient = client(m, tmp_path, seed=6, retries=6, backoff=0.2)
        threading.Timer(0.5, stream.close).start()
        assert patient.health().status == "SERVING"  # succeeded after backing off
        for c in (holder, impatient, patient):
            c.close()
    finally:
        m.stop()


def test_cerberus_query_prints_the_simulators_text(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    tok = fhe_artefact.tokenizer
    ids = tok(PROMPT).input_ids
    expected = tok.decode(ids + fhe_artefact.generate(ids, 2))
    result = subprocess.run([*CLI, "query", "--miner", miner.address,
                             PROMPT, "-n", "2", "--cache", str(tmp_path / "c"), "--key-seed", "9"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected.strip()
    assert "2 tokens in" in result.stderr


def test_cli_errors_are_one_line(fhe_artefact: Artefact, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True,
                              text=True, timeout=120)

    r = run("serve", str(tmp_path / "missing.cerb"))
    assert r.returncode == 1 and r.stderr.strip().startswith("cerberus:")
    assert r.stderr.strip().count("\n") == 0
    r = run("query", "--miner", "127.0.0.1:1", "hi", "--timeout", "2", "--cache", str(tmp_path))
    assert r.returncode == 1 and "cerberus:" in r.stderr and "UNAVAILABLE" in r.stderr


def test_a_client_leaving_mid_stream_is_counted_and_frees_its_slot(
        miner: Miner, fhe_artefact: Artefact, tmp_path: Path) -> None:
    with client(miner, tmp_path, seed=12) as c:
        kid = c.upload_keys()
        key = 'cerberus_requests_total{method="Generate",code="CANCELLED"}'
        before = parse(c.metrics()).get(key, 0)
        name = sorted(fhe_artefact.programs)[0]
        stream = _Stream(c.stub, MD, 120)
        x = np.ones(in_shape(fhe_artefact, name), dtype=np.int64)
        stream.step(pb.InferRequest(key_id=kid, program=name,
                                    ciphertexts=[c._fhe.lwe.encrypt(name, x)]))  # noqa: SLF001
        # The client walks away mid-call, while the miner computes its next step (as many
        # rows as a request may carry, of the widest program): gRPC then tells the miner
        # for certain when it answers. (Leaving while the miner waits for the next step is
        # a race inside gRPC: the request stream ends as a half-close would, and the call
        # is marked cancelled a moment later.)
        wide = max(fhe_artefact.programs, key=lambda n: in_shape(fhe_artefact, n)[1])
        rows = {p.name: p.max_rows for p in c.info().programs}[wide]
        y = np.ones(in_shape(fhe_artefact, wide), dtype=np.int64)
        cts = [c._fhe.lwe.encrypt(wide, y) for _ in range(rows)]  # noqa: SLF001
        size = miner.record.stat().st_size
        stream._requests.put(pb.InferRequest(key_id=kid, program=wide,  # noqa: SLF001
                                             ciphertexts=cts))
        for _ in range(600):  # bounded (60 s): until the miner has the step's ciphertexts
            if miner.record.stat().st_size >= size + sum(map(len, cts)):
                break
            threading.Event().wait(0.1)
        assert miner.record.stat().st_size >= size + sum(map(len, cts))
        stream._replies.cancel()  # noqa: SLF001
        # bounded (60 s): the miner sees the cancellation when its step is done
        for _ in range(600):
            if parse(c.metrics()).get(key, 0) > before:
                break
            threading.Event().wait(0.1)
        m = parse(c.metrics())
        assert m.get(key, 0) == before + 1, {k: v for k, v in m.items() if "Generate" in k}
        assert c.health().in_flight == 1  # only this Health call
