"""Test-wide settings: nothing may reach a network or a model hub."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRITON_INTERPRET", "1")

# Property tests: no per-example deadline (a shared 2-core machine is noisy), and in CI a
# fixed example sequence so a red build is reproducible; locally hypothesis explores freely.
from hypothesis import settings  # noqa: E402

settings.register_profile("cerberus", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "cerberus")
