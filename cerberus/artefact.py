"""The artefact (SPEC C8): a content-addressed ``NAME.cerb/`` folder in two halves.

Layout (format 2)::

    manifest.json            public: format and protocol versions, source model + hash,
                             pass reports, head mask, quantization, cost, fidelity,
                             partition, model config, the file list of each half, and
                             per FHE program its backend (lwe or packed), its parameters
                             and every backend's predicted cost (``fhe``)
    artefact.sha256          the id (below)
    client/                  the client half: only what a client runs
        model.safetensors    embeddings and positions, norms, the LM head (left out when
                             it is the token embedding: tied), per-head gates
        linears.json, .npz   hybrid: per miner program the input's scale and width, the
                             per-channel weight scales and the bias
        tokenizer/           tokenizer files, when the source has a tokenizer
        fhe/NAME/client.specs  key generation and encryption parameters (--fhe, lwe
                             programs; a packed program's parameters are in the manifest)
    miner/                   the miner half: never sent to a client
        graph/               the full-partition integer graph (structure + integers)
        programs/NAME/       hybrid: the integer graph of each program the miner runs
                             (full: the one program is graph/)
        fhe/NAME/server.zip  the concrete-python programs (--fhe, lwe; a packed program
                             encodes its weights from programs/NAME at start-up)
        model.onnx           the quantized integer graph as ONNX (runs in onnxruntime)

No miner weight matrix, in any orientation or scale, is in the client half, and no
integer graph of the miner's (tests/cerberus/test_artefact.py checks the shapes). A
miner's ``FetchClient`` serves ``manifest.json`` and ``client/``, and only the digests of
``miner/``, so a client can check the whole id. Validators re-run the simulator, so they
need the miner half too: they load the artefact whose hash is the Brain's task, never
the copy of the miner they check.

The artefact's id is the sha256 over every file's relative path and sha256 except
``artefact.sha256`` itself (``cerberus.hashing``), so any change to any byte gives a new
id; the ledger records it as a Brain's task.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cerberus.errors import CompileError
from cerberus.frontends.canonical import TransformerConfig
from cerberus.hashing import folder_sha256
from cerberus.hybrid import LinearSpec
from cerberus.ir import IntGraph
from cerberus.light_client import LightClient, simulated_miner

HASH_FILE = "artefact.sha256"
MANIFEST = "manifest.json"
CLIENT, MINER = "client", "miner"
# Version 2 split the artefact into a client half and a miner half (issue #13); version 3
# names each FHE program's backend in the manifest (lwe or packed, issue #14).
FORMAT_VERSION = 3


def artefact_hash(folder: Path) -> str:
    """The artefact's id: the folder's digest, without the file that records it."""
    return folder_sha256(folder, exclude={HASH_FILE})


def is_miner_file(rel: str) -> bool:
    """Whether a relative path belongs to the miner half (never sent to a client)."""
    return rel.split("/", 1)[0] == MINER


def adaptive_preprocess(x: np.ndarray, params: dict) -> np.ndarray:
    """The client's paper-§5 adaptive quantization of embeddings, one token per sample."""
    from cerberus.passes.adaptive import adaptive_dynamic_quantize

    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return adaptive_dynamic_quantize(flat, **params).x_hat.reshape(x.shape)


def adaptive_torch(params: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """``adaptive_preprocess`` on torch tensors (for the client's embeddings)."""

    def prep(x: torch.Tensor) -> torch.Tensor:
        out = adaptive_preprocess(x.detach().double().numpy(), params)
        return torch.tensor(out, dtype=x.dtype)

    return prep


def _check_format(path: Path, manifest: dict) -> None:
    fmt = manifest.get("format")
    if fmt != FORMAT_VERSION:
        raise CompileError(
            f"{path} is artefact format {fmt}, this Cerberus reads format {FORMAT_VERSION}: "
            "recompile the model with this version")


def read_manifest(path: Path) -> dict:
    """The manifest, after checking the folder is an artefact of this format."""
    if not (path / MANIFEST).is_file():
        hint = " (it looks like one half; pass the NAME.cerb folder)" if path.name in (
            CLIENT, MINER) else ""
        raise CompileError(f"{path} is not a Cerberus artefact (no {MANIFEST}){hint}")
    manifest = json.loads((path / MANIFEST).read_text())
    _check_format(path, manifest)
    return manifest


def check_half(path: Path, manifest: dict, half: str) -> None:
    """Every file the manifest lists for ``half`` must be there."""
    listed = manifest.get("files", {}).get(half)
    if listed is None or not (path / half).is_dir():
        other = MINER if half == CLIENT else CLIENT
        what = f"only the {other} half" if (path / other).is_dir() else "no such half"
        raise CompileError(f"{path} has no {half} half ({what}); a {half} needs {half}/")
    missing = [rel for rel in listed if not (path / rel).is_file()]
    if missing:
        raise CompileError(f"the {half} half of {path} is missing {len(missing)} file(s): "
                           f"{', '.join(missing[:5])}")


@dataclass
class ClientHalf:
    """What a client holds: enough to run its side of the split with a miner."""

    path: Path
    manifest: dict[str, Any]
    cfg: TransformerConfig
    state: dict[str, torch.Tensor]
    linears: dict[str, LinearSpec]
    tokenizer: Any | None

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def partition(self) -> str:
        return self.manifest["partition"]["mode"]

    @property
    def fhe_dir(self) -> Path:
        return self.path / CLIENT / "fhe"

    def light_client(self, miner: Callable[[str, np.ndarray], np.ndarray]) -> LightClient:
        """The client's side of the split with ``miner`` computing the rest."""
        quant = self.manifest["quantization"]
        prep = adaptive_torch(quant["adaptive_params"]) if quant.get("adaptive") else None
        return LightClient(self.cfg, self.state, partition=self.partition, miner=miner,
                           linears=self.linears, io=quant, preprocess=prep,
                           seq_len=int(self.manifest["seq_len"]))


@dataclass
class MinerHalf:
    """What a miner (and a validator re-running the simulator) holds: the integer graphs."""

    path: Path
    graph: IntGraph  # the full-partition graph of the blocks
    programs: dict[str, IntGraph] = field(default_factory=dict)

    @property
    def fhe_dir(self) -> Path:
        return self.path / MINER / "fhe"


@dataclass
class Artefact:
    """Both halves: the bit-exact simulator of what a client and a miner compute together."""

    client: ClientHalf
    miner: MinerHalf

    path = property(lambda self: self.client.path)
    manifest = property(lambda self: self.client.manifest)
    sha256 = property(lambda self: self.client.sha256)
    partition = property(lambda self: self.client.partition)
    tokenizer = property(lambda self: self.client.tokenizer)
    graph = property(lambda self: self.miner.graph)

    @cached_property
    def simulator(self) -> LightClient:
        """The client's side with the miner's programs evaluated in the clear."""
        return self.client.light_client(simulated_miner(self.miner.programs))

    def logits(self, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (or an encoder's hidden states) through the integer path, simulated."""
        return self.simulator.logits(input_ids, attention_mask)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy generation through the integer path: the reference a miner must match."""
        return self.simulator.generate(prompt_ids, max_new_tokens)

    def sentence_embedding(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.simulator.sentence_embedding(input_ids, attention_mask)

    @property
    def programs(self) -> dict[str, IntGraph]:
        """The miner's programs by name (hybrid: one per fused linear; full: ``blocks``)."""
        return self.miner.programs

    def window(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Full partition: the fixed-length window of ``ids`` and the predicting position."""
        return self.simulator.window(ids)

    def encode_input(self, input_ids: torch.Tensor) -> np.ndarray:
        return self.simulator.encode_input(input_ids)

    def run_graph(self, x: np.ndarray) -> np.ndarray:
        """Full partition: the miner's blocks, simulated (bit-exact with the circuit)."""
        return self.simulator.miner("blocks", x)

    def decode_output(self, y: np.ndarray) -> torch.Tensor:
        return self.simulator.decode_output(y)


def write_artefact(
    out: Path,
    *,
    manifest: dict[str, Any],
    cfg: TransformerConfig,
    state: dict[str, torch.Tensor],
    graph: IntGraph,
    programs: dict[str, IntGraph] | None = None,
    linears: dict[str, LinearSpec] | None = None,
    tokenizer: Any | None = None,
    force: bool = False,
    extra: Iterable[Callable[[Path], object]] = (),
) -> str:
    """Write both halves atomically (temp dir, then rename) and return the sha256.

    ``state`` is the client's tensors (``light_client.client_state``); every ``extra``
    writer gets the artefact's root and writes under ``client/`` or ``miner/``.
    """
    out = Path(out)
    if out.exists() and not force:
        raise CompileError(f"output {out} already exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        client, miner = tmp / CLIENT, tmp / MINER
        client.mkdir()
        miner.mkdir()
        state = dict(state)
        tied = "lm_head.weight" in state and "tok_emb.weight" in state and torch.equal(
            state["lm_head.weight"], state["tok_emb.weight"])
        if tied:  # stored once, as the model stores it
            del state["lm_head.weight"]
        save_file(state, str(client / "model.safetensors"))
        _save_linears(client, linears or {})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(client / "tokenizer"))
        graph.save(miner / "graph")
        for name, program in (programs or {}).items():
            program.save(miner / "programs" / name)
        for writer in extra:
            writer(tmp)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = dict(manifest, format=FORMAT_VERSION, model_config=cfg.to_dict(),
                        tied_lm_head=tied, graph_digest=graph.digest(),
                        files={CLIENT: [f for f in files if not is_miner_file(f)],
                               MINER: [f for f in files if is_miner_file(f)]})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        digest = artefact_hash(tmp)
        (tmp / HASH_FILE).write_text(digest + "\n")
        tmp.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return digest


def _save_linears(client: Path, linears: dict[str, LinearSpec]) -> None:
    doc = {n: {"act_scale": s.act_scale, "act_bits": s.act_bits, "per_token": s.per_token}
           for n, s in linears.items()}
    arrays = {f"{n}.weight_scale": s.weight_scale for n, s in linears.items()}
    arrays |= {f"{n}.bias": s.bias for n, s in linears.items() if s.bias is not None}
    arrays |= {f"{n}.smooth": s.smooth for n, s in linears.items() if s.smooth is not None}
    (client / "linears.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    np.savez(client / "linears.npz", **arrays)


def _load_linears(client: Path) -> dict[str, LinearSpec]:
    doc = json.loads((client / "linears.json").read_text())
    with np.load(client / "linears.npz") as z:
        def opt(key: str) -> np.ndarray | None:
            return z[key] if key in z.files else None

        return {n: LinearSpec(n, float(d["act_scale"]), int(d["act_bits"]),
                              z[f"{n}.weight_scale"], opt(f"{n}.bias"), opt(f"{n}.smooth"),
                              bool(d["per_token"]))
                for n, d in doc.items()}


def _verify(path: Path, manifest: dict) -> None:
    recorded = (path / HASH_FILE).read_text().strip() if (path / HASH_FILE).exists() else None
    actual = artefact_hash(path)
    if recorded != actual:
        raise CompileError(f"artefact {path} is corrupted: sha256 {actual} != {recorded}")
    manifest["sha256"] = recorded


def load_client(path: Path, *, sha256: str | None = None) -> ClientHalf:
    """Load the client half. ``sha256``: the id already checked against every file's
    digest (a fetched client half, whose miner files are absent); without it the folder
    must hold both halves and hash to its recorded id."""
    path = Path(path)
    manifest = read_manifest(path)
    check_half(path, manifest, CLIENT)
    if sha256 is None:
        check_half(path, manifest, MINER)
        _verify(path, manifest)
    else:
        manifest["sha256"] = sha256
    client = path / CLIENT
    state = load_file(str(client / "model.safetensors"))
    if manifest.get("tied_lm_head"):
        state["lm_head.weight"] = state["tok_emb.weight"]
    tokenizer = None
    if (client / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(client / "tokenizer"))
    return ClientHalf(path, manifest, TransformerConfig(**manifest["model_config"]), state,
                      _load_linears(client), tokenizer)


def load_miner(path: Path) -> MinerHalf:
    """Load the miner half's integer graphs (the miner and the simulator)."""
    path = Path(path)
    manifest = read_manifest(path)
    check_half(path, manifest, MINER)
    miner = path / MINER
    graph = IntGraph.load(miner / "graph")
    root = miner / "programs"
    if root.is_dir():  # hybrid: one program per (fused) linear
        return MinerHalf(path, graph, {d.name: IntGraph.load(d) for d in sorted(root.iterdir())})
    return MinerHalf(path, graph, {"blocks": graph})  # full: the blocks are the program


def load_artefact(path: Path, *, verify: bool = True) -> Artefact:
    """Both halves (the simulator, a validator); with ``verify`` the content must match
    the recorded hash."""
    path = Path(path)
    recorded = None if verify else (path / HASH_FILE).read_text().strip()
    return Artefact(load_client(path, sha256=recorded), load_miner(path))
