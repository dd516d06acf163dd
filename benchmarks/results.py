"""Shared writer for benchmark results.

Every benchmark writes its raw numbers to ``benchmarks/results/<key>.json`` and its table
into one section of ``benchmarks/RESULTS.md``. Sections are delimited by HTML comments so
benchmarks can be rerun independently without clobbering each other's tables.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS_MD = ROOT / "RESULTS.md"
RESULTS_DIR = ROOT / "results"


def machine() -> dict[str, Any]:
    """Describe the machine a measurement came from (numbers are meaningless without it)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": commit,
    }


def write_json(key: str, data: dict[str, Any]) -> Path:
    """Write raw results plus the machine description to ``results/<key>.json``."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{key}.json"
    payload = {"machine": machine(), **data}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def write_section(key: str, title: str, markdown: str) -> Path:
    """Replace (or append) the section ``key`` of RESULTS.md with ``markdown``."""
    m = machine()
    body = (
        f"<!-- {key}:begin -->\n## {title}\n\n"
        f"_Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; "
        f"{m['date']}, commit {m['commit'] or 'uncommitted'}._\n\n"
        f"{markdown.strip()}\n<!-- {key}:end -->"
    )
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.exists() else (
        "# Benchmark results\n\nEach section is written by the script named in it; rerun "
        "the script to refresh it.\n"
    )
    pattern = re.compile(rf"<!-- {re.escape(key)}:begin -->.*?<!-- {re.escape(key)}:end -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:  # a new section, with the anchor README's links use (#key)
        text = text.rstrip() + f'\n\n<a id="{key}"></a>\n' + body
    RESULTS_MD.write_text(text.rstrip() + "\n", encoding="utf-8")
    return RESULTS_MD
