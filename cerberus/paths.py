"""Where the project's shipped files live, so nothing is ever fetched from a hub."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"
DEFAULT_MODEL = MODELS_DIR / "tiny-gpt"


def shipped_model(name: str = "tiny-gpt") -> Path:
    """Path of a model folder shipped in ``models/``; a clear error if it is missing."""
    path = MODELS_DIR / name
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"shipped model {name!r} not found at {path} (train it: make train-model)"
        )
    return path
