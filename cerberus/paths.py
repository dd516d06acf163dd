"""Where the project's files live: shipped models (nothing is fetched from a hub) and the
one per-user cache folder (``CERBERUS_CACHE``, default ``~/.cache/cerberus``)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
# Every cache the project keeps (fetched artefact halves, client keys and seeds) lives under
# this one folder, so one variable moves or isolates them all.
CACHE_DIR = Path(os.environ.get("CERBERUS_CACHE", Path.home() / ".cache" / "cerberus"))


def shipped_model(name: str = "tiny-gpt") -> Path:
    """Path of a model folder shipped in ``models/``; a clear error if it is missing."""
    path = MODELS_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"shipped model {name!r} not found at {path} (train it: make train-model)"
        )
    return path


def shipped_prompts(name: str = "tiny-gpt") -> tuple[str, ...]:
    """Prompts in the style of a shipped model's corpus (``models/NAME/prompts.txt``): the
    demo's and bench's defaults and the validators' held challenges, from one file."""
    path = shipped_model(name) / "prompts.txt"
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
