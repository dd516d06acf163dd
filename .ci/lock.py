"""Rewrite ``constraints/py3XX.txt``: the exact versions ``make setup`` installs (``make lock``).

Why per Python: the newest releases of numpy, scipy, networkx, contourpy … dropped
Python 3.10 at different times, so one set of pins cannot serve 3.10–3.12. Each file is
resolved by pip itself (``--dry-run --report``, nothing installed) from pyproject's
ranges (dependencies + the ``dev`` extra) for CPython 3.X on manylinux x86_64 wheels,
binary only, so a fresh clone on any such machine gets exactly these versions.

torch is the exception. The CPU build the Makefile installs (torch==2.13.0) is served
by PyTorch's own index, which these machines cannot reach; PyPI's wheel of the same
version is a CUDA build whose nvidia-* dependencies would end up in the pins. So the
resolver is shown a stand-in: a metadata-only wheel ``torch 2.13.0+cpu`` whose
requirements are the CPU wheel's own (TORCH_CPU_REQUIRES, copied from its METADATA).
The stand-in is used for resolution only and never installed; the files pin
``torch==2.13.0``, which the CPU build (2.13.0+cpu) satisfies.

Usage: ``python .ci/lock.py [3.10 3.11 3.12]``; commit the files with a green
``make test`` on at least the Python that CI runs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the lock is written with 3.11+, for 3.10 too
    sys.exit("make lock needs Python >= 3.11 (tomllib); e.g. make lock PYTHON=python3.11")

ROOT = Path(__file__).resolve().parent.parent
TORCH = "2.13.0"
# Requires-Dist of torch-2.13.0+cpu (the wheel the Makefile installs), extras dropped.
TORCH_CPU_REQUIRES = ["filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3",
                      "sympy>=1.13.3", "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"]
# What the Makefile installs besides the project (build tools; concrete needs setuptools<80).
TOOLS = ["pip", "setuptools<80", "wheel"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def stand_in_torch(folder: Path) -> None:
    """A metadata-only wheel named like the CPU build, for the resolver's eyes only."""
    name = f"torch-{TORCH}+cpu"
    meta = "\n".join(["Metadata-Version: 2.1", "Name: torch", f"Version: {TORCH}+cpu",
                      *(f"Requires-Dist: {r}" for r in TORCH_CPU_REQUIRES)]) + "\n"
    wheel = ("Wheel-Version: 1.0\nGenerator: cerberus-lock\nRoot-Is-Purelib: true\n"
             "Tag: py3-none-any\n")
    info = f"torch-{TORCH}+cpu.dist-info"
    with zipfile.ZipFile(folder / f"{name}-py3-none-any.whl", "w") as z:
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(f"{info}/WHEEL", wheel)
        z.writestr(f"{info}/RECORD", "")


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [r for r in project["dependencies"] + project["optional-dependencies"]["dev"]
            if not r.replace(" ", "").startswith("torch")]
    return [f"torch=={TORCH}+cpu", *reqs, *TOOLS]


def lock(version: str) -> Path:
    """Resolve for CPython ``version`` and write constraints/py3XX.txt."""
    tag = version.replace(".", "")
    with tempfile.TemporaryDirectory() as tmp:
        stand_in_torch(Path(tmp))
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
               "--ignore-installed", "--report", str(report), "--target", str(Path(tmp) / "t"),
               "--python-version", version, "--implementation", "cp", "--abi", f"cp{tag}",
               *(a for p in PLATFORMS for a in ("--platform", p)), "--only-binary=:all:",
               "--find-links", tmp, *requirements()]
        subprocess.run(cmd, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = sorted((re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(),  # PEP 503
                   i["metadata"]["version"]) for i in installs)
    lines = [f"{name}=={TORCH if name == 'torch' else ver}" for name, ver in pins]
    out = ROOT / "constraints" / f"py{tag}.txt"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"# Python {version}: written by `make lock` (.ci/lock.py); do not edit.\n"
                   + "\n".join(lines) + "\n")
    return out


def main(versions: list[str]) -> int:
    for v in versions or ["3.10", "3.11", "3.12"]:
        print(f"locked Python {v}: {lock(v).relative_to(ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
