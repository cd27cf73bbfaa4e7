"""Writes docs/thresholds.md: every clinical threshold OnTrack uses, with its source.

Two tables, both read from the code so the page cannot drift from it: the named thresholds of
`features.thresholds` (each constant's ``#:`` comment is its description and source) and the
published constants of every instrument in `features.instruments.REGISTRY`. A test checks that
the committed page is what this script writes.

    uv run python docs/make_thresholds.py          # rewrite docs/thresholds.md
    uv run python docs/make_thresholds.py --check  # exit 1 when the page is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULE = ROOT / "features" / "thresholds.py"
PAGE = ROOT / "docs" / "thresholds.md"


@dataclass(frozen=True)
class Constant:
    name: str
    value: str
    section: str
    comment: str


def constants(path: Path = MODULE) -> list[Constant]:
    """The module-level constants of ``path`` in order, each with the ``#:`` comment lines
    directly above it and the ``# -- section`` heading it sits under."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    out = []
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        comment, k = [], node.lineno - 2
        while k >= 0 and lines[k].lstrip().startswith("#:"):
            comment.insert(0, lines[k].lstrip()[2:].strip())
            k -= 1
        section = next((ln.strip("# -").strip() for ln in reversed(lines[:node.lineno - 1])
                        if ln.startswith("# --")), "")
        out.append(Constant(node.targets[0].id, ast.unparse(node.value), section,
                            " ".join(comment)))
    return out


def _cell(v) -> str:
    if v is None or v == ():
        return "-"
    if isinstance(v, tuple):
        return ", ".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def render() -> str:
    from features.instruments import REGISTRY

    out = ["# Clinical thresholds", "",
           "Every threshold a flag, a safety message or a suggestion turns on, with its source or",
           "marked as an OnTrack heuristic (set by clinical judgement for a prompt or a policy, not",
           "fitted and not validated). Generated from the code by `docs/make_thresholds.py`; a test",
           "keeps this page current, so change the code, then run the script.", "",
           "## Decision thresholds (`features/thresholds.py`)"]
    section = None
    for c in constants():
        if c.section != section:
            section = c.section
            out += ["", f"**{section}**", "", "| name | value | what it is, and its source |",
                    "|---|---|---|"]
        out.append(f"| `{c.name}` | {c.value} | {c.comment.replace('|', '/')} |")
    out += ["", "## Published instrument constants (`features/instruments.py`)", "",
            "Cut-off: caseness is a score at or above it (below it for measures where higher is",
            "better). Reliable change: the smallest change in raw points that counts as reliable.",
            "Severe from: the lowest total of the published severe band. Risk items raise the",
            "safety flag whatever a model says. Verified: the value was confirmed from a primary",
            "source (`no` = kept with a flag, see the instrument notes).", "",
            "| instrument | role | cut-off | reliable change | severe from | risk items | "
            "alliance drop | checklist item cut-off | verified | source |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for i in REGISTRY.values():
        out.append(f"| {i.code} | {i.role.value} | {_cell(i.cutoff)} | {_cell(i.rci)} | "
                   f"{_cell(i.severe_from)} | {_cell(i.risk_items)} | {_cell(i.drop_alert)} | "
                   f"{_cell(i.item_cutoff)} | {'yes' if i.verified else 'no'} | "
                   f"{i.source.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the page is out of date")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            sys.exit(f"{PAGE.relative_to(ROOT)} is out of date: run docs/make_thresholds.py")
        return
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
