"""benchmarks/results.py writes RESULTS.md sections that README can link to (#key)."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.results as results


def test_a_new_section_gets_its_anchor_once_and_a_rerun_replaces_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(results, "RESULTS_MD", tmp_path / "RESULTS.md")
    results.write_section("abc", "A title", "first")
    results.write_section("abc", "A title", "second")
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count('<a id="abc"></a>\n<!-- abc:begin -->') == 1
    assert "second" in text and "first" not in text
