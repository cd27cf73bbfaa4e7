"""Property-based fuzzing of the running service from its own OpenAPI document (schemathesis):
every operation, valid and invalid requests, every check schemathesis has but one, against a
real `bentoml serve` on loopback with a valid key.

The check left out: ``positive_data_acceptance`` (a request that fits the JSON Schema must be
accepted). The data contract's rules depend on other fields (a score's range is its
instrument's, sessions must increase, items must sum to the total) and cannot be written in
JSON Schema, so schema-valid requests are rightly refused with 422, which the document states.

A short run with a fixed seed here (a regression test); the long run, with the table, is
benchmarks/fuzz.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service_fixtures import served_service

pytestmark = pytest.mark.slow

LEFT_OUT = "positive_data_acceptance"


def schemathesis_command(url: str, key: str, examples: int, seed: int | None,
                         report_dir: Path) -> list[str]:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    cmd = [exe, "run", f"{url}/docs.json", "--wait-for-schema", "60",
           "-H", f"Authorization: Bearer {key}", "--checks", "all", "--exclude-checks",
           LEFT_OUT, "-n", str(examples), "--report", "junit", "--report-dir", str(report_dir),
           "--no-color",
           # no example database: with one, hypothesis keeps a Pareto front of the examples it
           # has seen and compares each new case with it, which on the nested request body
           # grows until it sends less than one request a second
           "--generation-database", "none"]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    return cmd


def test_the_openapi_document_holds_for_generated_requests(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    with served_service(root, "clinic-fuzz") as srv:
        got = subprocess.run(schemathesis_command(srv["url"], srv["key"], 15, 1, root / "rep"),
                             capture_output=True, text=True, timeout=900)
        log = srv["log"].read_text()
    summary = got.stdout[-4000:]
    assert got.returncode == 0, summary
    assert "generated" in summary and "passed" in summary
    assert "Traceback" not in log  # no request made the service fail
