"""Every clinical threshold is a named constant in one module, with its source or marked as an
OnTrack heuristic, and docs/thresholds.md lists exactly what the code holds."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from features.instruments import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("make_thresholds", ROOT / "docs" / "make_thresholds.py")
make_thresholds = importlib.util.module_from_spec(spec)
sys.modules["make_thresholds"] = make_thresholds  # its dataclass looks itself up there
spec.loader.exec_module(make_thresholds)

CONSTANTS = make_thresholds.constants()
#: A citation: an author and a year, e.g. "Hannan et al. (2005)" or "Jacobson & Truax 1991".
CITATION = re.compile(r"\b[A-Z][a-z]+\b.{0,60}?\b(19|20)\d\d\b")


def test_the_page_lists_what_the_code_holds():
    page = (ROOT / "docs" / "thresholds.md").read_text(encoding="utf-8")
    assert page == make_thresholds.render(), "run: uv run python docs/make_thresholds.py"


def test_the_module_holds_the_thresholds_the_decisions_read():
    names = {c.name for c in CONSTANTS}
    assert {"DEFAULT_BUDGET", "BY_SESSION", "EXIT_MARGIN", "EXIT_SESSIONS", "RED_IN_A_ROW",
            "DROPOUT_PROMPT", "HIGH_SEVERITY", "MIN_SIMILAR", "BAND_COVERAGE"} <= names


@pytest.mark.parametrize("c", CONSTANTS, ids=lambda c: c.name)
def test_every_threshold_names_its_source_or_says_it_is_a_heuristic(c):
    assert c.comment, f"{c.name} has no #: comment"
    assert "OnTrack heuristic" in c.comment or CITATION.search(c.comment), (
        f"{c.name}: the comment names no source (author and year) and does not say "
        f"'OnTrack heuristic': {c.comment!r}")


def test_no_other_module_defines_a_threshold_again():
    names = {c.name for c in CONSTANTS}
    again = []
    for layer in ("features", "models", "training", "serving"):
        for path in (ROOT / layer).rglob("*.py"):
            if path == make_thresholds.MODULE:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    again += [f"{path.relative_to(ROOT)}: {t.id}" for t in targets
                              if isinstance(t, ast.Name) and t.id in names]
    assert not again, f"defined outside features/thresholds.py: {again}"


@pytest.mark.parametrize("inst", [i for i in REGISTRY.values()
                                  if i.cutoff is not None or i.rci is not None], ids=lambda i: i.code)
def test_every_published_instrument_constant_has_a_source(inst):
    assert CITATION.search(inst.source) or "OQ Measures" in inst.source, inst.source
