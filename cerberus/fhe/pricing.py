"""Which backend runs each hybrid linear: priced per call, as the user's link sees it
(issue #14; SPEC C6, R4).

A hybrid linear ``y = x @ W`` (``rows × n_in`` encrypted, ``n_in × n_out`` clear) can run as

* ``lwe``: one concrete-python LWE ciphertext per value: fast on the miner, but every
  output is a full 11.5–13 KB ciphertext;
* ``packed``: coefficient-encoded BFV (``cerberus.fhe.packed``): many values per RLWE
  ciphertext, exact; two parameter sets, priced each: N = 2048 with no evaluation keys
  and sparse replies, or N = 4096 with replies packed dense by the client's Galois keys
  (uploaded once, not in a call's price) at one of several widths n_w (few bytes but one
  key switch per output ciphertext, or more input ciphertexts and fewer key switches), or
  with sparse input (only the coefficients holding inputs are sent: the fewest bytes, one
  key switch per output); the cheapest is the one compiled (``packed_params``);
* ``glwe``: concrete-ml-extensions' GLWE path (concrete-ml's HybridFHEModel): the fewest
  bytes, but ~19 ms per output of packing keyswitch and inexact for wide accumulators.
  Priced here so the manifest shows why it loses; Cerberus does not serve it (its wheel
  pins its own concrete and is measured from a separate venv by benchmarks/).

A call's price is its time as a user sees it: client and miner compute, bytes both ways
at the link's bandwidth, and one round trip (``--link-mbps``, ``--rtt-ms``). ``auto`` takes
the cheapest *exact* backend per linear, priced for the call a model makes most: one row
(a generated token) for a causal LM, a whole sequence for an encoder.

Every constant is a measurement from ``benchmarks/packed_linear.py`` (benchmarks/RESULTS.md
#packed_linear, 2-core Xeon, 8-bit inputs and weights); the packed path's bytes are
computed exactly from its parameters instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cerberus.errors import CompileError
from cerberus.fhe.packed import PACK_POLY_DEGREE, PackedParams

BACKENDS = ("lwe", "packed")  # what a miner serves
PRICED = ("lwe", "packed", "glwe")  # what the cost model compares
EXACT = {"lwe": True, "packed": True, "glwe": False}
DEFAULT_LINK_MBPS = 100.0
DEFAULT_RTT_MS = 20.0

# lwe (concrete-python 2.11, compressed inputs): RESULTS#packed_linear, 64..768 inputs
LWE_IN_BYTES = 26.0  # per input value (24.3–28.1 measured)
LWE_OUT_BYTES = 12_900.0  # per output value (11.7–13.1 KB measured)
LWE_MS_PER_OUTPUT = (0.33, 0.00192)  # a + b·n_in (0.45 ms at 64 inputs, 1.8 ms at 768)
LWE_CLIENT_MS_PER_OUTPUT = 0.2  # decrypting one output (63 ms for 384×1152, 64 outputs + enc)
# glwe (concrete-ml-extensions 0.2.0): same table
GLWE_IN_BYTES, GLWE_OUT_BYTES, GLWE_MS_PER_OUTPUT = 13.2, 29.6, 19.1
# packed: per input ciphertext 15.6 KB for N=2048 (SEAL's seeded, compressed form of a
# 54-bit c0); 0.095 ms per plaintext product on the miner; 0.45 ms of client work per
# ciphertext (encrypt, or decrypt an output's c1·s)
PACKED_IN_BYTES_PER_COEFF = 7.62
PACKED_MS_PER_PRODUCT = 0.095
PACKED_CLIENT_MS_PER_CT = 0.45
# packed and packing (N=4096, q = two 32-bit primes; RESULTS#packed_linear, the packing
# and sparse rows, run at f1fb636): SEAL's seeded, compressed c0 per coefficient (44.4 B per
# value at 768 inputs); per plaintext product; per output ciphertext out of NTT form and
# merged (a monomial product, an add, a sub and one apply_galois key switch: 0.96 s for 768
# at 768×3072 packing, 3.67 s for 3072 with sparse input); per dense ciphertext read and
# switched down; client: per input ciphertext encrypted or dense one decrypted (3–34 ms)
PACK_IN_BYTES_PER_COEFF = 8.33
PACK_MS_PER_PRODUCT = 0.07
PACK_MS_PER_OUTPUT_CT = 1.2
PACK_MS_PER_DENSE = 25.0
PACK_CLIENT_MS_PER_CT = 10.0
PACK_MIN_WIDTH = 16  # narrower: input ciphertexts nearly empty, never the cheapest


@dataclass(frozen=True)
class Link:
    """The client's connection to a miner."""

    mbps: float = DEFAULT_LINK_MBPS
    rtt_ms: float = DEFAULT_RTT_MS

    def __post_init__(self) -> None:
        if not self.mbps > 0 or not self.rtt_ms >= 0:
            raise CompileError(f"link: bandwidth must be > 0 Mbit/s and round-trip time "
                               f"≥ 0 ms, got {self.mbps} and {self.rtt_ms}")


@dataclass(frozen=True)
class Price:
    """One call of one linear on one backend."""

    backend: str
    rows: int
    bytes_up: int
    bytes_down: int
    miner_s: float
    client_s: float
    seconds: float  # miner + client + bytes at the link's bandwidth + one round trip
    exact: bool
    variant: str = ""  # packed: the parameter set priced

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("miner_s", "client_s", "seconds"):
            d[k] = round(d[k], 6)
        return d


def price(backend: str, n_in: int, n_out: int, rows: int, link: Link, *, bits: int = 8,
          weight_bits: int = 8, params: PackedParams | None = None) -> Price:
    """The predicted cost of ``[rows, n_in] @ [n_in, n_out]`` on ``backend`` (packed: on
    ``params``, or on the cheapest of its parameter sets)."""
    if backend == "lwe":
        up, down = rows * n_in * LWE_IN_BYTES, rows * n_out * LWE_OUT_BYTES
        a, b = LWE_MS_PER_OUTPUT
        miner = rows * n_out * (a + b * n_in) / 1e3
        client = rows * n_out * LWE_CLIENT_MS_PER_OUTPUT / 1e3
    elif backend == "glwe":
        up, down = rows * n_in * GLWE_IN_BYTES, rows * n_out * GLWE_OUT_BYTES
        miner, client = rows * n_out * GLWE_MS_PER_OUTPUT / 1e3, 0.0
    elif backend == "packed":
        if params is None:
            params = packed_params(n_in, n_out, rows, link, bits=bits, weight_bits=weight_bits)
        return _packed_price(params, rows, link)
    else:
        raise CompileError(f"unknown linear backend {backend!r}; known: {', '.join(PRICED)}")
    wire = (up + down) * 8 / (link.mbps * 1e6)
    return Price(backend, rows, int(up), int(down), miner, client,
                 miner + client + wire + link.rtt_ms / 1e3, EXACT[backend])


def _packed_price(p: PackedParams, rows: int, link: Link) -> Price:
    cts_in, cts_out = p.counts(rows)
    part = p.partition(rows)
    products = cts_in * -(-p.n_out // part.m_w)
    down = p.output_bytes(rows)
    if p.pack:
        # sparse input: its exact size (the values it sends, bit-packed, and a seed)
        up = p.input_bytes(rows) if p.sparse else cts_in * p.poly_degree * PACK_IN_BYTES_PER_COEFF
        dense = p.packed_count(rows)
        miner = (products * PACK_MS_PER_PRODUCT + cts_out * PACK_MS_PER_OUTPUT_CT
                 + dense * PACK_MS_PER_DENSE) / 1e3
        client = (cts_in + dense) * PACK_CLIENT_MS_PER_CT / 1e3
        variant = (f"N={p.poly_degree} packed, sparse input ({p.input_value_bits}-bit)"
                   if p.sparse else f"N={p.poly_degree} packed, n_w={p.width}")
    else:
        up = cts_in * p.poly_degree * PACKED_IN_BYTES_PER_COEFF
        miner = products * PACKED_MS_PER_PRODUCT / 1e3
        client = (cts_in + cts_out) * PACKED_CLIENT_MS_PER_CT / 1e3
        variant = f"N={p.poly_degree}"
    up = int(up)
    wire = (up + down) * 8 / (link.mbps * 1e6)
    return Price("packed", rows, up, down, miner, client,
                 miner + client + wire + link.rtt_ms / 1e3, True, variant)


def packed_variants(n_in: int, n_out: int, *, bits: int = 8,
                    weight_bits: int = 8) -> list[PackedParams]:
    """Every packed parameter set this linear fits: N = 2048 unpacked, and N = 4096 packed
    at each power-of-two width from PACK_MIN_WIDTH to the input's width (whose noise bound
    holds), and N = 4096 with sparse input. Raises the unpacked set's error when none fits."""
    out, first_error = [], None
    try:
        out.append(PackedParams(n_in, n_out, bits, weight_bits))
    except CompileError as e:
        first_error = e
    width = min(1 << (n_in - 1).bit_length(), PACK_POLY_DEGREE)
    while width >= min(PACK_MIN_WIDTH, width):
        try:
            out.append(PackedParams(n_in, n_out, bits, weight_bits, pack=True, width=width))
        except CompileError as e:
            first_error = first_error or e
        if width == 1:
            break
        width //= 2
    try:
        out.append(PackedParams(n_in, n_out, bits, weight_bits, pack=True, sparse=True))
    except CompileError as e:
        first_error = first_error or e
    if not out:
        assert first_error is not None
        raise first_error
    return out


def packed_params(n_in: int, n_out: int, rows: int, link: Link, *, bits: int = 8,
                  weight_bits: int = 8) -> PackedParams:
    """The packed parameter set with the cheapest call of ``rows`` rows on ``link``."""
    variants = packed_variants(n_in, n_out, bits=bits, weight_bits=weight_bits)
    return min(variants, key=lambda p: _packed_price(p, rows, link).seconds)


def choose(requested: str, n_in: int, n_out: int, rows: int, link: Link, *, bits: int = 8,
           weight_bits: int = 8) -> tuple[str, dict[str, dict]]:
    """The backend for one linear and every backend's price (what the manifest records).

    ``requested`` is ``lwe``, ``packed`` or ``auto`` (the cheapest exact backend)."""
    if requested not in (*BACKENDS, "auto"):
        raise CompileError(f"linear backend must be one of {', '.join((*BACKENDS, 'auto'))}, "
                           f"got {requested!r}")
    prices, unfit = {}, {}
    for b in PRICED:
        try:
            prices[b] = price(b, n_in, n_out, rows, link, bits=bits, weight_bits=weight_bits)
        except CompileError as e:  # packed: an accumulator too wide for its modulus
            unfit[b] = str(e)
    if requested == "auto":
        chosen = min((p for p in prices.values() if p.exact and p.backend in BACKENDS),
                     key=lambda p: p.seconds).backend
    elif requested in unfit:
        raise CompileError(unfit[requested])
    else:
        chosen = requested
    return chosen, {b: p.to_dict() for b, p in prices.items()}
