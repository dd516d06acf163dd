"""The artefact (SPEC C8): a content-addressed ``NAME.cerb/`` folder.

Layout::

    manifest.json       source model + hash, pass reports, head mask, quantization, cost,
                        fidelity, versions
    graph/graph.json    the integer graph the miner runs under FHE (structure)
    graph/graph.npz     its integer weights and tables
    hybrid/NAME/        hybrid partition only: one integer graph per FHE-side linear
                        (+ client.npz, the client's rescaling)
    client.safetensors  the float parts the client runs: embeddings, final norm, LM head
                        (the whole squeezed, folded canonical model, for the simulator)
    model.onnx          the quantized integer graph as ONNX (runs in onnxruntime)
    tokenizer/          tokenizer files, when the source has a tokenizer

The artefact's id is the sha256 over every file's relative path and sha256 except
``artefact.sha256`` itself, so any change to any byte gives a new id; the ledger records
it as a Brain's task.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cerberus.errors import CompileError
from cerberus.frontends.canonical import CanonicalTransformer, TransformerConfig
from cerberus.hashing import folder_sha256
from cerberus.ir import IntGraph, evaluate
from cerberus.passes.quantize import qmax

HASH_FILE = "artefact.sha256"
FORMAT_VERSION = 1


def artefact_hash(folder: Path) -> str:
    """The artefact's id: the folder's digest, without the file that records it."""
    return folder_sha256(folder, exclude={HASH_FILE})


def adaptive_preprocess(x: np.ndarray, params: dict) -> np.ndarray:
    """The client's paper-§5 adaptive quantization of embeddings, one token per sample."""
    from cerberus.passes.adaptive import adaptive_dynamic_quantize

    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    return adaptive_dynamic_quantize(flat, **params).x_hat.reshape(x.shape)


def adaptive_torch(params: dict):
    """``adaptive_preprocess`` on torch tensors (for the hybrid client's embeddings)."""

    def prep(x: torch.Tensor) -> torch.Tensor:
        out = adaptive_preprocess(x.detach().double().numpy(), params)
        return torch.tensor(out, dtype=x.dtype)

    return prep


@dataclass
class Artefact:
    """A loaded artefact: enough to run the integer model in the clear (the simulator)."""

    path: Path
    manifest: dict[str, Any]
    graph: IntGraph
    model: CanonicalTransformer
    tokenizer: Any | None
    parts: dict[str, Any] | None = None  # hybrid partition: one HybridLinear per linear

    @property
    def sha256(self) -> str:
        return self.manifest.get("sha256") or artefact_hash(self.path)

    # -- the client/miner split ---------------------------------------------------------
    def encode_input(self, input_ids: torch.Tensor) -> np.ndarray:
        """Client: tokens → embeddings → integers the miner receives (encrypted)."""
        meta = self.graph.meta
        with torch.no_grad():
            x = self.model.embed(input_ids).double().numpy()
        quant = self.manifest["quantization"]
        if quant.get("adaptive"):
            x = adaptive_preprocess(x, quant["adaptive_params"])
        top = qmax(int(meta["input_bits"]))
        return np.clip(np.floor(x / meta["input_scale"] + 0.5), -top, top).astype(np.int64)

    def run_graph(self, x: np.ndarray) -> np.ndarray:
        """Miner (simulated in the clear): the integer graph, bit-exact with the circuit."""
        return evaluate(self.graph, x)["output"]

    def decode_output(self, y: np.ndarray) -> torch.Tensor:
        """Client: integers back from the miner → final norm and LM head (or hidden states)."""
        h = torch.tensor(y * self.graph.meta["output_scale"], dtype=torch.float32)
        with torch.no_grad():
            return self.model.head(h)

    @property
    def partition(self) -> str:
        return self.manifest.get("partition", {}).get("mode", "full")

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The whole integer path for ``[B, T]`` tokens (T = the compiled sequence length)."""
        if self.parts is not None:
            from cerberus.hybrid import hybrid_model

            quant = self.manifest["quantization"]
            prep = adaptive_torch(quant["adaptive_params"]) if quant.get("adaptive") else None
            with torch.no_grad():
                return hybrid_model(self.model, self.parts, prep)(input_ids)
        return self.decode_output(self.run_graph(self.encode_input(input_ids)))

    def window(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """The circuit's fixed-length input for a token list: the last T tokens, right-padded.

        Causal attention means padding after the last real token cannot change its logits.
        Returns the window and the position whose logits predict the next token.
        """
        t = int(self.manifest["seq_len"])
        ids = ids[-t:]
        pad = (self.tokenizer.eos_token_id if self.tokenizer is not None else 0) or 0
        return torch.tensor([ids + [pad] * (t - len(ids))]), len(ids) - 1

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy generation through the integer path (the bit-exact simulator)."""
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            window, pos = self.window(ids)
            ids.append(int(self.logits(window)[0, pos].argmax()))
        return ids[len(prompt_ids):]


def write_artefact(
    out: Path,
    *,
    manifest: dict[str, Any],
    graph: IntGraph,
    model: CanonicalTransformer,
    tokenizer: Any | None,
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write the folder atomically (temp dir, then rename) and return its sha256."""
    out = Path(out)
    if out.exists() and not force:
        raise CompileError(f"output {out} already exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        graph.save(tmp / "graph")
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "client.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        for name, writer in (extra or {}).items():
            writer(tmp / name)
        manifest = dict(manifest, format=FORMAT_VERSION, model_config=model.cfg.to_dict(),
                        graph_digest=graph.digest())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
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


def load_artefact(path: Path, *, verify: bool = True) -> Artefact:
    """Load an artefact folder; with ``verify`` its content must match its recorded hash."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        raise CompileError(f"{path} is not a Cerberus artefact (no manifest.json)")
    manifest = json.loads((path / "manifest.json").read_text())
    recorded = (path / HASH_FILE).read_text().strip() if (path / HASH_FILE).exists() else None
    if verify:
        actual = artefact_hash(path)
        if recorded != actual:
            raise CompileError(f"artefact {path} is corrupted: sha256 {actual} != {recorded}")
    manifest["sha256"] = recorded
    cfg = TransformerConfig(**manifest["model_config"])
    model = CanonicalTransformer(cfg)
    state = load_file(str(path / "client.safetensors"))
    if "lm_head.weight" not in state:
        model.lm_head = None
    model.load_state_dict(state)
    tokenizer = None
    if (path / "tokenizer").is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))
    parts = None
    if (path / "hybrid").is_dir():
        from cerberus.hybrid import HybridLinear

        parts = {d.name: HybridLinear.load(d.name, d) for d in sorted((path / "hybrid").iterdir())}
    return Artefact(path, manifest, IntGraph.load(path / "graph"), model.eval(), tokenizer,
                    parts)
