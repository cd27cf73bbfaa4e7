"""CI smoke test of the main flow: `ontrack demo` on a small cohort, then the service it leaves
running answers the printed example call with an explained assessment."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.service_fixtures import REPO, free_port, service_env


@pytest.mark.slow
def test_main_flow_on_a_small_cohort_then_the_example_call(tmp_path):
    store = tmp_path / "mlflow"
    env = {**os.environ, **service_env(tmp_path, f"sqlite:///{store / 'mlflow.db'}"),
           "ONTRACK_MLFLOW_DIR": str(store), "OMP_NUM_THREADS": "1",
           "ONTRACK_DEMO_PATH": str(tmp_path / "demo" / "sessions.csv"), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    port = free_port()
    # fewer bootstrap resamples and oracle clients than `make run`: the flow is the same, the
    # intervals wider (the oracle costs about 27 ms of compute per client)
    cmd = [sys.executable, "-m", "training.cli", "demo", "--clients", "800", "--seed", "3",
           "--out", str(tmp_path / "demo"), "--port", str(port), "--bootstrap", "20",
           "--oracle-clients", "150"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 600
        example = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            lines.append(line)
            if lines[-2:-1] and lines[-2].startswith("Example call:"):
                example = line.strip()
                break
        out = "".join(lines)
        assert example, f"no example call printed:\n{out[-4000:]}"
        for expected in ("valid", "NHS Talking Therapies", "registered ontrack-not-risk",
                         "gate:", f"http://127.0.0.1:{port}/ui/"):
            assert expected in out, expected
        # run the printed call as the README says (curl's arguments, sent with httpx)
        args = shlex.split(example)
        url = args[args.index("-X") + 2]
        headers = dict(h.split(": ", 1) for h in
                       (args[i + 1] for i, a in enumerate(args) if a == "-H"))
        body = json.loads(open(args[args.index("--data") + 1].lstrip("@")).read())
        r = httpx.post(url, json=body, headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        a = r.json()["assessments"][0]
        assert a["explanation"]["drivers"] and a["signal"]["reason"]
        assert a["safety"]["status"] in {"flag", "not_endorsed", "not_assessed"}
        assert a["flag"]["state"] in {"new", "continuing", "cleared", "none"}
        assert a["flag"]["reason"] and a["flag"]["context"]
        assert re.match(r"\d+", str(a["risk"]["model_version"]).split("/")[-1])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
