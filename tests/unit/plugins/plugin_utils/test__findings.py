"""docs/findings.md is checked against the catalogue of finding codes (_findings.CODES), and back."""
from __future__ import annotations

import os
import re

import pytest

from ansible_collections.llamafleet.fleet.plugins.plugin_utils._findings import CODES, finding
from tests.conftest import ROOT


def documented() -> dict[str, set[str]]:
    """code -> the levels its row names, from the table of docs/findings.md."""
    out: dict[str, set[str]] = {}
    with open(os.path.join(ROOT, "docs", "findings.md"), encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("| `"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            levels = set(re.findall(r"\b(error|warning|info)\b", cells[1]))
            for code in re.findall(r"`([a-z0-9-]+)`", cells[0]):
                out[code] = levels
    return out


def test_every_code_is_documented_with_its_levels_and_nothing_else_is():
    docs = documented()
    assert sorted(set(CODES) - set(docs)) == [], "codes the plan emits that docs/findings.md does not define"
    assert sorted(set(docs) - set(CODES)) == [], "codes docs/findings.md defines that nothing emits"
    assert {code: set(levels) for code, levels in CODES.items()} == docs


def test_a_code_outside_the_catalogue_is_refused():
    with pytest.raises(ValueError, match="not in the catalogue"):
        finding("error", "no-such-code", "h", None, "x")
    with pytest.raises(ValueError, match="at level 'error'"):
        finding("error", "partial-offload", "h", None, "x")   # a warning, never an error
    assert finding("warning", "partial-offload", "h", "chat-0", "m", model="x")["model"] == "x"
