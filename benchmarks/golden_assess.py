"""Guard for work on the assessment's speed: every output field of `Bundle.assess` on the
bundle `make run` trains, written once and compared after a change (numbers to 1e-9, every
string and structure exactly).

    .venv/bin/python benchmarks/golden_assess.py --write /tmp/golden.json
    .venv/bin/python benchmarks/golden_assess.py --compare /tmp/golden.json

Clients: the first N of the `make run` cohort (data/demo/sessions.csv, N = 5,000 by default),
assessed in one call, then the first 200 again one at a time (small requests take the same
path; both must match the batch). The store is the repository's `mlflow/` (fill it with
`ontrack demo --no-serve`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import track  # noqa: E402

console = Console()


def outputs(n: int, singles: int, cohort: Path) -> dict:
    import models.assess  # noqa: F401  (the module under test, imported before the bundle)
    from features.contract import load_cohort
    from serving.loader import load
    from serving.settings import ServingSettings

    bundle = load(ServingSettings()).bundle
    sessions = load_cohort(cohort).sessions
    ids = pd.unique(sessions["client_id"])[:n]
    sub = sessions[sessions["client_id"].isin(set(ids))].reset_index(drop=True)
    batch = {a.client_id: a.model_dump(mode="json") for a in bundle.assess(sub)}
    one = {}
    for cid in track(ids[:singles], description="one client at a time", console=console):
        rows = sub[sub["client_id"] == cid].reset_index(drop=True)
        (a,) = bundle.assess(rows)
        one[a.client_id] = a.model_dump(mode="json")
    return {"batch": batch, "one": one}


def diff(a, b, path: str, out: list[str]) -> None:
    if len(out) > 2000:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: present on one side only")
            else:
                diff(a[k], b[k], f"{path}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} vs {len(b)} entries")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool):
        if not (math.isclose(a, b, rel_tol=0, abs_tol=1e-9) or (a != a and b != b)):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--compare", type=Path)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--cohort", type=Path, default=REPO / "data" / "demo")
    args = ap.parse_args()
    got = outputs(args.n, args.singles, args.cohort)
    problems: list[str] = []
    for cid, a in got["one"].items():  # one at a time must equal the batch
        diff(got["batch"][cid], a, f"one[{cid}]", problems)
    if args.write:
        args.write.write_text(json.dumps(got))
        console.print(f"wrote {len(got['batch'])} assessments to {args.write}")
    else:
        want = json.loads(args.compare.read_text())
        diff(want, got, "", problems)
        console.print(f"compared {len(got['batch'])} + {len(got['one'])} assessments")
    for p in problems[:int(os.environ.get("GOLDEN_SHOW", 20))]:
        console.print(f"[red]{p}")
    if problems:
        sys.exit(1)
    console.print("[green]identical")


if __name__ == "__main__":
    main()
