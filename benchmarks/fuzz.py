"""Property-based fuzzing of the service on the bundle `make run` trains: printed table.

    .venv/bin/python benchmarks/fuzz.py                    # ~11 minutes, >= 10,000 requests
    .venv/bin/python benchmarks/fuzz.py --examples 100     # a shorter run

schemathesis generates requests from the service's own OpenAPI document (`/docs.json`, as
completed by serving/openapi.py) for every operation: valid and invalid bodies, headers and
methods, in all its phases (examples, coverage, fuzzing, stateful), and runs every check but
``positive_data_acceptance`` (why: tests/test_fuzz.py) on each answer: no server error,
status code and content type documented, response body as documented, and the rest. The
service runs with `bentoml serve` on a free loopback port with a valid key (tables: requests
and answers by operation, answers by status, failures by check), then a sentinel sweep of the
service's log: the key, and every client id and patient id schemathesis sent. A random seed
each run, printed, so a run can be repeated with ``--seed``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_service as bs  # noqa: E402
from rich.table import Table  # noqa: E402

from tests.service_fixtures import (  # noqa: E402
    free_port,
    sentinel_hits,
    start_service,
    stop_service,
)
from tests.test_fuzz import LEFT_OUT, schemathesis_command  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=1000,
                    help="schemathesis --max-examples per operation and phase")
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    bs.console.print(f"seed {seed}")
    tmp = Path(tempfile.mkdtemp(prefix="ontrack-fuzz-"))
    env, key, _, _ = bs.service_setup(tmp, "fuzz")
    log = tmp / "server.log"
    proc, url = start_service(env, free_port(), log)
    reports = tmp / "reports"
    try:
        cmd = schemathesis_command(url, key, args.examples, seed, reports)
        cmd[cmd.index("junit")] = "junit,ndjson"
        got = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        stop_service(proc)
    table(reports, got.returncode)
    sweep(reports, log, key)


#: Request fields that carry a client's identity (what must never reach a log).
_IDENTIFYING = {"client_id", "patientId"}


def _identities(value, out: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in _IDENTIFYING and isinstance(v, str) and len(v.strip()) >= 6:
                out.add(v)
            _identities(v, out)
    elif isinstance(value, list):
        for v in value:
            _identities(v, out)


def sweep(reports: Path, log: Path, key: str) -> None:
    """The service log against the key and every client id and patient id (of six or more
    characters) that schemathesis sent."""
    import re

    sent: set[str] = set()
    for line in next(reports.glob("*.ndjson")).open():
        done = json.loads(line).get("ScenarioFinished")
        for case in ((done or {}).get("recorder", {}).get("cases") or {}).values():
            _identities(case.get("value", {}), sent)
    needles = {"the key": re.escape(key)}
    hits = sentinel_hits([log], needles)
    text = log.read_text(errors="replace")
    # the access log names each request's path; schemathesis draws path parameters (a CDS
    # service id, a problem type) from the same strings as client ids, and no OnTrack route
    # has client data in its path, so ids are looked for outside the paths
    paths = re.findall(r"path=(.*?),type=", text)
    rest = re.sub(r"path=.*?,type=", "path=,type=", text)
    hits[f"client and patient ids sent ({len(sent):,})"] = sum(v in rest for v in sent)
    hits["  ... the same strings as a path parameter"] = sum(
        any(v in p for p in paths) for v in sent)
    t = Table(title=f"Sentinel sweep of the service log ({log.stat().st_size:,} bytes)")
    t.add_column("sentinel")
    t.add_column("hits", justify="right")
    for name, n in hits.items():
        t.add_row(name, str(n))
    bs.console.print(t)


def table(reports: Path, returncode: int) -> None:
    by_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    statuses: collections.Counter = collections.Counter()
    for line in next(reports.glob("*.ndjson")).open():
        event = json.loads(line)
        done = event.get("ScenarioFinished")
        if not done:
            continue
        label = done.get("recorder", {}).get("label", "?")
        for interaction in (done.get("recorder", {}).get("interactions") or {}).values():
            response = interaction.get("response") or {}
            status = response.get("status_code")
            by_op[label]["requests"] += 1
            statuses[status if status is not None else "no answer"] += 1
            if isinstance(status, int) and status >= 500:
                by_op[label]["5xx"] += 1
    failures: collections.Counter = collections.Counter()
    failed_ops: collections.Counter = collections.Counter()
    for case in ET.parse(next(reports.glob("*.xml"))).getroot().iter("testcase"):
        for f in case.iter("failure"):
            for code in (f.get("message") or "?").split(","):
                failures[code.strip()] += 1
            failed_ops[case.get("name")] += 1

    t = Table(title="Fuzzing the service from its OpenAPI document (schemathesis, all checks "
              f"but {LEFT_OUT})")
    for col in ("operation", "requests", "5xx answers", "failed checks"):
        t.add_column(col, justify="left" if col == "operation" else "right")
    for op in sorted(by_op):
        t.add_row(op, f"{by_op[op]['requests']:,}", str(by_op[op]["5xx"]),
                  str(failed_ops.get(op, 0)))
    total = sum(c["requests"] for c in by_op.values())
    t.add_row("all", f"{total:,}", str(sum(c["5xx"] for c in by_op.values())),
              str(sum(failed_ops.values())))
    bs.console.print(t)
    s = Table(title="Answers by status")
    s.add_column("status")
    s.add_column("answers", justify="right")
    for status, n in sorted(statuses.items(), key=lambda kv: str(kv[0])):
        s.add_row(str(status), f"{n:,}")
    bs.console.print(s)
    if failures:
        f = Table(title="Failures by check")
        f.add_column("check")
        f.add_column("failures", justify="right")
        for code, n in failures.most_common():
            f.add_row(code, str(n))
        bs.console.print(f)
    verdict = "met" if total >= 10_000 and not failures and returncode == 0 else "NOT met"
    bs.console.print(f"target: >= 10,000 requests, 0 server errors, 0 failed checks: "
                     f"{total:,} requests, {sum(failures.values())} failures: {verdict}")


if __name__ == "__main__":
    main()
