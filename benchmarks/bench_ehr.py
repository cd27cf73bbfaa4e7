"""What the EHR routes cost on the bundle `make run` trains: printed table.

    .venv/bin/python benchmarks/bench_ehr.py                  # ~2 minutes
    .venv/bin/python benchmarks/bench_ehr.py --requests 300 --clients 50

One service (`bentoml serve`, OMP_NUM_THREADS=1, a free loopback port) and, beside it, a local
FHIR server (SEKMET) holding the same patients as survey Observations. For the same histories
(``--clients`` clients of the `make run` cohort, PHQ-9 with item 9, GAD-7 and SRS, each
request one client, taken in turn), sequential requests on one connection:

* ``/v1/noop``: the floor (auth and routing);
* ``/v1/assess``: the JSON request;
* ``/v1/fhir/assess``: the same history as a Bundle of QuestionnaireResponses;
* CDS Hooks ``patient-view`` with prefetch (the same resources), a signed ES384 token per
  call (signed before timing);
* CDS Hooks without prefetch: OnTrack fetches the patient's Observations from the FHIR server.

Target: the CDS Hooks round trip with prefetch costs at most 2x ``/v1/assess`` for the same
history (p50). Medians and ratios are from this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_service as bs  # noqa: E402
import httpx  # noqa: E402
from rich.table import Table  # noqa: E402

from serving.fhir.measures import bundle, client_resources  # noqa: E402
from tests.ehr_fixtures import (  # noqa: E402
    FHIR_TOKEN,
    fhir_server,
    make_key,
    put_resources,
    token,
)

ISS = "https://ehr.bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=50)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ontrack-bench-ehr-"))
    store, cohort = bs.champion_store(None, None, tmp)
    request = bs.cohort_request(cohort, args.clients)
    clients = request["clients"]
    for c in clients:  # FHIR resources carry dates; give the JSON the same ones
        for n, s in enumerate(c["sessions"]):
            s["date"] = f"2025-{1 + n // 4:02d}-{1 + 7 * (n % 4):02d}"
    key = make_key("ES384", "bench-1")

    with fhir_server(tmp / "fhir") as fhir:
        pids = [f"b{i}" for i in range(len(clients))]
        qrs = [client_resources(p, c) for p, c in zip(pids, clients, strict=True)]
        obs = [client_resources(p, c, kind="Observation")
               for p, c in zip(pids, clients, strict=True)]
        put_resources(fhir, [{"resourceType": "Patient", "id": p} for p in pids]
                      + [r for rs in obs for r in rs])
        (tmp / "issuers.json").write_text(json.dumps({"issuers": [
            {"iss": ISS, "clinic": "bench", "jwks": {"keys": [key.public_jwk]},
             "fhir_servers": [fhir]}]}))
        env, api_key, _, _ = bs.service_setup(tmp, "bench", store, cohort, extra={
            "ONTRACK_CDS_ISSUERS_PATH": str(tmp / "issuers.json"),
            "ONTRACK_CDS_REPLAY_PATH": str(tmp / "jti.sqlite")})
        port = bs.free_port()
        env["ONTRACK_PUBLIC_URL"] = f"http://127.0.0.1:{port}"
        bs.free_port = lambda: port  # start_server picks this port
        proc, url = bs.start_server(env)
        try:
            rows = run(url, api_key, key, fhir, pids, clients, qrs, args.requests)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    table(rows, args)


def run(url, api_key, key, fhir, pids, clients, qrs, n) -> list[tuple[str, list[float]]]:
    cds = f"{url}/cds-services/ontrack-patient-view"
    auth = {"fhirServer": fhir, "fhirAuthorization": {
        "access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Observation.read", "subject": "ontrack"}}

    def hook(i: int, prefetch: bool) -> dict:
        body = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/1", "patientId": pids[i]}}
        if prefetch:
            body["prefetch"] = {"responses": bundle(qrs[i], "searchset"),
                                "observations": bundle([], "searchset")}
        else:
            body.update(auth)
        return body

    bodies = {
        "/v1/noop": lambda i: ("/v1/noop", b"{}", {}),
        "/v1/assess": lambda i: ("/v1/assess", json.dumps({"clients": [clients[i]]}).encode(),
                                 {"Content-Type": "application/json"}),
        "/v1/fhir/assess": lambda i: ("/v1/fhir/assess", json.dumps(bundle(qrs[i])).encode(),
                                      {"Content-Type": "application/fhir+json"}),
        "CDS Hooks, prefetch": lambda i: (cds, json.dumps(hook(i, True)).encode(), {}),
        "CDS Hooks, fetched from the FHIR server": lambda i: (
            cds, json.dumps(hook(i, False)).encode(), {}),
    }
    out = []
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        for name, make in bodies.items():
            reqs = [make(i % len(clients)) for i in range(n + 20)]
            if name.startswith("CDS"):  # one fresh token per call, signed before timing
                reqs = [(p, b, {"Authorization": f"Bearer {token(key, ISS, cds)}",
                                "Content-Type": "application/json"}) for p, b, _ in reqs]
            times = []
            for k, (path, body, headers) in enumerate(reqs):
                t0 = time.perf_counter()
                r = client.post(path, content=body, headers=headers)
                dt = time.perf_counter() - t0
                assert r.status_code == 200, (name, r.status_code, r.text[:300])
                if name.startswith("CDS"):
                    assert r.json()["cards"], name
                if k >= 20:  # the first 20 warm up
                    times.append(dt)
            out.append((name, times))
    return out


def table(rows, args) -> None:
    base = next(bs.pct(t, 50) for name, t in rows if name == "/v1/assess")
    t = Table(title=f"EHR routes, one client per request ({args.requests} requests each, "
              f"{args.clients} different histories, sequential)")
    for col in ("route", "p50 ms", "p99 ms", "p50 / /v1/assess"):
        t.add_column(col, justify="left" if col == "route" else "right")
    for name, times in rows:
        t.add_row(name, f"{bs.pct(times, 50):.2f}", f"{bs.pct(times, 99):.2f}",
                  f"{bs.pct(times, 50) / base:.2f}")
    bs.console.print(t)
    cds = next(bs.pct(t, 50) for name, t in rows if name == "CDS Hooks, prefetch")
    verdict = "met" if cds <= 2 * base else "NOT met"
    bs.console.print(f"target: CDS Hooks with prefetch <= 2 x /v1/assess (p50): "
                     f"{cds:.2f} vs {2 * base:.2f} ms: {verdict}")


if __name__ == "__main__":
    main()
