"""Encrypted × clear-weight linears: concrete's LWE path vs the packed BFV path (issue #14).

Why this exists: issue #14 asks for a packed backend that beats one-LWE-per-value on bytes
without losing exactness, chosen after measuring the known designs side by side. One run,
one machine, the same integer weights and inputs for every backend (8-bit signed, random,
seed 0), checked against the plain integer product ``x @ W``:

* ``lwe``: this repository's path: ``cerberus.hybrid.linear_program`` compiled by
  ``cerberus.fhe.program.compile_programs`` (``CONFIGURATION``: compressed inputs and keys),
  run through ``FheClient``/``FheServer``. Slow to compile at full width, so it is compiled
  for the first ``--lwe-outputs`` columns of W, one row, and its bytes and milliseconds are
  quoted **per output** (every output is its own ciphertext and its own dot product, so
  they scale linearly).
* ``packed``: ``cerberus.fhe.packed``, coefficient encoding (Cheetah) in BFV, N=2048.
* ``packing``: the same with its replies packed dense (N=4096, Chen–Dai–Kim–Song's merges
  with the client's Galois keys), n_w the input's width rounded up to a power of two.
* ``sparse``: packing with sparse input: the client sends only the c0 coefficients that hold
  its inputs (low bits dropped, c1 from a seed) and every product yields one output, so
  the bytes up are ~7 per input value and the miner does one key switch per output.
* ``simd``: the other design weighed, measured on 384×1152 only: BFV batching, rows in
  slots, the Halevi–Shoup diagonal product with baby-step/giant-step rotations (as Gazelle,
  BOLT and BumbleBee do), N=8192 (the product of a batched plaintext grows noise by ~N·t,
  so 2048's 54-bit q cannot hold it), outputs switched to the last prime. It needs Galois
  keys, uploaded once per client. A prototype written here for the comparison only.
* concrete-ml 1.9's ``HybridFHEModel`` itself (``benchmarks/_cml_hybrid_side.py``, run by
  ``--cml-python``, ``.venv-cml``): one row in local execute mode, as its users run it.
* ``glwe``: concrete-ml-extensions (Zama; the GLWE backend of concrete-ml's HybridFHEModel),
  run by ``--cmlx-python`` (a scratch venv: ``python3.11 -m venv /tmp/cmlx-venv &&
  /tmp/cmlx-venv/bin/pip install concrete-ml-extensions "numpy<2"``, never this project's
  venv), one row, the first ``--cmlx-outputs`` columns (its packing keyswitch is ~10–30 ms
  per output), ``bits_reserved_for_computation`` = accumulator bits + 1, results centred.

Extrapolations use the packed path measured on each real shape (not scaled): all-MiniLM-L6-v2
per 16-token sentence (6 layers × qkv 384×1152, o 384×384, fc1 384×1536, fc2 1536×384, 16
rows each) and GPT-2 small per generated token (12 layers × 768×2304, 768×768, 768×3072,
3072×768, 1 row). ``lwe`` is scaled from its per-value bytes and its milliseconds per
output per input. Seconds as issue #13 defines them: loopback compute (client + miner) +
bytes at 100 Mbit/s + one 20 ms round trip per linear; the client's clear work (LayerNorm,
attention, …) and one-time costs (weight encoding, keys) are not in them.

    .venv/bin/python benchmarks/packed_linear.py
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.results import write_json, write_section  # noqa: E402
from cerberus.fhe.packed import PackedClient, PackedLinear, PackedParams  # noqa: E402

KEY = "packed_linear"
SHAPES = [(64, 256), (384, 1152), (768, 768), (768, 3072)]
MINILM = {"layers": 6, "rows": 16,
          "linears": [(384, 1152), (384, 384), (384, 1536), (1536, 384)]}
GPT2 = {"layers": 12, "rows": 1, "linears": [(768, 2304), (768, 768), (768, 3072), (3072, 768)]}
LINK_MBPS, RTT_S = 100.0, 0.020
LO, HI = -128, 127


def data(n_in: int, n_out: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(LO, HI + 1, (n_in, n_out)), rng.integers(LO, HI + 1, (rows, n_in))


def key_switches(params: PackedParams, rows: int) -> int:
    """apply_galois calls of one packed reply: the merges of each dense ciphertext's tree
    with a ciphertext below them, counted as ``PackedLinear._pack`` recurses."""
    if not params.pack:
        return 0

    def merges(held: list[bool]) -> tuple[bool, int]:
        if len(held) == 1:
            return held[0], 0
        (even, a), (odd, b) = merges(held[0::2]), merges(held[1::2])
        return even or odd, a + b + (even or odd)

    count, width = params.counts(rows)[1], params.partition(rows).n_w
    bits, total = width.bit_length() - 1, 0
    for start in range(0, count, width):
        held = [False] * width
        for c in range(min(width, count - start)):
            held[int(format(c, f"0{bits}b")[::-1], 2) if bits else 0] = True
        total += merges(held)[1]
    return total


VARIANTS = {"packed": {}, "packing": {"pack": True}, "sparse": {"pack": True, "sparse": True}}


def measure_packed(n_in: int, n_out: int, rows: int, variant: str = "packed") -> dict:
    w, x = data(n_in, n_out, rows)
    params = PackedParams(n_in, n_out, **VARIANTS[variant])
    pack = params.pack
    t0 = time.perf_counter()
    linear = PackedLinear(w, params, rows=(rows,))
    t1 = time.perf_counter()
    client = PackedClient(params)
    client.keygen()
    keys = linear.load_keys(client.evaluation_keys()) if pack else b""
    t2 = time.perf_counter()
    ct = client.encrypt_rows(x)
    t3 = time.perf_counter()
    reply = linear.run(ct, keys)
    t4 = time.perf_counter()
    y = client.decrypt(reply, rows, n_out)
    t5 = time.perf_counter()
    part = params.partition(rows)
    return {"backend": variant, "shape": [n_in, n_out], "rows": rows,
            "bytes_in": len(ct), "bytes_out": len(reply),
            "in_b_per_value": len(ct) / (rows * n_in),
            "out_b_per_value": len(reply) / (rows * n_out),
            "miner_s": t4 - t3, "miner_ms_per_output": 1e3 * (t4 - t3) / (rows * n_out),
            "client_s": (t3 - t2) + (t5 - t4), "encrypt_s": t3 - t2, "decrypt_s": t5 - t4,
            "keygen_s": t2 - t1, "weight_encoding_s": t1 - t0,
            "eval_key_bytes": len(client.evaluation_keys()),
            "key_switches": key_switches(params, rows),
            "max_error": int(np.abs(y - x @ w).max()),
            "noise_bits": client.noise_bits(reply, rows, n_out),
            "margin_bits": params.noise_limit_bits,
            "params": {"N": params.poly_degree, "log_q": params.q_bits, "log_t": params.t_bits,
                       "out_bits": params.out_bits, "c0_bits": params.c0_bits,
                       "input_bits": params.input_value_bits if params.sparse else params.q_bits,
                       "partition": [part.r_w, part.n_w, part.m_w]}}


def measure_lwe(n_in: int, n_out: int, outputs: int) -> dict:
    """concrete's path on the first ``outputs`` columns, one row; per-output figures."""
    from cerberus.fhe.program import FheClient, FheServer, compile_programs, save_programs
    from cerberus.hybrid import extreme_rows, linear_program

    w, x = data(n_in, n_out, 1)
    w = w[:, :outputs]
    graph = linear_program("lin", w, 1.0, 8)
    rng = np.random.default_rng(1)
    inputset = [rng.integers(LO, HI + 1, (1, n_in)) for _ in range(8)] + list(extreme_rows(graph))
    t0 = time.perf_counter()
    circuits = compile_programs({"lin": graph}, {"lin": inputset})
    compile_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        save_programs(circuits, Path(tmp))
        client = FheClient(Path(tmp) / "client" / "fhe", key_cache=None)
        server = FheServer(Path(tmp) / "miner" / "fhe")
        t1 = time.perf_counter()
        client.keygen()
        keys = client.evaluation_keys("lin")
        t2 = time.perf_counter()
        ct = client.encrypt("lin", x)
        t3 = time.perf_counter()
        reply = server.run("lin", ct, keys)
        t4 = time.perf_counter()
        y = client.decrypt("lin", reply).reshape(1, -1)
        t5 = time.perf_counter()
    return {"backend": "lwe", "shape": [n_in, n_out], "rows": 1, "measured_outputs": outputs,
            "in_b_per_value": len(ct) / n_in, "out_b_per_value": len(reply) / outputs,
            "miner_ms_per_output": 1e3 * (t4 - t3) / outputs,
            "client_s": (t3 - t2) + (t5 - t4) * n_out / outputs,  # decryption: per output
            "encrypt_s": t3 - t2, "decrypt_s_per_output": (t5 - t4) / outputs,
            "compile_s": compile_s, "keygen_s": t2 - t1, "eval_key_bytes": len(keys),
            "max_error": int(np.abs(y - x @ w).max())}


def measure_simd(n_in: int, n_out: int, rows: int) -> dict:
    """Design (a): BFV slots, diagonal matrix product with baby-step/giant-step rotations.

    Two rows per ciphertext (one per half of SEAL's 2 × N/2 slot matrix); each half holds the
    row repeated with period P (a power of two ≥ n_in), so a rotation by d puts
    ``x[(s + d) mod P]`` in slot s and ``y = Σ_d diag_d ⊙ rot_d(x)`` with ``diag_d[s] =
    W[(s + d) mod P, s]``; ``d = g·i + j`` needs g − 1 baby and P/g − 1 giant rotations.
    """
    n = 8192
    half, period = n // 2, 1 << (n_in - 1).bit_length()
    assert n_out <= half and period <= half
    w, x = data(n_in, n_out, rows)
    t_bits = math.ceil(math.log2(2 * 128 * 128 * n_in + 2)) + 1
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.BFVDefault(n, seal.SEC_LEVEL_TYPE.TC128))
    plain_modulus = seal.PlainModulus.Batching(n, t_bits)
    parms.set_plain_modulus(plain_modulus)
    t = plain_modulus.value()
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    encoder, evaluator = seal.BatchEncoder(ctx), seal.Evaluator(ctx)
    baby = 1 << math.ceil(math.log2(period) / 2)
    giant = period // baby
    steps = list(range(1, baby)) + [baby * i for i in range(1, giant)]
    tmp = tempfile.TemporaryDirectory()
    path = str(Path(tmp.name) / "obj")

    def to_bytes(obj: object) -> bytes:
        obj.save(path)  # type: ignore[attr-defined]
        return Path(path).read_bytes()

    def from_bytes(obj: object, blob: bytes) -> None:
        Path(path).write_bytes(blob)
        obj.load(ctx, path)  # type: ignore[attr-defined]

    # Client: keys (Galois keys for rotation by k are for the element 3^k mod 2N).
    t0 = time.perf_counter()
    keygen = seal.KeyGenerator(ctx)
    sk = keygen.secret_key()
    gk_bytes = to_bytes(keygen.create_galois_keys([pow(3, s, 2 * n) for s in steps]))
    keygen_s = time.perf_counter() - t0
    encryptor, decryptor = seal.Encryptor(ctx, sk), seal.Decryptor(ctx, sk)

    # Miner, once: the pre-rotated diagonals, NTT form.
    t0 = time.perf_counter()
    s_idx = np.arange(n_out)
    diags = []
    for d in range(period):
        r = (s_idx + d) % period
        vec = np.zeros(half, dtype=np.int64)
        vec[:n_out] = np.where(r < n_in, w[np.minimum(r, n_in - 1), s_idx], 0)
        vec = np.roll(vec, baby * (d // baby))
        plain = seal.Plaintext()
        encoder.encode((np.concatenate([vec, vec]) % t).tolist(), plain)
        evaluator.transform_to_ntt_inplace(plain, ctx.first_parms_id())
        diags.append(plain)
    weight_s = time.perf_counter() - t0
    galois = seal.GaloisKeys()
    from_bytes(galois, gk_bytes)

    # Client: encrypt two rows per ciphertext.
    t0 = time.perf_counter()
    padded = np.zeros((rows + rows % 2, period), dtype=np.int64)
    padded[:rows, :n_in] = x
    cts_in = []
    for k in range(0, padded.shape[0], 2):
        slots = np.concatenate([np.tile(padded[k], half // period),
                                np.tile(padded[k + 1], half // period)])
        plain = seal.Plaintext()
        encoder.encode((slots % t).tolist(), plain)
        cts_in.append(to_bytes(encryptor.encrypt_symmetric(plain)))
    encrypt_s = time.perf_counter() - t0

    # Miner: BSGS product per ciphertext, then switch to the last prime.
    t0 = time.perf_counter()
    replies = []
    for blob in cts_in:
        ct = seal.Ciphertext()
        from_bytes(ct, blob)
        rotated = [ct]
        for j in range(1, baby):
            r = seal.Ciphertext()
            evaluator.rotate_rows(ct, j, galois, r)
            rotated.append(r)
        for r in rotated:
            evaluator.transform_to_ntt_inplace(r)
        acc = None
        for i in range(giant):
            inner = None
            for j in range(baby):
                term = seal.Ciphertext()
                evaluator.multiply_plain(rotated[j], diags[i * baby + j], term)
                if inner is None:
                    inner = term
                else:
                    evaluator.add_inplace(inner, term)
            evaluator.transform_from_ntt_inplace(inner)
            if i:
                evaluator.rotate_rows_inplace(inner, baby * i, galois)
            if acc is None:
                acc = inner
            else:
                evaluator.add_inplace(acc, inner)
        evaluator.mod_switch_to_inplace(acc, ctx.last_parms_id())
        replies.append(to_bytes(acc))
    miner_s = time.perf_counter() - t0

    # Client: decrypt.
    t0 = time.perf_counter()
    y = np.zeros((padded.shape[0], n_out), dtype=np.int64)
    budget = []
    for k, blob in enumerate(replies):
        ct = seal.Ciphertext()
        from_bytes(ct, blob)
        budget.append(decryptor.invariant_noise_budget(ct))
        plain = seal.Plaintext()
        decryptor.decrypt(ct, plain)
        slots = np.array(encoder.decode_int64(plain))
        y[2 * k], y[2 * k + 1] = slots[:n_out], slots[half:half + n_out]
    decrypt_s = time.perf_counter() - t0
    tmp.cleanup()
    b_in, b_out = sum(map(len, cts_in)), sum(map(len, replies))
    return {"backend": "simd", "shape": [n_in, n_out], "rows": rows,
            "bytes_in": b_in, "bytes_out": b_out,
            "in_b_per_value": b_in / (rows * n_in), "out_b_per_value": b_out / (rows * n_out),
            "miner_s": miner_s, "miner_ms_per_output": 1e3 * miner_s / (rows * n_out),
            "client_s": encrypt_s + decrypt_s, "keygen_s": keygen_s,
            "weight_encoding_s": weight_s, "eval_key_bytes": len(gk_bytes),
            "rotations_per_ciphertext": len(steps), "noise_budget_bits_left": min(budget),
            "max_error": int(np.abs(y[:rows] - x @ w).max()),
            "params": {"N": n, "log_q": 218, "log_t": t_bits, "baby": baby, "giant": giant,
                       "period": period}}


# Run by the scratch venv's interpreter: argv = n_in n_out outputs; prints one JSON line.
CMLX_SIDE = """
import json, sys, time
from importlib.metadata import version
import numpy as np
import concrete_ml_extensions as cml
n_in, n_out, outputs = map(int, sys.argv[1:4])
rng = np.random.default_rng(0)
w = rng.integers(-128, 128, (n_in, n_out))[:, :outputs]
x = rng.integers(-128, 128, (1, n_in))
params = json.loads(cml.default_params())
params["bits_reserved_for_computation"] = int(np.ceil(np.log2(2 * 128 * 128 * n_in + 2))) + 1
crypto = cml.MatmulCryptoParameters.deserialize(json.dumps(params))
t0 = time.perf_counter()
pkey, ckey = cml.create_private_key(crypto)
t1 = time.perf_counter()
ct = cml.encrypt_matrix(pkey=pkey, crypto_params=crypto, data=x.view(np.uint64))
t2 = time.perf_counter()
res = cml.matrix_multiplication(encrypted_matrix=ct, data=w.view(np.uint64), compression_key=ckey)
t3 = time.perf_counter()
valid = outputs % params["polynomial_size"] or params["polynomial_size"]
y = cml.decrypt_matrix(res, pkey, crypto, num_valid_glwe_values_in_last_ciphertext=valid)
t4 = time.perf_counter()
mod = 1 << params["bits_reserved_for_computation"]
y = np.asarray(y, dtype=np.int64).reshape(1, -1)[:, :outputs] % mod
y = np.where(y >= mod // 2, y - mod, y)
print(json.dumps({"in_bytes": len(ct.serialize()), "out_bytes": len(res.serialize()),
                  "keygen_s": t1 - t0, "encrypt_s": t2 - t1, "miner_s": t3 - t2,
                  "decrypt_s": t4 - t3, "eval_key_bytes": len(ckey.serialize()),
                  "max_error": int(np.abs(y - x @ w).max()),
                  "version": version("concrete-ml-extensions")}))
"""


def measure_cmlx(python: str, n_in: int, n_out: int, outputs: int) -> dict:
    """concrete-ml-extensions' GLWE matmul, in its own interpreter; per-output figures."""
    run = subprocess.run([python, "-c", CMLX_SIDE, str(n_in), str(n_out), str(outputs)],
                         capture_output=True, text=True, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    return {"backend": "glwe", "shape": [n_in, n_out], "rows": 1, "measured_outputs": outputs,
            "in_b_per_value": r["in_bytes"] / n_in, "out_b_per_value": r["out_bytes"] / outputs,
            "miner_ms_per_output": 1e3 * r["miner_s"] / outputs,
            "client_s": r["encrypt_s"] + r["decrypt_s"] * n_out / outputs,
            "keygen_s": r["keygen_s"], "eval_key_bytes": r["eval_key_bytes"],
            "max_error": r["max_error"], "version": r["version"]}


def measure_hybrid_model(python: str, n_in: int, n_out: int) -> dict:
    """concrete-ml 1.9's HybridFHEModel on the linear, local execute mode, in ``.venv-cml``
    (``benchmarks/_cml_hybrid_side.py``): its GLWE executor for layers ≥ 512 wide (every
    output), else a concrete-python circuit on the first 64 outputs (as the lwe rows)."""
    outputs = n_out if min(n_in, n_out) >= 512 else min(64, n_out)
    side = Path(__file__).resolve().parent / "_cml_hybrid_side.py"
    run = subprocess.run([python, str(side), str(n_in), str(n_out), str(outputs)],
                         capture_output=True, text=True, check=True)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    return dict(r, backend="concrete-ml HybridFHEModel", rows=1)


def scale(backend: str, measured: dict[tuple[int, int], dict], n_in: int, n_out: int,
          rows: int) -> dict:
    """A linear's per-value bytes and miner seconds for ``lwe``/``glwe``, from the measured
    shape with the nearest input width: lwe's cost per output grows with the inputs (one
    multiply-add each), glwe's is its per-output packing keyswitch; neither batches rows."""
    ref = min(measured.values(), key=lambda r: abs(r["shape"][0] - n_in))
    ms = ref["miner_ms_per_output"] * (n_in / ref["shape"][0] if backend == "lwe" else 1.0)
    return {"in_b_per_value": ref["in_b_per_value"], "out_b_per_value": ref["out_b_per_value"],
            "seconds": rows * n_out * ms / 1e3}


def model_cost(model: dict, per_linear: dict[tuple[int, int], dict]) -> dict:
    """Bytes both ways and seconds for one model pass (issue #13's "s")."""
    rows, layers = model["rows"], model["layers"]
    up = down = compute = 0.0
    for n_in, n_out in model["linears"]:
        m = per_linear[(n_in, n_out)]
        up += m["in_b_per_value"] * rows * n_in
        down += m["out_b_per_value"] * rows * n_out
        compute += m["seconds"]
    up, down, compute = up * layers, down * layers, compute * layers
    trips = layers * len(model["linears"])
    return {"bytes_up": up, "bytes_down": down, "compute_s": compute, "round_trips": trips,
            "seconds": compute + (up + down) * 8 / (LINK_MBPS * 1e6) + trips * RTT_S}


def mb(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.1f} KB"


def render(result: dict) -> str:
    lines = [
        "Encrypted × clear 8-bit linears `y = x @ W` (random 8-bit signed `x`, `W`, seed 0), "
        "every backend checked against the plain integer product. Bytes are what crosses the "
        "wire: client→miner per input value, miner→client per output value. Client ms: "
        "encrypt + decrypt for the whole call (lwe: decryption scaled to every output). "
        "lwe's miner ms/output includes the call's fixed overhead spread over the measured "
        "outputs. Eval keys: uploaded once per client.",
        "",
        "| shape | backend | rows | in B/value | out B/value | miner ms/output | client ms | "
        "max error | eval keys |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["table"]:
        n_in, n_out = r["shape"]
        extra = f" ({r['measured_outputs']} outputs measured)" if "measured_outputs" in r else ""
        if "version" in r:
            extra = f" (concrete-ml-extensions {r['version']}, {extra[2:]}"
        if r["backend"] in ("packing", "sparse"):
            extra = (f" (N=4096, n_w={r['params']['partition'][1]}, {r['key_switches']} key "
                     "switches)")
            if r["backend"] == "sparse":
                extra = (f" (N=4096, {r['params']['input_bits']}-bit inputs, "
                         f"{r['key_switches']} key switches)")
        if "earlier" in r:
            extra += f" _(run at {r['earlier']})_"
        lines.append(
            f"| {n_in}×{n_out} | {r['backend']}{extra} | {r['rows']} | "
            f"{r['in_b_per_value']:.1f} | {r['out_b_per_value']:.1f} | "
            f"{r['miner_ms_per_output']:.4f} | {1e3 * r['client_s']:.0f} | "
            f"{'exact' if r['max_error'] == 0 else r['max_error']} | {mb(r['eval_key_bytes'])} |")
    if result.get("hybrid_model"):
        lines += ["", "**concrete-ml 1.9's HybridFHEModel** on the same linears (same weights, "
                  "one row, local `execute` mode: no wire, so no bytes; its own 8-bit "
                  "quantization of x and W, so its error is relative to the float product; "
                  "time is the whole call, client and server, per output):", "",
                  "| shape | path | outputs measured | ms/output | call s | compile s | "
                  "rel. error vs float | eval keys |", "|---|---|---|---|---|---|---|---|"]
        for r in result["hybrid_model"]:
            keys = mb(r["eval_key_bytes"]) if "eval_key_bytes" in r else "—"
            path = r["path"] + (f" _(run at {r['earlier']})_" if "earlier" in r else "")
            lines.append(f"| {r['shape'][0]}×{r['shape'][1]} | {path} | "
                         f"{r['measured_outputs']} | {r['ms_per_output']:.4f} | {r['s']:.3f} | "
                         f"{r['compile_s']:.1f} | {r['rel_error_vs_float']:.4f} | {keys} |")
    lines += ["", "**Design comparison** on 384×1152 (coefficient encoding vs SIMD diagonals):", "",
              "| design | rows | in B/value | out B/value | miner ms/output | client ms | "
              "eval keys | max error | notes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["designs"]:
        note = (f"N={r['params']['N']}, partition {r['params']['partition']}, noise "
                f"2^{r['noise_bits']:.1f} of 2^{r['margin_bits']} margin"
                if r["backend"] == "packed" else
                f"N=8192, {r['rotations_per_ciphertext']} rotations/ciphertext, "
                f"{r['noise_budget_bits_left']} bits of noise budget left")
        lines.append(
            f"| {'coefficient (Cheetah)' if r['backend'] == 'packed' else 'SIMD + BSGS'} | "
            f"{r['rows']} | {r['in_b_per_value']:.1f} | {r['out_b_per_value']:.1f} | "
            f"{r['miner_ms_per_output']:.4f} | {1e3 * r['client_s']:.0f} | "
            f"{mb(r['eval_key_bytes'])} | {r['max_error']} | {note} |")
    lines += ["", "**Extrapolations** (packed: each real shape measured, client + miner; lwe "
              "and glwe: scaled from the measured shape with the nearest input width, miner "
              "only):", "",
              "| model | backend | up | down | compute s | s (100 Mbit/s, 20 ms RTT) | target |",
              "|---|---|---|---|---|---|---|"]
    for name, label, target in (
            ("minilm", "all-MiniLM-L6-v2, 16-token sentence", "≤ 100 MB both ways, ≤ 60 s"),
            ("gpt2", "GPT-2 small, per generated token", "≤ 2 MB per token")):
        for backend, c in result["extrapolations"][name].items():
            lines.append(f"| {label} | {backend} | {mb(c['bytes_up'])} | {mb(c['bytes_down'])} "
                         f"| {c['compute_s']:.1f} | {c['seconds']:.1f} | {target} |")
    lines += ["", f"Command: `{result['command']}`. Machine: 2 cores shared with other jobs; "
              "times are one run each.", "", result["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lwe-outputs", type=int, default=64,
                    help="columns of W compiled for concrete's LWE path (per-output figures)")
    ap.add_argument("--no-lwe", action="store_true", help="skip concrete's LWE path")
    ap.add_argument("--cmlx-python", default="/tmp/cmlx-venv/bin/python",
                    help="interpreter with concrete-ml-extensions (skipped if absent)")
    ap.add_argument("--cml-python", default=str(Path(__file__).resolve().parent.parent
                                                 / ".venv-cml" / "bin" / "python"),
                    help="interpreter with concrete-ml 1.9 (benchmarks/fhe_latency.py --setup "
                         "and concrete-ml-extensions 0.1.9; skipped if absent)")
    ap.add_argument("--cmlx-outputs", type=int, default=256,
                    help="columns of W multiplied by concrete-ml-extensions (per-output figures)")
    ap.add_argument("--earlier", type=Path, default=Path(__file__).resolve().parent / "results"
                    / f"{KEY}.json",
                    help="an earlier run's JSON: its rows for the backends not measured now "
                         "(lwe with --no-lwe, glwe and HybridFHEModel without their venvs) "
                         "are kept, marked with that run's commit")
    args = ap.parse_args(argv)
    command = "python benchmarks/packed_linear.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    earlier = json.loads(args.earlier.read_text()) if args.earlier.is_file() else {}
    since = (earlier.get("machine") or {}).get("commit", "?")
    table, cache = [], {}

    def kept(backend: str, n_in: int, n_out: int) -> list[dict]:
        """That run's rows, each marked with the commit it was measured at (a row it had
        itself kept keeps its own mark)."""
        rows = [{"earlier": since, **r} for r in earlier.get("table", [])
                if r["backend"] == backend and r["shape"] == [n_in, n_out]]
        for r in rows:
            print(f"{backend} {n_in}×{n_out}: kept from the run at commit {r['earlier']}",
                  flush=True)
        return rows

    def packed(n_in: int, n_out: int, rows: int, variant: str = "packed") -> dict:
        if (n_in, n_out, rows, variant) not in cache:
            print(f"{variant} {n_in}×{n_out}, {rows} rows", flush=True)
            cache[(n_in, n_out, rows, variant)] = measure_packed(n_in, n_out, rows, variant)
        return cache[(n_in, n_out, rows, variant)]

    scaled: dict[str, dict[tuple[int, int], dict]] = {"lwe": {}, "glwe": {}}
    hybrid_models: list[dict] = []
    for n_in, n_out in SHAPES:
        if not args.no_lwe:
            print(f"lwe {n_in}×{n_out}", flush=True)
            lwe = [measure_lwe(n_in, n_out, min(args.lwe_outputs, n_out))]
        else:
            lwe = kept("lwe", n_in, n_out)
        if Path(args.cmlx_python).is_file():
            print(f"glwe {n_in}×{n_out}", flush=True)
            glwe = [measure_cmlx(args.cmlx_python, n_in, n_out, min(args.cmlx_outputs, n_out))]
        else:
            glwe = kept("glwe", n_in, n_out)
        for backend, rows in (("lwe", lwe), ("glwe", glwe)):
            for r in rows:
                scaled[backend][(n_in, n_out)] = r
                table.append(r)
        if Path(args.cml_python).is_file():
            print(f"concrete-ml HybridFHEModel {n_in}×{n_out}", flush=True)
            hybrid_models.append(measure_hybrid_model(args.cml_python, n_in, n_out))
        else:
            hybrid_models += [{"earlier": since, **r} for r in earlier.get("hybrid_model", [])
                              if r["shape"] == [n_in, n_out]]
        table += [packed(n_in, n_out, rows, variant) for variant in VARIANTS
                  for rows in (1, 16)]
    print("simd 384×1152", flush=True)
    designs = [packed(384, 1152, 16), measure_simd(384, 1152, 16),
               packed(384, 1152, 1), measure_simd(384, 1152, 1)]

    extrapolations: dict[str, dict] = {"minilm": {}, "gpt2": {}}
    for name, model in (("minilm", MINILM), ("gpt2", GPT2)):
        for backend in VARIANTS:
            per = {}
            for n_in, n_out in model["linears"]:
                m = dict(packed(n_in, n_out, model["rows"], backend))
                m["seconds"] = m["client_s"] + m["miner_s"]
                per[(n_in, n_out)] = m
            extrapolations[name][backend] = model_cost(model, per)
            extrapolations[name][backend]["eval_key_bytes"] = model["layers"] * sum(
                per[shape]["eval_key_bytes"] for shape in model["linears"])
        for backend, measured in scaled.items():
            if measured:
                per = {shape: scale(backend, measured, *shape, model["rows"])
                       for shape in model["linears"]}
                extrapolations[name][backend] = model_cost(model, per)

    total = {(r["backend"], r["rows"]): r["bytes_in"] + r["bytes_out"] for r in designs}
    speed = {(r["backend"], r["rows"]): r["miner_ms_per_output"] for r in designs}
    gpt2 = extrapolations["gpt2"]
    per_token = {b: c["bytes_up"] + c["bytes_down"] for b, c in gpt2.items()}
    sparse = gpt2["sparse"]
    notes = (
        "Chosen design: coefficient encoding (`cerberus/fhe/packed.py`). On 384×1152 it moves "
        f"{mb(total[('packed', 16)])} at 16 rows against SIMD's {mb(total[('simd', 16)])} "
        f"({mb(total[('packed', 1)])} vs {mb(total[('simd', 1)])} at 1 row), its miner is "
        f"{speed[('simd', 16)] / speed[('packed', 16)]:.1f}× faster at 16 rows (no rotations) "
        f"and it needs no evaluation keys (SIMD: {mb(designs[1]['eval_key_bytes'])} of Galois "
        "keys). Three parameter sets of it: `packed` is keyless (N=2048, sparse replies); "
        "`packing` packs the replies dense (N=4096, n_w = the input's width rounded up to a "
        "power of two, one key switch per output ciphertext, the client's Galois keys "
        "uploaded once); `sparse` is packing with sparse input (only the c0 coefficients "
        "that hold inputs cross the wire, their low bits dropped as far as the noise bound "
        "allows, c1 from a seed; one output per product, so one key switch per output). "
        "GPT-2 small per generated token: "
        + ", ".join(f"{b} {mb(per_token[b])} in {gpt2[b]['compute_s']:.1f} s of compute"
                    for b in VARIANTS)
        + f"; the 2 MB target is {'met' if per_token['sparse'] <= 2e6 else 'NOT met'} by "
        f"`sparse` ({mb(sparse['bytes_up'])} up, {mb(sparse['bytes_down'])} down, "
        f"{mb(sparse['eval_key_bytes'])} of Galois keys per client: each linear has its own "
        "plaintext modulus, so its own key). What the packing sets still pay per call: one "
        "dense reply whose c1 carries all N = 4096 coefficients (out_bits each) however few "
        "outputs it holds. The cost model (`cerberus/fhe/pricing.py`) prices every set and "
        "width per linear: at 100 Mbit/s the keyless set wins on seconds, on slow links the "
        "packing sets do. glwe runs with `bits_reserved_for_computation` = accumulator bits "
        "+ 1: its errors are its approximate outputs (low bits stored at 26 bits), not a "
        "failure of this run.")
    marks = sorted({r["earlier"] for r in table + hybrid_models if "earlier" in r})
    if marks:
        notes += (f" Rows marked _(run at {', '.join(marks)})_ were kept from the run at that "
                  "commit (their venvs are absent here, or `--no-lwe`), not measured again.")
    result = {"table": table, "designs": designs, "extrapolations": extrapolations,
              "hybrid_model": hybrid_models, "command": command, "notes": notes}
    write_json(KEY, result)
    write_section(KEY, "Packed encrypted × clear linears: LWE vs packed BFV (issue #14)",
                  render(result))
    print(render(result))


if __name__ == "__main__":
    main()
