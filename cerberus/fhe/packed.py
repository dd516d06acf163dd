"""Packed, exact encrypted × clear-weight linears: coefficient encoding in BFV (issue #14;
SPEC C6, R1, R4).

In the ``hybrid`` partition the miner computes ``y = x @ W`` on the client's encrypted 8-bit
rows with its own clear 8-bit weights. With one concrete LWE ciphertext per value that costs
~26 B per input value and 11.5 KB per output value. Here many values share one RLWE
ciphertext, and the product needs no evaluation keys at all:

**Coefficient encoding** (Huang et al., *Cheetah*, USENIX Security 2022, §3.1). In
``Z_t[X]/(X^N + 1)`` put ``r_w`` rows × ``n_w`` inputs of ``x`` in one polynomial and
``n_w`` inputs × ``m_w`` outputs of ``W`` in another, with ``r_w·n_w·m_w ≤ N``::

    x̂ = Σ_i Σ_j x[i, j] · X^(i·n_w·m_w + j)        ŵ = Σ_k Σ_j W[j, k] · X^(k·n_w + n_w − 1 − j)

Then coefficient ``i·n_w·m_w + k·n_w + n_w − 1`` of ``x̂·ŵ`` is exactly the dot product
``Σ_j x[i, j]·W[j, k]`` (other products land on other residues mod ``n_w``; the negacyclic
wrap only reaches coefficients below ``n_w − 1``). The miner multiplies each encrypted
``x̂`` by its plaintext ``ŵ`` blocks and sums over input blocks: one NTT-domain product per
``r_w·n_w·m_w`` multiply-adds, no rotation, no key switching, so no Galois keys to upload.
``benchmarks/packed_linear.py`` measures this against the SIMD diagonal design (Halevi–Shoup
BSGS with rotations, as Gazelle/BOLT/BumbleBee do) and concrete's LWE path.

**Parameters.** ``N = 2048`` with SEAL's ``CoeffModulus.BFVDefault(2048)``: one 54-bit prime,
the largest ``q`` the Homomorphic Encryption Security Standard (Albrecht et al., November
2018, §5.4, its table for a ternary secret ``{-1, 0, 1}`` as SEAL samples, classical
128-bit security) allows at ``N = 2048``: ``log q ≤ 54`` (SEAL's
``SEAL_HE_STD_PARMS_128_TC``, ``CoeffModulus.MaxBitCount(2048)``; SEAL refuses more).
The plaintext modulus is a power of two ``t = 2^b`` (coefficient encoding needs no batching,
so no prime ``t ≡ 1 mod 2N``) with ``t > 2·max|acc| + 1``, ``max|acc| = 128·128·n_in``: the
accumulator is read back exactly, centred mod ``t``. Only the secret key is secret; the
miner gets no key.

**Outputs are switched down before they are sent.** An output ciphertext ``(c0, c1)`` mod
``q`` is rescaled to ``(round(c·2^k/q) mod 2^k)`` with ``k = b + OUTPUT_MARGIN_BITS``, and only
the coefficients of ``c0`` that hold outputs are sent (all of ``c1`` is needed: Cheetah's
trick). The client decrypts that itself, ``m = round((c0 + c1·s mod 2^k) / 2^(k−b))``: the
rounding adds ``ε0 + ε1·s`` with ``|ε| ≤ 1/2``; by Hoeffding ``|ε1·s| > 2^8`` has probability
``≤ 2·exp(−2^17/N) ≈ 2^−91`` per coefficient, and the BFV noise scaled by ``2^k/q`` is
``e·2^(b+10−54)``, under 2^8 for ``e < 2^(52−b)`` (``MIN_NOISE_BITS`` keeps ``b ≤ 34``). So a
margin of ``2^(k−b−1) = 2^9`` keeps decryption exact; ``PackedClient.noise_bits`` measures what
is used (≤ 2^5.5 at every tested shape, extreme inputs included). Inputs use SEAL's seeded
symmetric encryption (``c1`` is a seed) and its compressed serialization.

**Packing the replies** (``pack=True``; Chen–Dai–Kim–Song, *Efficient homomorphic
conversion between (ring) LWE ciphertexts*, ACNS 2021, Algorithm 2 "PackLWEs"). Unpacked, at
one row (a generated token) each output ciphertext carries all ``N`` coefficients of ``c1``
for a few outputs (~140 B per output value) and each input ciphertext a few dozen inputs.
With packing, ``n_w`` is a power of two and the weights are encoded times ``X^−(n_w−1)``,
so the outputs sit on the multiples of ``n_w`` and every other multiple is clean (zero).
``n_w`` such ciphertexts merge into one dense ciphertext, ciphertext ``j`` at offset ``j``,
with ``n_w − 1`` automorphisms — one per output ciphertext, whatever it holds::

    Pack(a_0..a_(d−1), l) = (E + X^s·O) + σ(E − X^s·O),   s = 2^l,  σ: X → X^(N/s + 1)

(E, O: the even and odd halves packed at level ``l + 1``; σ fixes ``X^(2s)`` and negates
``X^s``, so the sum keeps what sits on multiples of ``2s`` twice and cancels the rest). The
result is ``n_w·Σ_j X^j·(outputs of a_j)``: SEAL's plaintext modulus is ``t = 2^(b + log2
n_w)`` so that the accumulators read back exactly mod ``2^b`` after the factor ``n_w``. The
inputs then hold up to ``n_w`` values per row (up to N) and the reply is dense: all of
``c1`` at ``k1 = b + 10`` bits and ``c0`` at its outputs at ``k0 = b + 3`` bits
(~2b + 13 bits per output). Each merge is a key switch (SEAL's ``apply_galois``, ~2 ms at
N = 4096 here), so the cost model weighs bytes against it per width.

Parameters for packing: ``N = 4096`` and SEAL primes of 32, 32 and 45 bits, 109 in all: the
most the same table allows at N = 4096 (``log q ≤ 109``; SEAL refuses more). Ciphertexts
live mod the two 32-bit primes (q = 64 bits); the 45-bit one is SEAL's special prime for
key switching. The Galois keys (for ``g = N/2^l + 1``, ``l < log2 n_w``; ~128 KB each,
seeded) are the client's only evaluation keys: uploaded once, cached by the miner's key
cache, checked against these parameters when they arrive; every reply names the keys it
was packed with, so a client never decrypts a reply packed with another client's keys.

**Noise bound of the packing** (``PackedParams.noise_bound``, failure ≤ 2^−64 per
coefficient): SEAL's fresh noise is a centred binomial (sub-Gaussian, variance proxy 21),
so one output's noise after the products is ``E ≤ √21·‖w‖₂·9.5 + ‖w‖₁/2`` over its
``n_in·m_w`` weights (the second term: BFV's rounding of ``q/t·m``). A merge's key switch
adds ``K ≤ √21·2^32·√(2N)·9.5/p + 2^8.25 + 1`` (decomposition per 32-bit prime, division by
the special prime ``p``, its rounding against the ternary secret). Packing multiplies the
products' noise by ``n_w`` (the merged ciphertexts land on disjoint offsets, so their noises
never add) and a level-``l`` key switch's by at most ``2^l``: the dense noise is below
``n_w·(E + K)``. Decryption of the switched reply is exact while the c1 rounding against
``s`` (``2^8.25``), c0's rounding (``2^(k1−k0−1)``), ½ and ``noise·2^k1/q`` stay below
``2^(k1−b−1)``; ``PackedParams`` refuses a shape whose bound does not fit, and the tests
measure both (``dense_noise_bits``, ``noise_bits``) at random and extreme inputs.

**Sparse input** (``sparse=True``, packing only). At one row an input ciphertext still
carries all N coefficients of c0 (64 bits each, ~33 KB) for GPT-2's 768 inputs. The client
instead encrypts itself (``PackedClient._encrypt_sparse``): c1 is the SHAKE-256 expansion of
a fresh seed, and c0 is computed and sent only where inputs sit, each value with its low
``d = input_drop_bits`` dropped (the miner puts back the midpoint; the noise bound takes
``2^(d−1)·‖w‖₁`` for it, worst case). The miner rebuilds a SEAL ciphertext with zeros in
c0's other coefficients, so the phase there is garbage. A product can then hold only one
output cleanly (an output's window of inputs must avoid every unsent coefficient, so its
weights fill the window): ``m_w = 1``, output ``k`` of row ``i`` at ``i·n_w`` with
``n_w = N/r_w``, and the garbage stays off the multiples of n_w that the packing keeps. The
weights are scaled by ``r_w`` so that every cut's dense message is ``N·acc`` under one
``t = 2^(b + log2 N)``. Bytes up fall to ``rows·n_in·(64 − d)`` bits plus a seed per row
group (~7 B per value); the price is one key switch per output instead of one per ``m_w``.
Each sent value is a coefficient of an RLWE sample, rounded, so it reveals no more than the
sample. Parsing checks the exact size and every value against q before SEAL sees it.

What integration needs (done by ``cerberus.fhe.backends``, ``cerberus.fhe.pricing`` and the
runtime): the manifest's ``packed`` entry names the parameter set; ``UploadKeys`` carries the
Galois keys of packing programs (capped by ``PackedParams.key_bytes``); the miner holds the
weights in NTT form (``r_w·8`` bytes per weight at N=2048, ``r_w·16`` at N=4096). The
simulator is unchanged: both paths are bit-exact with ``x @ W``.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import tenseal.sealapi as seal

from cerberus.errors import CerberusError, CompileError

POLY_DEGREE = 2048
# HE Security Standard 2018 (ternary secret, classical 128 bits): N=2048 → log q ≤ 54;
# SEAL's BFVDefault(2048) is exactly one 54-bit prime, and SEALContext enforces the bound.
SECURITY = seal.SEC_LEVEL_TYPE.TC128
# k − b: 2^9 of room for the output rounding (2^8, Hoeffding) plus the BFV noise (< 2^8).
OUTPUT_MARGIN_BITS = 10
# The BFV noise after the products (~2^18 at the largest shapes) must stay far below q/(2t).
MIN_NOISE_BITS = 20
# Rows per input ciphertext the miner serves (r_w): 1 for a generated token, 4 for a prefill
# or a sentence. Each r_w needs its own encoding of the weights, r_w·8 bytes per weight in
# NTT form, so the set is small and fixed: all-MiniLM-L6-v2's 16-token sentence moves 62 MB
# with (1, 4) for 425 MB of the miner's memory, 45 MB with (1, 8) for 780 MB, 32 MB with
# (1, 16) for 1.4 GB (the partition's byte formula below).
ROW_PACKS = (1, 4)
# A SEAL ciphertext saved compressed: c0's N words (54 bits, not compressible) plus a seed
# and a header; the bound a miner checks before it parses one.
CT_SLACK = 512
IN_MAGIC, OUT_MAGIC, VERSION = b"CPKX", b"CPKY", 1
# The packing parameter set (``pack=True``): N = 4096 with SEAL primes of 32, 32 and 45 bits,
# 109 bits in all, the most the HE Security Standard (2018, §5.4, ternary secret, classical
# 128 bits) allows at N = 4096 (SEAL_HE_STD_PARMS_128_TC, ``CoeffModulus.MaxBitCount(4096)``;
# SEALContext refuses more). The ciphertexts live mod q = the two 32-bit primes (64 bits);
# the 45-bit prime is SEAL's special prime, used only inside key switching.
PACK_POLY_DEGREE = 4096
PACK_PRIME_BITS = (32, 32, 45)
# A packed reply's c1 is rounded to k1 = b + PACK_C1_MARGIN bits, its c0 to k0 = b + PACK_C0_MARGIN
# (see the module docstring for the budget).
PACK_C1_MARGIN, PACK_C0_MARGIN = 10, 3
PACK_VERSION = 2
# Sparse input (``sparse=True``): the client sends only the c0 coefficients that hold its
# inputs, each with its low ``input_drop_bits`` dropped, and a seed the miner expands into c1.
SPARSE_MAGIC, SEED_BYTES = b"CPKS", 32
# SEAL's encryption noise is a centred binomial, a sum of 21 terms in [−1, 1]: sub-Gaussian
# with variance proxy 21 (Hoeffding's lemma). Tails are taken at 2^−64 per coefficient:
# a sub-Gaussian sum passes σ·TAIL with probability ≤ 2^−64.
NOISE_PROXY = 21.0
TAIL = math.sqrt(2 * math.log(2.0 ** 65))
# Packed reply: magic, version, fingerprint, digest of the Galois keys used, rows, n_out, r_w,
# n_w, m_w, packed ciphertext count; then every c1 (N coefficients, k1 bits each), then every
# c0's output-bearing coefficients (k0 bits each), bit-packed.
_PACK_OUT_HEADER = struct.Struct("<4sB8s8s6I")
# Input: magic, version, fingerprint, rows, n_in, n_out, r_w, n_w, m_w, ciphertext count; then
# per ciphertext its length (u32) and SEAL's seeded, compressed serialization.
_IN_HEADER = struct.Struct("<4sB8s7I")
# Output: magic, version, fingerprint, rows, n_out, r_w, n_w, m_w, ciphertext count; then per
# ciphertext c1's N coefficients and c0's r_w·m_w output-bearing ones, k bits each, packed.
_OUT_HEADER = struct.Struct("<4sB8s6I")
# SEAL 4.x's serialization header: magic, header size, version, compression (0: none), size
_SEAL_HEADER = struct.Struct("<HBBBBHQ")


@dataclass(frozen=True)
class Partition:
    """How a ``[rows, n_in] @ [n_in, n_out]`` product is cut: ``r_w`` rows × ``n_w`` inputs per
    input ciphertext, ``n_w`` inputs × ``m_w`` outputs per weight plaintext."""

    r_w: int
    n_w: int
    m_w: int

    def useful(self) -> np.ndarray:
        """Coefficients of an output polynomial that hold outputs, row-major ``[r_w·m_w]``."""
        i, k = np.meshgrid(np.arange(self.r_w), np.arange(self.m_w), indexing="ij")
        return (i * self.n_w * self.m_w + k * self.n_w + self.n_w - 1).ravel()


@dataclass(frozen=True)
class PackedParams:
    """The parameters of one linear's packed path, derived from its shape and bit widths."""

    n_in: int
    n_out: int
    bits: int = 8  # input x: signed, in [−2^(bits−1), 2^(bits−1) − 1]
    weight_bits: int = 8
    poly_degree: int = POLY_DEGREE
    row_packs: tuple[int, ...] = ROW_PACKS  # the r_w the miner has weights encoded for
    # False: N = 2048, one prime, no keys, sparse replies; True: N = 4096, replies packed
    # dense with the client's Galois keys (the parameter set above)
    pack: bool = False
    # packing's n_w, a power of two (0: the input's width rounded up, at most N); fixed per
    # linear because SEAL's plaintext modulus depends on it
    width: int = 0
    # packing only: the client sends just the c0 coefficients that hold its inputs (see
    # ``PackedClient._encrypt_sparse``); one output per product, so n_w = N/r_w, and the
    # reply packs up to N of them dense (Galois keys for every level, t·N)
    sparse: bool = False
    coeff_modulus: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.n_in < 1 or self.n_out < 1:
            raise CompileError(f"packed linear: shape {self.n_in}×{self.n_out} is empty")
        object.__setattr__(self, "row_packs", tuple(sorted({1, *map(int, self.row_packs)})))
        if self.sparse and not self.pack:
            raise CompileError("packed linear: sparse input is a packing parameter (pack=True)")
        if self.pack:
            object.__setattr__(self, "poly_degree", PACK_POLY_DEGREE)
            width = self.width or min(1 << (self.n_in - 1).bit_length(), self.poly_degree)
            if self.sparse:
                if self.width not in (0, self.poly_degree) or self.n_in > self.poly_degree:
                    raise CompileError(
                        f"packed linear {self.n_in}×{self.n_out}: sparse input needs "
                        f"n_in ≤ N = {self.poly_degree} and packs at width N")
                if any(r & (r - 1) for r in self.row_packs):
                    raise CompileError(f"packed linear: sparse input's row packs must be "
                                       f"powers of two, got {self.row_packs}")
                width = self.poly_degree
            if width & (width - 1) or not 1 <= width <= self.poly_degree:
                raise CompileError(f"packed linear: width {width} is not a power of two in "
                                   f"1..{self.poly_degree}")
            object.__setattr__(self, "width", width)
        elif self.width:
            raise CompileError("packed linear: a width is a packing parameter (pack=True)")
        if not all(1 <= r <= self.poly_degree for r in self.row_packs):
            raise CompileError(f"packed linear: row packs {self.row_packs} outside "
                               f"1..{self.poly_degree}")
        primes = (seal.CoeffModulus.Create(self.poly_degree, list(PACK_PRIME_BITS)) if self.pack
                  else seal.CoeffModulus.BFVDefault(self.poly_degree, SECURITY))
        object.__setattr__(self, "coeff_modulus", tuple(p.value() for p in primes))
        if not self.pack and len(self.coeff_modulus) != 1:
            raise CompileError("packed linear: the client decrypts with one prime; "
                               f"N={self.poly_degree} has {len(self.coeff_modulus)}")
        if self.q_bits - self.plain_bits < MIN_NOISE_BITS or (
                self.pack and self.noise_margin_bits() <= 0) or (
                self.sparse and self.input_drop_bits < 1):
            raise CompileError(
                f"packed linear {self.n_in}×{self.n_out}: its accumulator needs a "
                f"{self.plain_bits}-bit plaintext modulus, too wide for a {self.q_bits}-bit q at "
                f"N={self.poly_degree} (split the input dimension)")

    @property
    def data_primes(self) -> tuple[int, ...]:
        """The primes ciphertexts live under (packing: all but SEAL's special prime)."""
        return self.coeff_modulus[:-1] if self.pack else self.coeff_modulus

    @property
    def q(self) -> int:
        return math.prod(self.data_primes)

    @property
    def pack_width(self) -> int:
        """n_w when packing: a power of two, since the packing gathers the outputs that sit
        on its multiples."""
        if not self.pack:
            raise CerberusError("packed linear: pack_width of an unpacked parameter set")
        return self.width

    @property
    def plain_bits(self) -> int:
        """log2 of SEAL's plaintext modulus: the accumulator's bits, plus log2(n_w) when
        packing (the packing multiplies every message by n_w)."""
        if not self.pack:
            return self.t_bits
        return self.t_bits + self.pack_width.bit_length() - 1

    def rounding_tail(self) -> float:
        """|Σ ε_i·s_i| for roundings |ε_i| ≤ 1/2 against the ternary secret, at 2^−64
        (Hoeffding: N terms of range 1)."""
        return math.sqrt(self.poly_degree / 2 * math.log(2.0 ** 65))

    def noise_bound(self) -> float:
        """A bound (failure ≤ 2^−64 per coefficient) of a dense ciphertext's BFV noise,
        ``n_w·(E + K)``: packing multiplies the products' noise E by n_w (the merges put
        the ciphertexts on disjoint offsets) and each level's key switch K by at most
        2^level. E ≤ √21·‖w‖₂·TAIL + ‖w‖₁/2 (fresh noise and BFV's rounding of q/t·m
        against one output's weights: n_in·m_w of them); K ≤ √21·2^32·√(2N)·TAIL/p + the
        switch's rounding (SEAL decomposes mod each 32-bit prime, then divides by the
        special prime p).

        Sparse input: the weights are scaled by r_w (so every dense message is N·acc), which
        n_w = N/r_w makes N·(E + K) again; a dropped input bit adds at most
        2^(d−1)·‖w‖₁ ≤ 2^(d−1)·2^(w−1)·n_in to E (worst case, no probability)."""
        return self._noise_bound(self.input_drop_bits if self.sparse else 0)

    def _noise_bound(self, drop: int) -> float:
        if not self.pack:
            raise CerberusError("packed linear: noise_bound is the packing's")
        terms = self.n_in * min(self.n_out, self.poly_degree // self.width)
        top = 2.0 ** (self.weight_bits - 1)
        e = math.sqrt(NOISE_PROXY) * top * math.sqrt(terms) * TAIL + top * terms / 2
        if drop:
            e += 2.0 ** (drop - 1) * top * self.n_in
        digits = math.sqrt(NOISE_PROXY) * 2.0 ** 32 * math.sqrt(2 * self.poly_degree) * TAIL
        k = digits / self.coeff_modulus[-1] + self.rounding_tail() + 1
        return self.width * (e + k)

    def noise_margin_bits(self) -> float:
        """log2(room / use) of a packed reply's decryption: the client's phase is off a
        multiple of 2^(k1−b) by at most its c1's rounding against s, its c0's rounding
        (2^(k1−k0−1)), and the noise switched down (noise·2^k1/q); exact while that stays
        under half a step, 2^(k1−b−1). Positive: exact (failure ≤ 2^−64 per output)."""
        return self._margin_bits(self.input_drop_bits if self.sparse else 0)

    def _margin_bits(self, drop: int) -> float:
        k1, k0 = self.out_bits, self.c0_bits
        used = (self.rounding_tail() + 2.0 ** (k1 - k0 - 1) + 0.5
                + self._noise_bound(drop) * 2.0 ** k1 / self.q)
        return (k1 - self.t_bits - 1) - math.log2(used)

    @property
    def input_drop_bits(self) -> int:
        """Sparse input: the low bits of each sent c0 coefficient the client drops (the miner
        puts back the midpoint), as many as the noise bound still leaves exact; 0 when
        even one does not fit."""
        if not self.sparse:
            return 0
        return next((d for d in range(24, 0, -1) if self._margin_bits(d) > 0), 0)

    @property
    def input_value_bits(self) -> int:
        """Bits per sent input coefficient (sparse input): q's, less the dropped ones."""
        return self.q_bits - self.input_drop_bits

    def galois_elements(self) -> list[int]:
        """The automorphisms X → X^g the packing applies: g = N/2^l + 1, l < log2(n_w)."""
        if not self.pack:
            return []
        return [self.poly_degree // (1 << level) + 1
                for level in range(self.pack_width.bit_length() - 1)]

    def key_bytes(self) -> int:
        """An upper bound of the client's serialized Galois keys (what a miner accepts): per
        element one key-switching key per data prime, 2 polynomials over every prime."""
        n, primes = self.poly_degree, len(self.coeff_modulus)
        per = len(self.data_primes) * (2 * primes * n * 8 + CT_SLACK)
        return len(self.galois_elements()) * per + (CT_SLACK if self.pack else 0)

    @property
    def q_bits(self) -> int:
        return self.q.bit_length()

    @property
    def max_acc(self) -> int:
        """The largest |x @ W| any input in range can produce with any weight in range."""
        return 2 ** (self.bits - 1) * 2 ** (self.weight_bits - 1) * self.n_in

    @property
    def t_bits(self) -> int:
        """``t = 2^b > 2·max|acc| + 1``: every accumulator is its own residue, centred."""
        return math.ceil(math.log2(2 * self.max_acc + 2))

    @property
    def t(self) -> int:
        return 1 << self.plain_bits

    @property
    def out_bits(self) -> int:
        """Bits per output coefficient after the switch down from q (packing: c1's)."""
        return self.t_bits + (PACK_C1_MARGIN if self.pack else OUTPUT_MARGIN_BITS)

    @property
    def c0_bits(self) -> int:
        """Bits per output-bearing coefficient of c0 (packing; unpacked: ``out_bits``)."""
        return self.t_bits + PACK_C0_MARGIN if self.pack else self.out_bits

    @property
    def noise_limit_bits(self) -> float:
        """Decryption is exact while ``noise_bits`` stays below this."""
        return float(self.out_bits - self.t_bits - 1)

    def fingerprint(self) -> bytes:
        """Names the cryptographic parameters; the shape is checked on its own."""
        text = f"bfv-coeff/N={self.poly_degree}/q={self.q}/t={self.t}/k={self.out_bits}"
        if self.pack:
            text += f"/pack/primes={self.coeff_modulus}/n_w={self.pack_width}/k0={self.c0_bits}"
        if self.sparse:
            text += f"/sparse/d={self.input_drop_bits}"
        return hashlib.sha256(text.encode()).digest()[:8]

    def partition(self, rows: int) -> Partition:
        if self.sparse:  # r_w rows at stride N/r_w ≥ n_in, one output per product
            n = self.poly_degree
            r_w = max(r for r in self.row_packs if r <= max(rows, 1) and n // r >= self.n_in
                      or r == 1)
            return Partition(r_w, n // r_w, 1)
        if self.pack:  # n_w is fixed (one t per linear); as many rows per ciphertext as fit
            n_w = self.pack_width
            r_w = max(r for r in self.row_packs if r <= max(rows, 1)
                      and r * n_w <= self.poly_degree or r == 1)
            return Partition(r_w, n_w, min(self.n_out, self.poly_degree // (r_w * n_w)))
        return _best_partition(rows, self.n_in, self.n_out, self.poly_degree, self.q_bits,
                               self.out_bits, self.row_packs)

    def packed_count(self, rows: int) -> int:
        """Dense ciphertexts in a packed reply: n_w output ciphertexts go into each."""
        return -(-self.counts(rows)[1] // self.partition(rows).n_w)

    def counts(self, rows: int) -> tuple[int, int]:
        """(input ciphertexts, output ciphertexts) of a call on ``rows`` rows."""
        part = self.partition(rows)
        groups = -(-rows // part.r_w)
        return groups * -(-self.n_in // part.n_w), groups * -(-self.n_out // part.m_w)

    def input_bytes(self, rows: int) -> int:
        """An upper bound of the client's message for ``rows`` rows (what a miner accepts);
        sparse input: its exact size."""
        if self.sparse:
            groups = self.counts(rows)[0]
            return (_IN_HEADER.size + groups * SEED_BYTES
                    + math.ceil(rows * self.n_in * self.input_value_bits / 8))
        per = 4 + 8 * self.poly_degree * len(self.data_primes) + CT_SLACK
        return _IN_HEADER.size + self.counts(rows)[0] * per

    def output_bytes(self, rows: int) -> int:
        """The exact size of the miner's reply for ``rows`` rows."""
        part, count = self.partition(rows), self.counts(rows)[1]
        if self.pack:
            return (_PACK_OUT_HEADER.size
                    + math.ceil(self.packed_count(rows) * self.poly_degree * self.out_bits / 8)
                    + math.ceil(count * part.r_w * part.m_w * self.c0_bits / 8))
        bits = count * (self.poly_degree + part.r_w * part.m_w) * self.out_bits
        return _OUT_HEADER.size + math.ceil(bits / 8)

    def to_dict(self) -> dict[str, object]:
        """What the manifest records (the client rebuilds the parameters from it)."""
        d = {"n_in": self.n_in, "n_out": self.n_out, "bits": self.bits,
             "weight_bits": self.weight_bits, "poly_degree": self.poly_degree,
             "row_packs": list(self.row_packs), "q_bits": self.q_bits,
             "t_bits": self.t_bits, "out_bits": self.out_bits}
        if self.pack:  # absent in artefacts from before packing: they load unpacked
            d.update(pack=True, width=self.width, c0_bits=self.c0_bits,
                     galois_elements=self.galois_elements(), key_bytes=self.key_bytes())
        if self.sparse:
            d.update(sparse=True, input_drop_bits=self.input_drop_bits)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PackedParams:
        return cls(int(d["n_in"]), int(d["n_out"]), int(d["bits"]), int(d["weight_bits"]),
                   int(d["poly_degree"]), tuple(int(r) for r in d["row_packs"]),
                   bool(d.get("pack", False)), int(d.get("width", 0)),
                   bool(d.get("sparse", False)))


@lru_cache(maxsize=256)
def _best_partition(rows: int, n_in: int, n_out: int, n: int, q_bits: int,
                    k: int, row_packs: tuple[int, ...] = (1,)) -> Partition:
    """The cut with the fewest bytes both ways (fewest products on a tie), with ``r_w`` one
    of ``row_packs``.

    Input ciphertexts cost ``N·log q`` bits whatever they hold, outputs ``(N + r_w·m_w)·k``:
    many rows per ciphertext favour few outputs per weight block and vice versa. For a
    given ``r_w`` the best ``(n_w, m_w)`` does not depend on ``rows`` (every term scales
    with the number of row groups), so a miner needs one weight encoding per ``r_w``.
    """
    best: tuple[tuple[int, int], Partition] | None = None
    for r_w in (r for r in row_packs if r <= min(rows, n)):
        groups = -(-rows // r_w)
        for n_w in range(1, min(n_in, n // r_w) + 1):
            m_w = min(n_out, n // (r_w * n_w))
            blocks_in, blocks_out = -(-n_in // n_w), -(-n_out // m_w)
            cost = (groups * blocks_in * n * q_bits + groups * blocks_out * (n + r_w * m_w) * k,
                    groups * blocks_in * blocks_out)
            if best is None or cost < best[0]:
                best = (cost, Partition(r_w, n_w, m_w))
    assert best is not None
    return best[1]


@lru_cache(maxsize=16)
def _context(poly_degree: int, t: int, pack: bool = False) -> seal.SEALContext:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(poly_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(poly_degree, list(PACK_PRIME_BITS)) if pack
                            else seal.CoeffModulus.BFVDefault(poly_degree, SECURITY))
    parms.set_plain_modulus(seal.Modulus(t))
    context = seal.SEALContext(parms, True, SECURITY)
    if not context.parameters_set():
        raise CompileError(f"SEAL refused the parameters: {context.parameters_error_message()}")
    return context


def _plaintext(coeffs: np.ndarray) -> seal.Plaintext:
    """A SEAL plaintext from coefficients already reduced mod t (its hex-string form is the
    one constructor the Python bindings expose)."""
    nz = np.flatnonzero(coeffs)[::-1]
    if nz.size == 0:
        return seal.Plaintext("0")
    return seal.Plaintext(" + ".join(f"{int(coeffs[i]):X}x^{i}" if i else f"{int(coeffs[i]):X}"
                                     for i in nz))


class _Scratch:
    """SEAL's bindings serialize to file paths only: a private in-memory folder for that, one
    file name per call so concurrent calls (a miner's gRPC threads) never share one."""

    def __init__(self) -> None:
        shm = Path("/dev/shm")
        self._dir = tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None)

    def _path(self) -> Path:
        return Path(self._dir.name) / uuid.uuid4().hex

    def save(self, obj: object) -> bytes:
        path = self._path()
        try:
            obj.save(str(path))  # type: ignore[attr-defined]
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    def load_ciphertext(self, context: seal.SEALContext, data: bytes) -> seal.Ciphertext:
        path = self._path()
        path.write_bytes(data)
        ct = seal.Ciphertext()
        try:
            ct.load(context, str(path))
        except Exception as e:  # SEAL: bad header, wrong parameters, truncated, …
            raise CerberusError(f"packed linear: not a ciphertext of these parameters ({e})") \
                from None
        finally:
            path.unlink(missing_ok=True)
        return ct

    def load_galois(self, context: seal.SEALContext, data: bytes) -> seal.GaloisKeys:
        path = self._path()
        path.write_bytes(data)
        keys = seal.GaloisKeys()
        try:
            keys.load(context, str(path))
        except Exception as e:  # SEAL: other parameters (another t, N or primes), truncated
            raise CerberusError(f"packed linear: not Galois keys of these parameters ({e})") \
                from None
        finally:
            path.unlink(missing_ok=True)
        return keys


@dataclass(frozen=True)
class PackedKeys:
    """A client's Galois keys for one packed program, loaded; ``digest`` names the bytes
    they came from, and goes back in every reply so a client can tell its own keys were used."""

    galois: seal.GaloisKeys
    digest: bytes


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    """The miner's threads for one call's products and packing halves (SEAL releases the
    GIL: two threads run ~1.6× faster on two cores)."""
    return ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                              thread_name_prefix="packed")


@lru_cache(maxsize=32)
def _monomial(power: int) -> seal.Plaintext:
    """X^power as a plaintext: SEAL multiplies by a one-term plaintext without NTTs."""
    return seal.Plaintext(f"1x^{power}")


def _bitrev(c: int, bits: int) -> int:
    return int(format(c, f"0{bits}b")[::-1], 2) if bits else 0


def _words(ct: seal.Ciphertext) -> np.ndarray:
    """A ciphertext's RNS words, ``[polys, primes, N]`` (not NTT form)."""
    flat = ct.dyn_array()
    shape = (ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree())
    return np.array([flat.at(i) for i in range(math.prod(shape))],
                    dtype=np.uint64).reshape(shape)


def _crt(r1: np.ndarray, r2: np.ndarray, primes: tuple[int, ...]) -> np.ndarray:
    """``c mod q`` in ``[0, q)`` from its residues mod two primes (q = their product < 2^64),
    exact in uint64 (every intermediate stays below q)."""
    q1, q2 = (np.uint64(p) for p in primes)
    inv = np.uint64(pow(int(q1), -1, int(q2)))
    u = ((r2 + q2 - r1 % q2) % q2) * inv % q2
    return r1 + q1 * u


def _switch_down(words: np.ndarray, primes: tuple[int, int], k: int) -> np.ndarray:
    """``round(c·2^k/q) mod 2^k`` for ``c`` given by its residues mod two primes ``[..., 2, N]``
    (q = their product < 2^64). CRT in uint64 is exact; the float64 scaling adds < 2^(k−53)."""
    c = _crt(words[..., 0, :], words[..., 1, :], primes)
    scaled = np.rint(c.astype(np.float64) * (2.0 ** k / (float(primes[0]) * float(primes[1]))))
    return scaled.astype(np.uint64) % np.uint64(1 << k)


def _expand_mask(seed: bytes, primes: tuple[int, ...], n: int) -> np.ndarray:
    """A sparse input's c1, ``[primes, N]``, uniform mod each prime: SHAKE-256 of the seed
    and the prime, 32-bit words below the prime kept in order (rejection sampling). Client
    and miner derive the same polynomial, so it never crosses the wire."""
    out = np.empty((len(primes), n), dtype=np.uint64)
    for i, prime in enumerate(primes):
        stream = hashlib.shake_256(seed + struct.pack("<Q", prime)).digest(8 * n)
        words = np.frombuffer(stream, dtype="<u4").astype(np.uint64)
        kept = words[words < np.uint64(prime)]
        if kept.size < n:  # 2N draws for N words: ~2^−60000 for an honest seed
            raise CerberusError("packed linear: a seed that expands to too few mask words")
        out[i] = kept[:n]
    return out


def _centred_binomial(count: int) -> np.ndarray:
    """SEAL's encryption noise, from the OS's randomness: per coefficient the difference of
    two sums of 21 random bits (variance 10.5, sub-Gaussian with variance proxy 21)."""
    bits = np.unpackbits(np.frombuffer(os.urandom(count * 6), dtype=np.uint8)).reshape(count, 48)
    return bits[:, :21].sum(axis=1, dtype=np.int64) - bits[:, 21:42].sum(axis=1, dtype=np.int64)


def _times_secret(a: np.ndarray, s: np.ndarray, prime: int) -> np.ndarray:
    """``a·s mod (X^N + 1, prime)`` for ``a`` below a 32-bit prime and ternary ``s``: the
    integer product is below 2^32·N < 2^47 in size, exact mod 2^48, then reduced."""
    prod = negacyclic_mod(a, s, 48).astype(np.int64)
    prod = np.where(prod >= 1 << 47, prod - (1 << 48), prod)
    return (prod % prime).astype(np.uint64)


def _ciphertext_bytes(words: np.ndarray, parms_id: list[int]) -> bytes:
    """SEAL's uncompressed serialization of a size-2 BFV ciphertext with these RNS words
    ``[2, primes, N]``: its header, then Ciphertext's members (parms_id, NTT flag, size, N,
    prime count, scale, correction factor) and the word array with its own header. SEAL's
    ``load`` then checks every word against its prime."""
    data = np.ascontiguousarray(words, dtype="<u8").tobytes()
    array = struct.pack("<Q", words.size) + data
    array = _SEAL_HEADER.pack(0xA15E, 16, 4, 3, 0, 0, _SEAL_HEADER.size + len(array)) + array
    body = (struct.pack("<4Q", *parms_id) + b"\x00"
            + struct.pack("<QQQdQ", words.shape[0], words.shape[2], words.shape[1], 1.0, 1)
            + array)
    return _SEAL_HEADER.pack(0xA15E, 16, 4, 3, 0, 0, _SEAL_HEADER.size + len(body)) + body


def negacyclic_mod(a: np.ndarray, s: np.ndarray, k: int) -> np.ndarray:
    """``a·s mod (X^N + 1, 2^k)`` for rows ``a [..., N]`` of ``k``-bit words (k ≤ 60) and a
    ternary ``s``, exact: 12-bit limbs through a twisted float FFT (every product sum is
    below 2^12·N ≤ 2^25, far inside float64's 2^53)."""
    n = s.size
    twist = np.exp(1j * np.pi * np.arange(n) / n)
    fs = np.fft.fft(s * twist)
    out = np.zeros(a.shape, dtype=np.uint64)
    for shift in range(0, k, 12):
        limb = ((a >> np.uint64(shift)) & np.uint64(0xFFF)).astype(np.float64)
        prod = np.fft.ifft(np.fft.fft(limb * twist, axis=-1) * fs, axis=-1) * np.conj(twist)
        v = np.rint(prod.real).astype(np.int64) % (1 << k)
        out = (out + (v.astype(np.uint64) << np.uint64(shift))) % np.uint64(1 << k)
    return out


def _pack_bits(values: np.ndarray, k: int) -> bytes:
    shifts = np.arange(k - 1, -1, -1, dtype=np.uint64)
    bits = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.ravel()).tobytes()


def _unpack_bits(data: bytes, count: int, k: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count * k)
    shifts = np.arange(k - 1, -1, -1, dtype=np.uint64)
    return (bits.reshape(count, k).astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)


def _check_range(a: np.ndarray, bits: int, what: str) -> np.ndarray:
    if not np.issubdtype(np.asarray(a).dtype, np.integer):
        raise CerberusError(f"packed linear: {what} must be integers, got {np.asarray(a).dtype}")
    a = np.asarray(a, dtype=np.int64)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if a.size and (a.min() < lo or a.max() > hi):
        raise CerberusError(f"packed linear: {what} outside the declared {bits}-bit range "
                            f"[{lo}, {hi}] (found {a.min()}..{a.max()})")
    return a


def _secret_coefficients(sk: seal.SecretKey, q: int, n: int) -> np.ndarray:
    """The secret key's coefficients in {−1, 0, 1}. SEAL keeps it in NTT form: value ``i`` is
    ``s(ψ^(2·bitrev(i)+1))`` for ψ the smallest primitive 2N-th root of unity mod q."""
    plain = sk.data()
    values = [plain.data(i) for i in range(n)]
    gen = next(r for c in range(2, q) if pow(r := pow(c, (q - 1) // (2 * n), q), n, q) == q - 1)
    psi, x, sq = gen, gen, gen * gen % q
    for _ in range(n):
        x = x * sq % q
        psi = min(psi, x)
    bits = n.bit_length() - 1
    natural = [0] * n  # natural[k] = s(ψ^(2k+1)) = Σ_j (s_j ψ^j) ω^(jk), ω = ψ²
    for i, v in enumerate(values):
        natural[int(format(i, f"0{bits}b")[::-1], 2)] = v
    u = _ntt(natural, pow(psi * psi % q, -1, q), q)
    n_inv, psi_inv, scale, out = pow(n, -1, q), pow(psi, -1, q), 1, []
    for j in range(n):
        out.append(u[j] * n_inv % q * scale % q)
        scale = scale * psi_inv % q
    s = np.array([v if v <= 1 else v - q for v in out], dtype=np.int64)
    if np.abs(s).max() > 1:  # a SEAL whose NTT convention changed: refuse, never guess
        raise CerberusError("packed linear: could not read SEAL's secret key coefficients")
    return s


def _ntt(a: list[int], w: int, q: int) -> list[int]:
    """Cyclic number-theoretic transform (recursive radix 2), used once per key."""
    n = len(a)
    if n == 1:
        return a
    w2 = w * w % q
    even, odd, out, x, h = _ntt(a[0::2], w2, q), _ntt(a[1::2], w2, q), [0] * n, 1, n // 2
    for k in range(h):
        t = x * odd[k] % q
        out[k], out[k + h] = (even[k] + t) % q, (even[k] - t) % q
        x = x * w % q
    return out


class PackedClient:
    """The client: a secret key, encryption of integer rows, decryption of the miner's reply."""

    def __init__(self, params: PackedParams) -> None:
        self.params = params
        self.context = _context(params.poly_degree, params.t, params.pack)
        self._scratch = _Scratch()
        self._secret: np.ndarray | None = None
        self._encryptor: seal.Encryptor | None = None
        self._decryptor: seal.Decryptor | None = None
        self._galois = b""

    def keygen(self) -> None:
        """A fresh secret key (SEAL draws it from the OS's randomness), and when packing the
        Galois keys for exactly the automorphisms the packing applies."""
        generator = seal.KeyGenerator(self.context)
        sk = generator.secret_key()
        self._encryptor = seal.Encryptor(self.context, sk)
        self._decryptor = seal.Decryptor(self.context, sk)
        self._secret = _secret_coefficients(sk, self.params.coeff_modulus[0],
                                            self.params.poly_degree)
        elements = self.params.galois_elements()
        # seeded: half of each key is a PRNG seed (SEAL's Serializable form)
        self._galois = self._scratch.save(generator.create_galois_keys(elements)) \
            if elements else b""

    def evaluation_keys(self) -> bytes:
        """The Galois keys (packing), uploaded once per client; empty without packing, where
        coefficient encoding never rotates or relinearizes."""
        return self._galois

    def encrypt_rows(self, x: np.ndarray) -> bytes:
        """``x [rows, n_in]`` (signed, ``bits`` wide) → the bytes the miner receives."""
        if self._encryptor is None:
            raise CerberusError("packed linear: keygen() before encrypting")
        p = self.params
        x = _check_range(x, p.bits, "input")
        if x.ndim != 2 or x.shape[1] != p.n_in:
            raise CerberusError(f"packed linear: input of shape {x.shape}, expected [rows, "
                                f"{p.n_in}]")
        if p.sparse:
            return self._encrypt_sparse(x)
        rows = x.shape[0]
        part = p.partition(rows)
        groups, blocks = -(-rows // part.r_w), -(-p.n_in // part.n_w)
        padded = np.zeros((groups * part.r_w, blocks * part.n_w), dtype=np.int64)
        padded[:rows, :p.n_in] = x
        stride = part.n_w * part.m_w
        chunks = []
        for g in range(groups):
            for b in range(blocks):
                block = padded[g * part.r_w:(g + 1) * part.r_w, b * part.n_w:(b + 1) * part.n_w]
                coeffs = np.zeros(p.poly_degree, dtype=np.int64)
                for i in range(part.r_w):
                    coeffs[i * stride:i * stride + part.n_w] = block[i]
                ct = self._encryptor.encrypt_symmetric(_plaintext(coeffs % p.t))
                data = self._scratch.save(ct)
                chunks.append(struct.pack("<I", len(data)) + data)
        header = _IN_HEADER.pack(IN_MAGIC, VERSION, p.fingerprint(), rows, p.n_in, p.n_out,
                                 part.r_w, part.n_w, part.m_w, len(chunks))
        return header + b"".join(chunks)

    def _encrypt_sparse(self, x: np.ndarray) -> bytes:
        """Sparse input: per row group a fresh seed (c1 = its expansion) and, for the
        coefficients holding inputs only, ``c0 = round(q·m/t) + e − c1·s`` mod q with its low
        ``d`` bits dropped (``m``: row ``i`` at ``i·n_w``). The other coefficients of c0 are
        never computed: the miner's zeros there leave garbage in the phase, which no output
        reads (one output per product, at the row's start, from the row's own inputs), and
        which the packing's traces only move to coefficients no client reads. Each sent
        value is a coefficient of an RLWE sample, rounded: no more than the full sample
        reveals."""
        assert self._secret is not None
        p, rows = self.params, x.shape[0]
        part, n, primes = p.partition(rows), p.poly_degree, p.data_primes
        plain, drop = p.plain_bits, p.input_drop_bits
        q_hi, q_lo = p.q >> plain, p.q & ((1 << plain) - 1)
        seeds, values = [], []
        for g in range(-(-rows // part.r_w)):
            block = x[g * part.r_w:(g + 1) * part.r_w]
            pos = (np.arange(block.shape[0])[:, None] * part.n_w
                   + np.arange(p.n_in)[None, :]).ravel()
            m = block.ravel()
            scaled = m * q_hi + ((m * q_lo + (1 << (plain - 1))) >> plain)  # round(q·m/t)
            noise = _centred_binomial(pos.size)
            while True:
                seed = os.urandom(SEED_BYTES)
                try:
                    mask = _expand_mask(seed, primes, n)
                    break
                except CerberusError:
                    continue
            residues = [((scaled + noise) % prime).astype(np.uint64)
                        + np.uint64(prime) - _times_secret(mask[i], self._secret, prime)[pos]
                        for i, prime in enumerate(primes)]
            residues = [r % np.uint64(prime) for r, prime in zip(residues, primes, strict=True)]
            seeds.append(seed)
            values.append(_crt(residues[0], residues[1], primes) >> np.uint64(drop))
        header = _IN_HEADER.pack(SPARSE_MAGIC, VERSION, p.fingerprint(), rows, p.n_in, p.n_out,
                                 part.r_w, part.n_w, part.m_w, len(seeds))
        return (header + b"".join(seeds)
                + _pack_bits(np.concatenate(values), p.input_value_bits))

    def _sparse_rows(self, data: bytes) -> np.ndarray:
        """A sparse input message back to its rows: the phase at the sent coefficients, c0
        put back as the miner does."""
        assert self._secret is not None
        p = self.params
        rows, part, groups = _sparse_fields(data, p)
        q = p.q
        out = []
        for pos, c0, mask in groups:
            residues = [(c0 % np.uint64(prime) + _times_secret(mask[i], self._secret,
                                                               prime)[pos]) % np.uint64(prime)
                        for i, prime in enumerate(p.data_primes)]
            phase = _crt(residues[0], residues[1], p.data_primes)
            m = [((int(v) << p.plain_bits) + q // 2) // q % p.t for v in phase]
            m = np.array([v - p.t if v >= p.t // 2 else v for v in m], dtype=np.int64)
            out.append(m.reshape(-1, p.n_in))
        return np.concatenate(out)[:rows]

    def decrypt_rows(self, data: bytes) -> np.ndarray:
        """An input message back to its rows ``[rows, n_in]``: a client's audit of what it
        sent. Only the key that encrypted it opens it; under another key the coefficients
        are noise (the privacy tests check both)."""
        if self._decryptor is None:
            raise CerberusError("packed linear: keygen() before decrypting")
        p = self.params
        if p.sparse:
            return self._sparse_rows(data)
        _, _, fp, rows, n_in, n_out, r_w, n_w, m_w, count = _read_header(data, _IN_HEADER,
                                                                         IN_MAGIC)
        if (n_in, n_out) != (p.n_in, p.n_out) or fp != p.fingerprint():
            raise CerberusError("packed linear: a message for other parameters")
        part, offset, blocks = Partition(r_w, n_w, m_w), _IN_HEADER.size, []
        for _ in range(count):
            (size,) = struct.unpack_from("<I", data, offset)
            ct = self._scratch.load_ciphertext(self.context, data[offset + 4:offset + 4 + size])
            offset += 4 + size
            plain = seal.Plaintext()
            self._decryptor.decrypt(ct, plain)
            coeffs = np.array([plain.data(i) for i in range(plain.coeff_count())]
                              + [0] * (p.poly_degree - plain.coeff_count()), dtype=np.int64)
            coeffs = np.where(coeffs >= p.t // 2, coeffs - p.t, coeffs)
            stride = part.n_w * part.m_w
            blocks.append(np.stack([coeffs[i * stride:i * stride + part.n_w]
                                    for i in range(part.r_w)]))
        groups, per = -(-rows // part.r_w), -(-n_in // part.n_w)
        x = np.block([[blocks[g * per + b] for b in range(per)] for g in range(groups)])
        return x[:rows, :n_in]

    def decrypt(self, data: bytes, rows: int, out: int) -> np.ndarray:
        """The miner's reply → the exact accumulator ``x @ W`` as int64 ``[rows, out]``."""
        phase, part = (self._packed_phase if self.params.pack else self._phase)(data, rows, out)
        p, shift = self.params, self.params.out_bits - self.params.t_bits
        t = 1 << p.t_bits  # packed: the packing's factor n_w left t/n_w = 2^t_bits
        m = ((phase + (1 << (shift - 1))) >> shift) % t
        m = np.where(m >= t // 2, m - t, m)
        groups, blocks = -(-rows // part.r_w), -(-out // part.m_w)
        y = m.reshape(groups, blocks, part.r_w, part.m_w).transpose(0, 2, 1, 3)
        return y.reshape(groups * part.r_w, blocks * part.m_w)[:rows, :out].copy()

    def noise_bits(self, data: bytes, rows: int, out: int) -> float:
        """log2 of the largest distance of an output's phase from its nearest multiple of
        ``2^(k−b)``: decryption is exact while this stays below ``k − b − 1``
        (``OUTPUT_MARGIN_BITS − 1``); the tests and the benchmark report the margin left."""
        phase, _ = (self._packed_phase if self.params.pack else self._phase)(data, rows, out)
        shift = self.params.out_bits - self.params.t_bits
        err = phase - (((phase + (1 << (shift - 1))) >> shift) << shift)
        return float(np.log2(max(int(np.abs(err).max()), 1)))

    def _phase(self, data: bytes, rows: int, out: int) -> tuple[np.ndarray, Partition]:
        """``c0 + c1·s mod 2^k`` at every output-bearing coefficient, ``[count, r_w·m_w]``."""
        if self._secret is None:
            raise CerberusError("packed linear: keygen() before decrypting")
        p = self.params
        part = _read_out_header(data, p, rows, out)
        u, k, n = part.useful(), p.out_bits, p.poly_degree
        groups, blocks = -(-rows // part.r_w), -(-out // part.m_w)
        count = groups * blocks
        values = _unpack_bits(data[_OUT_HEADER.size:], count * (n + u.size), k)
        values = values.reshape(count, n + u.size)
        c1, c0 = values[:, :n].astype(np.float64), values[:, n:].astype(np.int64)
        # Column u of the negacyclic product matrix: (c1·s)_u = Σ_j c1_j · ±s_((u−j) mod N).
        # Entries < 2^k·N ≤ 2^51: float64 matmul is exact.
        j = np.arange(n)[:, None]
        matrix = self._secret[(u[None, :] - j) % n] * np.where(j <= u[None, :], 1, -1)
        return (c0 + np.rint(c1 @ matrix.astype(np.float64)).astype(np.int64)) % (1 << k), part

    def _packed_phase(self, data: bytes, rows: int, out: int) -> tuple[np.ndarray, Partition]:
        """A packed reply's ``c0 + c1·s mod 2^k1`` at every output, ``[count, r_w·m_w]`` in
        the order of the unpacked output ciphertexts."""
        if self._secret is None:
            raise CerberusError("packed linear: keygen() before decrypting")
        p = self.params
        part, packed, count = _read_packed_header(data, p, rows, out, self._digest())
        n, k1, k0 = p.poly_degree, p.out_bits, p.c0_bits
        useful, bits = part.r_w * part.m_w, part.n_w.bit_length() - 1
        c1_bytes = math.ceil(packed * n * k1 / 8)
        body = data[_PACK_OUT_HEADER.size:]
        c1 = _unpack_bits(body[:c1_bytes], packed * n, k1).reshape(packed, n)
        c0 = _unpack_bits(body[c1_bytes:], count * useful, k0).reshape(count, useful)
        c1s = negacyclic_mod(c1, self._secret, k1)
        base = (np.arange(part.r_w)[:, None] * part.m_w
                + np.arange(part.m_w)[None, :]).ravel() * part.n_w  # slot 0's positions
        idx = np.arange(count)
        pos = base[None, :] + np.array([_bitrev(c % part.n_w, bits) for c in idx])[:, None]
        phase = (c0 << np.uint64(k1 - k0)) + c1s[(idx // part.n_w)[:, None], pos]
        return (phase % np.uint64(1 << k1)).astype(np.int64), part

    def dense_noise_bits(self, ct: seal.Ciphertext) -> float:
        """log2 of a dense ciphertext's BFV noise (before the switch down): the largest
        distance of its phase mod q from a multiple of q/2^b (valid below q/2^(b+1)). The
        tests hold it to ``PackedParams.noise_bound``, the key switches' share included."""
        if self._secret is None:
            raise CerberusError("packed linear: keygen() before measuring noise")
        p = self.params
        words = _words(ct)  # [2 polys, primes, N]
        # c0 + c1·s mod each prime, then CRT to mod q
        q = p.q
        residues = [(words[0, i] + _times_secret(words[1, i], self._secret, prime))
                    % np.uint64(prime) for i, prime in enumerate(p.data_primes)]
        phase = [int(v) for v in _crt(residues[0], residues[1], p.data_primes)]
        step = 1 << p.t_bits
        worst = max(abs(v * step - (v * step + q // 2) // q * q) for v in phase) // step
        return math.log2(max(worst, 1))

    def _digest(self) -> bytes:
        return hashlib.sha256(self._galois).digest()[:8]


def _read_header(data: bytes, fmt: struct.Struct, magic: bytes) -> tuple:
    if len(data) < fmt.size:
        raise CerberusError("packed linear: truncated message (no header)")
    fields = fmt.unpack_from(data)
    if fields[0] != magic or fields[1] != VERSION:
        raise CerberusError(f"packed linear: not a packed {magic.decode()} v{VERSION} message")
    return fields


def _read_out_header(data: bytes, p: PackedParams, rows: int, out: int) -> Partition:
    _, _, fp, h_rows, h_out, r_w, n_w, m_w, count = _read_header(data, _OUT_HEADER, OUT_MAGIC)
    if rows < 1 or (h_rows, h_out) != (rows, out):
        raise CerberusError(f"packed linear: reply for {h_rows}×{h_out} outputs, expected "
                            f"{rows}×{out}")
    if fp != p.fingerprint():
        raise CerberusError("packed linear: reply made with other parameters than this key's")
    part = Partition(r_w, n_w, m_w)
    if part != p.partition(rows) or count != -(-rows // r_w) * -(-out // m_w):
        raise CerberusError(f"packed linear: reply cut as {part}, expected "
                            f"{p.partition(rows)}")
    need = _OUT_HEADER.size + math.ceil(count * (p.poly_degree + r_w * m_w) * p.out_bits / 8)
    if len(data) != need:
        raise CerberusError(f"packed linear: reply of {len(data)} bytes, expected {need}")
    return part


def _read_packed_header(data: bytes, p: PackedParams, rows: int, out: int,
                        digest: bytes) -> tuple[Partition, int, int]:
    """A packed reply's cut, dense ciphertext count and output ciphertext count, checked."""
    if len(data) < _PACK_OUT_HEADER.size:
        raise CerberusError("packed linear: truncated message (no header)")
    magic, version, fp, keys, h_rows, h_out, r_w, n_w, m_w, packed = \
        _PACK_OUT_HEADER.unpack_from(data)
    if magic != OUT_MAGIC or version != PACK_VERSION:
        raise CerberusError(f"packed linear: not a packed {OUT_MAGIC.decode()} "
                            f"v{PACK_VERSION} message")
    if rows < 1 or (h_rows, h_out) != (rows, out):
        raise CerberusError(f"packed linear: reply for {h_rows}×{h_out} outputs, expected "
                            f"{rows}×{out}")
    if fp != p.fingerprint():
        raise CerberusError("packed linear: reply made with other parameters than this key's")
    if keys != digest:
        raise CerberusError("packed linear: reply computed with other Galois keys than this "
                            "client's (another client's key id?)")
    part = Partition(r_w, n_w, m_w)
    if part != p.partition(rows) or packed != p.packed_count(rows):
        raise CerberusError(f"packed linear: reply cut as {part}, expected {p.partition(rows)}")
    if len(data) != p.output_bytes(rows):
        raise CerberusError(f"packed linear: reply of {len(data)} bytes, expected "
                            f"{p.output_bytes(rows)}")
    return part, packed, p.counts(rows)[1]


def _read_in_header(data: bytes, p: PackedParams, magic: bytes) -> tuple[int, Partition, int]:
    """A client message's rows, cut and count (ciphertexts, or seeds), checked against this
    linear's shape, parameters and the cut it serves for that many rows."""
    _, _, fp, rows, n_in, n_out, r_w, n_w, m_w, count = _read_header(data, _IN_HEADER, magic)
    if (n_in, n_out) != (p.n_in, p.n_out):
        raise CerberusError(f"packed linear: ciphertext for a {n_in}×{n_out} linear, this "
                            f"one is {p.n_in}×{p.n_out}")
    if fp != p.fingerprint():
        raise CerberusError("packed linear: ciphertext made with other parameters")
    part = Partition(r_w, n_w, m_w)
    if rows < 1 or part != p.partition(rows):
        raise CerberusError(f"packed linear: {rows} rows cut as {part}; expected "
                            f"{p.partition(max(rows, 1))}")
    return rows, part, count


def _sparse_fields(data: bytes, p: PackedParams
                   ) -> tuple[int, Partition, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A sparse input message, checked (shape, parameters, cut, counts, exact size, every
    value below q), as its rows, its cut and per row group the sent positions, their c0
    (mod q, the dropped bits put back at their midpoint) and the expanded mask c1."""
    rows, part, count = _read_in_header(data, p, SPARSE_MAGIC)
    n_in, r_w, n_w = p.n_in, part.r_w, part.n_w
    if count != -(-rows // r_w):
        raise CerberusError(f"packed linear: {count} seeds, expected {-(-rows // r_w)}")
    if len(data) != p.input_bytes(rows):
        raise CerberusError(f"packed linear: message of {len(data)} bytes, expected "
                            f"{p.input_bytes(rows)}")
    seeds_end = _IN_HEADER.size + count * SEED_BYTES
    values = _unpack_bits(data[seeds_end:], rows * n_in, p.input_value_bits)
    drop = p.input_drop_bits
    c0 = (values << np.uint64(drop)) + np.uint64(1 << (drop - 1))
    if values.size and int(c0.max()) >= p.q:
        raise CerberusError("packed linear: an input coefficient outside [0, q)")
    groups = []
    for g in range(count):
        held = min(r_w, rows - g * r_w)
        pos = (np.arange(held)[:, None] * n_w + np.arange(n_in)[None, :]).ravel()
        seed = data[_IN_HEADER.size + g * SEED_BYTES:_IN_HEADER.size + (g + 1) * SEED_BYTES]
        sent = c0[g * r_w * n_in:g * r_w * n_in + pos.size]
        groups.append((pos, sent, _expand_mask(seed, p.data_primes, p.poly_degree)))
    return rows, part, groups


class PackedLinear:
    """The miner's side of ``x @ W``: weights encoded once per cut, no secret key, no
    evaluation key."""

    def __init__(self, w: np.ndarray, params: PackedParams | None = None,
                 rows: tuple[int, ...] | None = None) -> None:
        """``rows``: the call sizes whose weight encodings are built now (default: one per
        row pack, so a serving miner's memory is fixed at start-up); others on first use."""
        w = np.asarray(w)
        if w.ndim != 2:
            raise CompileError(f"packed linear: weights must be [in, out], got {w.shape}")
        self.params = params or PackedParams(int(w.shape[0]), int(w.shape[1]))
        if w.shape != (self.params.n_in, self.params.n_out):
            raise CompileError(f"packed linear: weights {w.shape} do not match parameters "
                               f"{self.params.n_in}×{self.params.n_out}")
        try:
            self.w = _check_range(w, self.params.weight_bits, "weights")
        except CerberusError as e:
            raise CompileError(str(e)) from None
        self.context = _context(self.params.poly_degree, self.params.t, self.params.pack)
        self.evaluator = seal.Evaluator(self.context)
        self._scratch = _Scratch()
        self._encoded: dict[Partition, list[list[seal.Plaintext | None]]] = {}
        self._lock = threading.Lock()  # a miner's gRPC threads share one encoding per cut
        for r in rows if rows is not None else self.params.row_packs:
            self._weights(self.params.partition(r))

    def _weights(self, part: Partition) -> list[list[seal.Plaintext | None]]:
        """ŵ for every (input block, output block), NTT form; ``None`` for an all-zero block
        (SEAL refuses a product that would be transparent).

        Each holds N words for n_w·m_w weights: r_w·8 bytes per weight in memory."""
        with self._lock:
            return self._encode(part)

    def _encode(self, part: Partition) -> list[list[seal.Plaintext | None]]:
        if part not in self._encoded:
            p, parms_id = self.params, self.context.first_parms_id()
            blocks_in, blocks_out = -(-p.n_in // part.n_w), -(-p.n_out // part.m_w)
            padded = np.zeros((blocks_in * part.n_w, blocks_out * part.m_w), dtype=np.int64)
            # sparse input: times r_w, so that n_w = N/r_w merges leave N·acc in every cut
            padded[:p.n_in, :p.n_out] = self.w * (part.r_w if p.sparse else 1)
            k, j = np.meshgrid(np.arange(part.m_w), np.arange(part.n_w), indexing="ij")
            pos = (k * part.n_w + part.n_w - 1 - j).ravel()  # [m_w·n_w], k-major
            # packing wants the outputs on multiples of n_w: ŵ·X^−(n_w−1), X^−e = −X^(N−e)
            sign = np.ones(pos.size, dtype=np.int64)
            if p.pack:
                pos = pos - (part.n_w - 1)
                sign = np.where(pos < 0, -1, 1)
                pos = pos % p.poly_degree
            table = []
            for b in range(blocks_in):
                row = []
                for c in range(blocks_out):
                    block = padded[b * part.n_w:(b + 1) * part.n_w,
                                   c * part.m_w:(c + 1) * part.m_w]
                    if not block.any():
                        row.append(None)
                        continue
                    coeffs = np.zeros(p.poly_degree, dtype=np.int64)
                    coeffs[pos] = sign * block.T.ravel()
                    plain = _plaintext(coeffs % p.t)
                    self.evaluator.transform_to_ntt_inplace(plain, parms_id)
                    row.append(plain)
                table.append(row)
            self._encoded[part] = table
        return self._encoded[part]

    def memory_bytes(self) -> int:
        """The weight encodings held: N words of 8 bytes per non-zero block per cut."""
        with self._lock:
            blocks = sum(p is not None for table in self._encoded.values()
                         for row in table for p in row)
        return blocks * self.params.poly_degree * 8

    def load_keys(self, data: bytes) -> PackedKeys:
        """A client's uploaded Galois keys, parsed and checked against these parameters (SEAL
        refuses keys of another N, q or t) and the automorphisms the packing needs."""
        p = self.params
        if not p.pack:
            raise CerberusError("packed linear: coefficient encoding takes no evaluation keys "
                                "(these belong to another backend)")
        if len(data) > p.key_bytes():
            raise CerberusError(f"packed linear: {len(data)} bytes of Galois keys, at most "
                                f"{p.key_bytes()} for these parameters")
        keys = self._scratch.load_galois(self.context, data)
        missing = [g for g in p.galois_elements() if not keys.has_key(g)]
        if missing:
            raise CerberusError(f"packed linear: the Galois keys lack elements {missing}")
        return PackedKeys(keys, hashlib.sha256(data).digest()[:8])

    def rows_of(self, ciphertext: bytes) -> int:
        """The rows a client's message claims (its header), before any parsing of
        ciphertexts: what a miner checks against its cap."""
        magic = SPARSE_MAGIC if self.params.sparse else IN_MAGIC
        return int(_read_header(ciphertext, _IN_HEADER, magic)[3])

    def run(self, ciphertext: bytes, eval_keys: bytes | PackedKeys | None = b"") -> bytes:
        """The client's encrypted rows → the encrypted ``x @ W``, switched down to
        ``out_bits`` per coefficient; unpacked, only the output-bearing coefficients of
        ``c0``; packed (``eval_keys``: the client's Galois keys), dense ciphertexts."""
        p = self.params
        if p.pack:
            keys = self._keys(eval_keys)
            rows, part, cts = self._parse(ciphertext)
            return self._packed_reply(self._dense(rows, part, cts, keys), rows, part, keys)
        if eval_keys:
            raise CerberusError("packed linear: coefficient encoding takes no evaluation keys "
                                "(these belong to another backend)")
        rows, part, cts = self._parse(ciphertext)
        n, u = p.poly_degree, part.useful().tolist()
        words = []
        for acc in self._products(cts, self._weights(part), -(-rows // part.r_w)):
            if acc is None:  # every block of W is zero: the output is 0, known to all
                words.append(np.zeros(n + len(u), dtype=np.float64))
                continue
            flat = acc.dyn_array()  # [c0 | c1], N words each (one prime)
            words.append(np.array([flat.at(n + i) for i in range(n)]
                                  + [flat.at(i) for i in u], dtype=np.float64))
        # round(c·2^k/q): float64 adds < 2^(k−52) to the rounding, well inside the margin.
        k = p.out_bits
        switched = np.rint(np.concatenate(words) * (2.0 ** k / p.q)).astype(np.uint64)
        switched %= np.uint64(1 << k)
        header = _OUT_HEADER.pack(OUT_MAGIC, VERSION, p.fingerprint(), rows, p.n_out,
                                  part.r_w, part.n_w, part.m_w, len(words))
        return header + _pack_bits(switched, k)

    def dense(self, ciphertext: bytes, eval_keys: bytes | PackedKeys) -> list[seal.Ciphertext]:
        """The packed ciphertexts of a reply before the switch down (``None`` for all-zero
        weights): what the tests measure (``PackedClient.dense_noise_bits``)."""
        keys = self._keys(eval_keys)
        rows, part, cts = self._parse(ciphertext)
        return [ct for ct, _ in self._dense(rows, part, cts, keys)]

    def _keys(self, eval_keys: bytes | PackedKeys | None) -> PackedKeys:
        if not self.params.pack:
            raise CerberusError("packed linear: only packing takes Galois keys")
        if not eval_keys:
            raise CerberusError("packed linear: no Galois keys to pack the reply with "
                                "(upload this client's evaluation keys first)")
        return eval_keys if isinstance(eval_keys, PackedKeys) else self.load_keys(eval_keys)

    def _parse(self, ciphertext: bytes) -> tuple[int, Partition, list[seal.Ciphertext]]:
        """A client's message, checked (shape, parameters, cut, counts, framing), as its rows,
        its cut and its ciphertexts in NTT form."""
        p = self.params
        if p.sparse:
            return self._parse_sparse(ciphertext)
        rows, part, count = _read_in_header(ciphertext, p, IN_MAGIC)
        groups, blocks_in = -(-rows // part.r_w), -(-p.n_in // part.n_w)
        if count != groups * blocks_in:
            raise CerberusError(f"packed linear: {count} ciphertexts, expected "
                                f"{groups * blocks_in}")
        cts, offset = [], _IN_HEADER.size
        for _ in range(count):
            if offset + 4 > len(ciphertext):
                raise CerberusError("packed linear: truncated ciphertext")
            (size,) = struct.unpack_from("<I", ciphertext, offset)
            chunk = ciphertext[offset + 4:offset + 4 + size]
            if len(chunk) != size:
                raise CerberusError("packed linear: truncated ciphertext")
            ct = self._scratch.load_ciphertext(self.context, chunk)
            if ct.size() != 2 or ct.parms_id() != self.context.first_parms_id():
                raise CerberusError("packed linear: ciphertext at another level or size")
            self.evaluator.transform_to_ntt_inplace(ct)
            cts.append(ct)
            offset += 4 + size
        if offset != len(ciphertext):
            raise CerberusError("packed linear: trailing bytes after the ciphertexts")
        return rows, part, cts

    def _parse_sparse(self, data: bytes) -> tuple[int, Partition, list[seal.Ciphertext]]:
        """A sparse input message as SEAL ciphertexts in NTT form: c1 from each seed, c0 the
        sent values at their positions and zero elsewhere."""
        p = self.params
        rows, part, groups = _sparse_fields(data, p)
        parms_id, cts = list(self.context.first_parms_id()), []
        for pos, c0, mask in groups:
            words = np.zeros((2, len(p.data_primes), p.poly_degree), dtype=np.uint64)
            for i, prime in enumerate(p.data_primes):
                words[0, i, pos] = c0 % np.uint64(prime)
            words[1] = mask
            ct = self._scratch.load_ciphertext(self.context, _ciphertext_bytes(words, parms_id))
            self.evaluator.transform_to_ntt_inplace(ct)
            cts.append(ct)
        return rows, part, cts

    def _products(self, cts: list[seal.Ciphertext], weights: list[list[seal.Plaintext | None]],
                  groups: int) -> list[seal.Ciphertext | None]:
        """Σ_b x̂_(g,b)·ŵ_(b,c) for every (row group g, output block c), out of NTT form;
        ``None`` where every block of W is zero. On every core: SEAL releases the GIL."""
        tasks = [(g, c) for g in range(groups) for c in range(len(weights[0]))]
        return list(_pool().map(lambda gc: self._product(cts, weights, *gc), tasks))

    def _product(self, cts: list[seal.Ciphertext], weights: list[list[seal.Plaintext | None]],
                 g: int, c: int) -> seal.Ciphertext | None:
        blocks_in, acc = len(weights), None
        for b in range(blocks_in):
            plain = weights[b][c]
            if plain is None:
                continue
            term = seal.Ciphertext()
            self.evaluator.multiply_plain(cts[g * blocks_in + b], plain, term)
            if acc is None:
                acc = term
            else:
                self.evaluator.add_inplace(acc, term)
        if acc is not None:
            self.evaluator.transform_from_ntt_inplace(acc)
        return acc

    def _pack(self, items: list[seal.Ciphertext | None], level: int,
              keys: PackedKeys) -> seal.Ciphertext | None:
        """Chen–Dai–Kim–Song's PackLWEs, for ciphertexts whose outputs sit on multiples of
        ``len(items)·2^level``: item ``j`` moves to offset ``j·2^level``, times ``len(items)``,
        and everything off those multiples cancels. The top level's halves run on two
        threads (only the caller waits, never a pool thread)."""
        if len(items) == 1:
            return items[0]
        if level == 0:
            future = _pool().submit(self._pack, items[0::2], 1, keys)
            odd = self._pack(items[1::2], 1, keys)
            return self._merge(future.result(), odd, 0, keys)
        return self._merge(self._pack(items[0::2], level + 1, keys),
                           self._pack(items[1::2], level + 1, keys), level, keys)

    def _merge(self, even: seal.Ciphertext | None, odd: seal.Ciphertext | None, level: int,
               keys: PackedKeys) -> seal.Ciphertext | None:
        """One merge, one automorphism: ``(E + X^s·O) + σ(E − X^s·O)``, ``s = 2^level``,
        ``σ: X → X^(N/s + 1)`` (fixes X^(2s), negates X^s)."""
        if even is None and odd is None:
            return None
        if odd is not None:
            shifted = seal.Ciphertext()
            self.evaluator.multiply_plain(odd, _monomial(1 << level), shifted)
        minus = seal.Ciphertext()
        if even is None:
            plus = shifted
            self.evaluator.negate(shifted, minus)
        elif odd is None:
            plus = minus = even
        else:
            plus = seal.Ciphertext()
            self.evaluator.add(even, shifted, plus)
            self.evaluator.sub(even, shifted, minus)
        turned = seal.Ciphertext()
        self.evaluator.apply_galois(minus, self.params.poly_degree // (1 << level) + 1,
                                    keys.galois, turned)
        self.evaluator.add_inplace(plus, turned)
        return plus

    def _dense(self, rows: int, part: Partition, cts: list[seal.Ciphertext],
               keys: PackedKeys) -> list[tuple[seal.Ciphertext | None, int]]:
        """Products, then every n_w output ciphertexts packed into one dense ciphertext
        (ciphertext ``c`` of a group at offset ``bitrev(c)``, so a partial group is one
        compact subtree); with each, how many output ciphertexts it holds."""
        outs = self._products(cts, self._weights(part), -(-rows // part.r_w))
        bits, dense = part.n_w.bit_length() - 1, []
        for start in range(0, len(outs), part.n_w):
            chunk = outs[start:start + part.n_w]
            slots: list[seal.Ciphertext | None] = [None] * part.n_w
            for c, ct in enumerate(chunk):
                slots[_bitrev(c, bits)] = ct
            dense.append((self._pack(slots, 0, keys), len(chunk)))
        return dense

    def _packed_reply(self, dense: list[tuple[seal.Ciphertext | None, int]], rows: int,
                      part: Partition, keys: PackedKeys) -> bytes:
        """The dense ciphertexts switched down: all of c1 at k1 bits, c0 at its outputs at
        k0 bits."""
        p, n = self.params, self.params.poly_degree
        bits = part.n_w.bit_length() - 1
        base = (np.arange(part.r_w)[:, None] * part.m_w
                + np.arange(part.m_w)[None, :]).ravel() * part.n_w
        c1s, c0s = [], []
        for packed, held in dense:
            if packed is None:  # every block of W is zero: the outputs are 0, known to all
                c1s.append(np.zeros(n, dtype=np.uint64))
                c0s.extend(np.zeros(base.size, dtype=np.uint64) for _ in range(held))
                continue
            words = _words(packed)  # [2 polys, 2 primes, N]
            c1s.append(_switch_down(words[1], p.data_primes, p.out_bits))
            c0 = _switch_down(words[0], p.data_primes, p.c0_bits)
            c0s.extend(c0[base + _bitrev(c, bits)] for c in range(held))
        header = _PACK_OUT_HEADER.pack(OUT_MAGIC, PACK_VERSION, p.fingerprint(), keys.digest,
                                       rows, p.n_out, part.r_w, part.n_w, part.m_w, len(c1s))
        return (header + _pack_bits(np.concatenate(c1s), p.out_bits)
                + _pack_bits(np.concatenate(c0s), p.c0_bits))
