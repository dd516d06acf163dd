"""Test-wide settings: nothing may reach a network or a model hub."""

import os
import sys
from pathlib import Path

# ``tolerance`` (derived float tolerances, issue #12) is importable from every test folder:
# --import-mode=importlib does not put test folders on sys.path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)  # last: nothing in tests/ may shadow a real package

# The session's exit status survives concrete-python's exit handler (tests/exit_status.py).
from exit_status import pytest_sessionfinish, pytest_unconfigure  # noqa: E402, F401

# Forced, not defaulted: cerberus resolves Hub ids like from_pretrained (downloading when
# online), so a shell's HF_HUB_OFFLINE=0 must not let a test reach the Hub. The fake-Hub
# tests (tests/cerberus/test_hub.py) override it, pointed at a server on 127.0.0.1.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests: no per-example deadline (a shared 2-core machine is noisy), and in CI a
# fixed example sequence so a red build is reproducible; locally hypothesis explores freely.
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("cerberus", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "cerberus")


@pytest.fixture(scope="session")
def fhe_artefact(tmp_path_factory: pytest.TempPathFactory):
    """models/tiny-gpt compiled with --fhe --linear-backend lwe (hybrid partition, 8 bits,
    concrete's LWE programs, calibrated on 8-token windows; it decodes KV-cached over the
    model's 64 positions), both halves loaded
    (``.client``, ``.miner``, ``.programs``, ``.simulator``); shared by the runtime and
    network tests. Tests must not modify it."""
    from cerberus.artefact import load_artefact
    from cerberus.compile import CompileOptions, compile_model
    from cerberus.paths import shipped_model

    out = tmp_path_factory.mktemp("fhe-art") / "tiny.cerb"
    compile_model(shipped_model(), out,
                  CompileOptions(seq_len=8, fhe=True, linear_backend="lwe"))
    return load_artefact(out)


@pytest.fixture(scope="session")
def packed_artefact(tmp_path_factory: pytest.TempPathFactory):
    """models/tiny-gpt compiled with --fhe and the default ``--linear-backend auto``: every
    linear packed (BFV, no evaluation keys), as a user gets it. Tests must not modify it."""
    from cerberus.artefact import load_artefact
    from cerberus.compile import CompileOptions, compile_model
    from cerberus.paths import shipped_model

    out = tmp_path_factory.mktemp("packed-art") / "tiny.cerb"
    compile_model(shipped_model(), out, CompileOptions(seq_len=8, fhe=True))
    return load_artefact(out)
