"""Hugging Face Hub ids, resolved as ``from_pretrained`` resolves them (C1).

A compile source that is neither a local folder nor an ``.onnx`` file is a Hub id. A user of
transformers expects ``cerberus compile gpt2`` to behave like ``from_pretrained("gpt2")``:
use the local Hugging Face cache when the model is there, download it when online, and with
``HF_HUB_OFFLINE=1`` use the cache only. So this module leaves the policy to
``huggingface_hub`` itself, which reads ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``
and ``HF_ENDPOINT`` exactly as transformers does, and only narrows *what* is fetched and
turns its exceptions into one-line errors that name the id and say what to do.

Only safetensors weights are fetched: pickled ``.bin`` checkpoints can run code when loaded,
and a compiler should not execute what it downloads.
"""

from __future__ import annotations

from pathlib import Path

from cerberus.errors import CompileError

# What compiling needs and nothing more: a Hub repo often also holds ONNX, TF, Flax and
# pickle copies of the weights, which can be many times the model's size. Every pattern
# starts with a file name, so only top-level files match (fnmatch's ``*`` crosses ``/``):
# ``onnx/config.json`` and other subfolder copies stay on the Hub. Tokenizer files are
# those of the supported families, GPT-2 (byte-level BPE) and BERT (WordPiece).
ALLOW_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",  # sharded weights
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "modules.json",  # sentence-transformers: pooling and normalisation (frontends/huggingface)
    "1_Pooling/config.json",
)


def resolve_model(source: str) -> Path:
    """The local snapshot folder of Hub model ``source``, downloading it when allowed.

    Raises ``CompileError`` (one line naming ``source``) when the id is malformed, unknown or
    gated on the Hub, not cached while offline, unreachable, or has no safetensors weights.
    """
    import httpx2  # huggingface_hub's HTTP client: its transport errors are not OSErrors
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = constants.is_offline_mode()
    where = f"the Hub at {constants.ENDPOINT}"
    try:
        folder = Path(snapshot_download(
            source, allow_patterns=list(ALLOW_PATTERNS), local_files_only=offline,
        ))
    except HFValidationError as e:
        raise CompileError(
            f"unknown model {source!r}: not a local folder or .onnx file, and not a valid "
            "Hugging Face Hub id (name or namespace/name)"
        ) from e
    except GatedRepoError as e:  # before RepositoryNotFoundError: it is a subclass
        raise CompileError(
            f"model {source!r} is gated on {where}: accept its terms on the Hub and log in "
            "(`hf auth login`) or set HF_TOKEN"
        ) from e
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise CompileError(
            f"unknown model {source!r}: not a local folder or .onnx file, and {where} has no "
            "such model (if it is private, log in with `hf auth login`)"
        ) from e
    except IncompleteSnapshotError as e:  # before LocalEntryNotFoundError: it is a subclass
        raise CompileError(
            f"the cached copy of model {source!r} is incomplete and the Hub cannot be used to "
            f"complete it: fetch it with `HF_HUB_OFFLINE=0 hf download {source}`"
        ) from e
    except LocalEntryNotFoundError as e:
        if offline:
            raise CompileError(
                f"unknown model {source!r}: not a local folder or .onnx file, and not in the "
                f"Hugging Face cache ({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE=1 forbids "
                f"downloading it: fetch it with `HF_HUB_OFFLINE=0 hf download {source}` or "
                "unset HF_HUB_OFFLINE"
            ) from e
        raise CompileError(
            f"cannot download model {source!r} from {where} (check the network or HF_ENDPOINT) "
            f"and it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}): "
            f"{_first_line(e.__cause__ or e)}"
        ) from e
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as e:  # a 5xx, a dropped connection
        raise CompileError(
            f"cannot download model {source!r} from {where}: {_first_line(e)}"
        ) from e
    if not any(folder.glob("*.safetensors")):
        raise CompileError(
            f"model {source!r} has no safetensors weights (model.safetensors); Cerberus does "
            "not load pickled .bin checkpoints, which can run code when loaded"
        )
    return folder


def _first_line(error: BaseException) -> str:
    """Hub errors span several lines; the CLI prints one (``cerberus: ...``)."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()),
                type(error).__name__)
