"""Serving commands for `ontrack`: serve, build, keys (add/list/revoke), audit (export).

`register(app)` is the `ontrack.commands` entry point (pyproject.toml), called by the `ontrack`
command at start; nothing here imports training code, or BentoML at import time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated

import typer

from serving.settings import REPO_ROOT, ServingSettings

DEV_CLINIC = "development"
SERVICE = "serving.service:OnTrack"
BENTOFILE = REPO_ROOT / "serving" / "bentofile.yaml"
REQUIREMENTS = REPO_ROOT / "serving" / "requirements.txt"


def _settings() -> ServingSettings:
    try:
        return ServingSettings()
    except ValueError as err:  # pydantic ValidationError: a wrong ONTRACK_* setting
        typer.echo(f"error: invalid settings: {err}", err=True)
        raise typer.Exit(2) from None


def service_env(settings: ServingSettings) -> dict[str, str]:
    """Environment for BentoML and the service process (set before BentoML is imported)."""
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(settings.bentoml_home))
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("OMP_NUM_THREADS", str(settings.num_threads))
    env.setdefault("ONTRACK_TRACKING_URI", settings.resolved_tracking_uri())
    workers = f"services.ontrack.workers={settings.workers}"  # overrides the decorator's 1
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(
        x for x in (env.get("BENTOML_CONFIG_OPTIONS", ""), workers) if x)
    return env


def _use_env(settings: ServingSettings) -> None:
    for k, v in service_env(settings).items():
        os.environ.setdefault(k, v)


def ensure_in_store(settings: ServingSettings, force: bool = False):
    """The registry model named by settings, in the BentoML store (imported when missing or
    when the store holds another registry version)."""
    import bentoml

    from serving.loader import ModelNotFoundError, import_to_bentoml, resolve_version

    try:
        mv = resolve_version(settings)
    except ModelNotFoundError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    uri = settings.resolved_tracking_uri()
    if not force:
        try:
            current = bentoml.models.get(settings.bento_model_tag)
            meta = current.info.metadata
            if (meta.get("registry_version") == str(mv.version)
                    and meta.get("tracking_uri") == uri):
                return current
        except bentoml.exceptions.NotFound:
            pass
    model = import_to_bentoml(settings)
    return model


def example_call(url: str, key: str, example_path: Path) -> str:
    return (f"curl -s -X POST {url}/v1/assess -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' --data @{example_path}")


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0
                ) -> tuple[bool, str]:
    """(True, "") once /readyz answers 200; else (False, the last reason it gave)."""
    deadline = time.monotonic() + timeout
    reason = "it did not answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False, "it exited"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return True, ""
        except urllib.error.HTTPError as err:  # 503 with the reason (serving.readiness)
            try:
                body = json.loads(err.read())
                reason = f"{body['reason']}: {body['message']}"
            except (ValueError, KeyError, TypeError):
                reason = f"/readyz answered {err.code}"
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False, reason


def serve_command(host: str | None = None, port: int | None = None,
                  dev_key: bool = True, after_ready=None) -> None:
    """Start the prediction service (the registry model named by settings) and block."""
    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    _use_env(settings)
    ensure_in_store(settings)
    from serving.auth import KeyStore
    from serving.schemas import EXAMPLE_INPUT

    key = None
    if dev_key and settings.environment == "development":
        store = KeyStore(settings.keys_path)
        store.revoke(DEV_CLINIC)
        key = store.add(DEV_CLINIC)
        store.close()
    example = settings.keys_path.parent / "example_request.json"
    example.parent.mkdir(parents=True, exist_ok=True)
    example.write_text(json.dumps(EXAMPLE_INPUT, indent=1))
    cmd = [sys.executable, "-m", "bentoml", "serve", SERVICE, "--host", host,
           "--port", str(port), "--working-dir", str(REPO_ROOT)]
    proc = subprocess.Popen(cmd, env=service_env(settings), cwd=REPO_ROOT)

    def _stop(signum, _frame) -> None:  # SIGTERM to `ontrack serve` stops the server too
        proc.terminate()
        raise typer.Exit(0)

    signal.signal(signal.SIGTERM, _stop)
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else host
    url = f"http://{shown}:{port}"
    try:
        ready, reason = _wait_ready(url, proc)
        if not ready:
            typer.echo(f"error: the service did not become ready ({reason}; see the log "
                       "above)", err=True)
            proc.terminate()
            raise typer.Exit(1)
        typer.echo(f"\nOnTrack is running at {url}  (API docs: {url}/ , model card: "
                   f"{url}/v1/model)")
        typer.echo(f"Therapist web view: {url}/ui/")
        if key:
            typer.echo(f"Development key (clinic '{DEV_CLINIC}', shown once): {key}")
            typer.echo(f"Example call:\n  {example_call(url, key, example)}")
        else:
            typer.echo("Create a key with `ontrack keys add CLINIC`; example call:\n  "
                       + example_call(url, "<key>", example))
        if after_ready is not None:
            after_ready(url)
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="API keys per clinic (only hashes are stored).",
                           no_args_is_help=True)
    audit_app = typer.Typer(help="The append-only audit log of assessments.",
                            no_args_is_help=True)
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")

    @app.command("ehr-demo")
    def ehr_demo(
        patients: Annotated[int, typer.Option(help="Demo patients loaded into the local EHR.",
                                              min=1, max=500)] = 20,
        port: Annotated[int | None, typer.Option(help="OnTrack's port.")] = None,
        fhir_port: Annotated[int | None, typer.Option(help="The local FHIR server's port "
                                                      "(default: a free one).")] = None,
        token_only: Annotated[bool, typer.Option("--token", help="Print a fresh CDS Hooks "
                                                 "token for the running demo, then exit.")
                              ] = False,
    ) -> None:
        """A local EHR beside OnTrack (development): a FHIR server holding demo patients'
        measures, an EHR key OnTrack trusts for CDS Hooks, and a ready CDS Hooks request."""
        from serving import ehrdemo
        from serving.fhir.measures import client_resources

        settings = _settings()
        root = settings.keys_path.parent / "ehr-demo"
        port = port or settings.port
        public = f"http://127.0.0.1:{port}"
        service_url = f"{public}/cds-services/ontrack-patient-view"
        if token_only:
            pem = root / "ehr_es384.pem"
            if not pem.exists():
                typer.echo("error: no demo EHR key yet: start `ontrack ehr-demo` first", err=True)
                raise typer.Exit(1)
            key = ehrdemo.EhrKey(pem.read_bytes(), {}, "ES384", "demo-1")
            typer.echo(ehrdemo.token(key, ehrdemo.DEMO_ISSUER, service_url))
            return
        if not settings.demo_path.exists():
            typer.echo(f"error: no demo cohort at {settings.demo_path}: run `make run` (or "
                       "`ontrack demo --no-serve`) first", err=True)
            raise typer.Exit(1)
        people = ehrdemo.demo_patients(settings.demo_path, patients)
        try:
            with ehrdemo.fhir_server(root / "fhir", fhir_port) as base:
                resources = [{"resourceType": "Patient", "id": pid} for pid, _ in people]
                for pid, client in people:
                    resources += client_resources(pid, client, kind="Observation")
                ehrdemo.put_resources(base, resources)
                ehrdemo.prepare(root, public, base)
                hook = root / "hook.json"
                hook.write_text(json.dumps(ehrdemo.hook_request(people[0][0], base), indent=1))
                os.environ.update({
                    "ONTRACK_CDS_ISSUERS_PATH": str(root / "cds_issuers.json"),
                    "ONTRACK_CDS_REPLAY_PATH": str(root / "cds_jti.sqlite"),
                    "ONTRACK_PUBLIC_URL": public})

                def show(url: str) -> None:
                    rel = hook.relative_to(REPO_ROOT) if hook.is_relative_to(REPO_ROOT) else hook
                    typer.echo(f"\nLocal EHR (FHIR R4): {base}  ({len(people)} patients: "
                               f"{people[0][0]} ... {people[-1][0]}, {len(resources)} "
                               "resources)")
                    typer.echo(f"CDS Hooks discovery: {url}/cds-services")
                    typer.echo("A CDS Hooks call (OnTrack reads the measures from the EHR):\n"
                               f"  TOKEN=$(uv run ontrack ehr-demo --token --port {port})\n"
                               f"  curl -s -X POST {service_url} -H \"Authorization: Bearer "
                               "$TOKEN\" -H 'Content-Type: application/json' --data "
                               f"@{rel}")

                serve_command(port=port, after_ready=show)
        except RuntimeError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    @app.command()
    def score(
        data: Annotated[Path, typer.Option(help="A cohort: a folder in the client-partition "
                                           "layout (ontrack simulate --partitions), a folder "
                                           "with sessions/clients CSV or Parquet, or one "
                                           "sessions file.")],
        out: Annotated[Path, typer.Option(help="Output folder (new or empty; or the folder "
                                          "of the run named by --run-id).")],
        model: Annotated[str, typer.Option(help="Model URI (an alias is pinned to its "
                                           "version when the job starts).")]
        = "models:/ontrack-not-risk@champion",
        scheduler: Annotated[str, typer.Option(help="'local' (a Dask LocalCluster on this "
                                               "machine) or a Dask scheduler address, "
                                               "e.g. tcp://10.0.0.5:8786.")] = "local",
        partitions: Annotated[int, typer.Option(help="Client partitions when the input is "
                                                "split here (0: about 10,000 clients "
                                                "each).", min=0)] = 0,
        workers: Annotated[int, typer.Option(help="Worker processes of the local cluster.",
                                             min=1)] = max(1, os.cpu_count() or 1),
        run_id: Annotated[str | None, typer.Option(help="Finish this earlier run (its "
                                                   "finished partitions are kept).")] = None,
        skip_invalid: Annotated[bool, typer.Option(help="Skip clients with invalid rows "
                                                   "(reported) instead of refusing the "
                                                   "run.")] = False,
    ) -> None:
        """Assess a whole cohort on Dask: Parquet scores per client partition, a report of
        invalid rows, and an MLflow run with the flag rate by clinic (docs/scale.md)."""
        from rich.console import Console

        from serving.score import ScoreError, ScoreJob, run, summary_table

        console = Console(stderr=False)
        job = ScoreJob(data=data, out=out, model_uri=model, scheduler=scheduler,
                       partitions=partitions, run_id=run_id, skip_invalid=skip_invalid,
                       workers=workers)
        try:
            result = run(job, console)
        except ScoreError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        console.print(summary_table(result))
        if result.status == "refused":
            typer.echo("error: the cohort has invalid rows (listed above); no scores were "
                       "written. Correct them, or pass --skip-invalid to score the other "
                       "clients.", err=True)
            raise typer.Exit(1)
        console.print(f"scores: {out / 'scores'}; run id {result.run_id}")

    @app.command()
    def serve(
        host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
        port: Annotated[int | None, typer.Option(help="Port.")] = None,
        dev_key: Annotated[bool, typer.Option(help="Development only: replace the "
                                              "development clinic's key and print it.")] = True,
    ) -> None:
        """Start the prediction service (the registry model named by settings)."""
        serve_command(host=host, port=port, dev_key=dev_key)

    @app.command()
    def build(
        force: Annotated[bool, typer.Option(help="Re-import the model even if the store "
                                            "holds the same version.")] = False,
    ) -> None:
        """Import the registry model into the BentoML store and build a Bento."""
        settings = _settings()
        _use_env(settings)
        model = ensure_in_store(settings, force=force)
        typer.echo(f"model in the BentoML store: {model.tag}")
        out = subprocess.run([sys.executable, "-m", "uv", "export", "--frozen", "--no-dev",
                              "--no-hashes", "--no-emit-project", "--no-header", "-q",
                              "-o", str(REQUIREMENTS)], cwd=REPO_ROOT, capture_output=True,
                             text=True)
        if out.returncode != 0:
            out = subprocess.run(["uv", "export", "--frozen", "--no-dev", "--no-hashes",
                                  "--no-emit-project", "--no-header", "-q", "-o",
                                  str(REQUIREMENTS)], cwd=REPO_ROOT, capture_output=True,
                                 text=True)
        if out.returncode != 0:
            typer.echo(f"error: could not export requirements from uv.lock: {out.stderr}",
                       err=True)
            raise typer.Exit(1)
        res = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", str(BENTOFILE),
                              "-o", "tag", str(REPO_ROOT)], cwd=REPO_ROOT,
                             env=service_env(settings), capture_output=True, text=True)
        if res.returncode != 0:
            typer.echo(res.stdout + res.stderr, err=True)
            raise typer.Exit(1)
        tag = res.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
        typer.echo(f"Bento built: {tag}\nContainerise (needs a Docker engine): "
                   f"BENTOML_HOME={os.environ['BENTOML_HOME']} bentoml containerize {tag}")

    @keys_app.command("add")
    def keys_add(
        clinic: Annotated[str, typer.Argument(help="Clinic the key belongs to.")],
        scope: Annotated[list[str] | None, typer.Option(
            help="assess (default) or benchmark (/v1/noop only).")] = None,
    ) -> None:
        """Create a key; the key is printed once, as the last line, and only its hash kept."""
        from serving.auth import KeyStore

        settings = _settings()
        store = KeyStore(settings.keys_path)
        try:
            key = store.add(clinic, tuple(scope or ("assess",)))
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"key for clinic {clinic!r} (store it now: it cannot be shown again):")
        typer.echo(key)

    @keys_app.command("list")
    def keys_list() -> None:
        """List keys (id, clinic, scopes, created, revoked); never the keys themselves."""
        from serving.auth import KeyStore

        for k in KeyStore(_settings().keys_path).list():
            typer.echo(f"{k.key_id}  {k.clinic}  {' '.join(k.scopes)}  created {k.created}"
                       + (f"  REVOKED {k.revoked}" if k.revoked else "  active"))

    @keys_app.command("revoke")
    def keys_revoke(
        key_id_or_clinic: Annotated[str, typer.Argument(help="A key id (from `keys list`) "
                                                        "or a clinic (all its keys).")],
    ) -> None:
        """Revoke a key, or every active key of a clinic."""
        from serving.auth import KeyStore

        n = KeyStore(_settings().keys_path).revoke(key_id_or_clinic)
        if n == 0:
            typer.echo(f"error: no active key matches {key_id_or_clinic!r}", err=True)
            raise typer.Exit(1)
        typer.echo(f"revoked {n} key{'s' if n != 1 else ''}")

    @audit_app.command("export")
    def audit_export(
        out: Annotated[Path | None, typer.Option(help="Output file (default stdout).")] = None,
        format: Annotated[str, typer.Option(help="csv or jsonl.")] = "csv",
        since: Annotated[str | None, typer.Option(help="ISO time, e.g. 2025-01-01.")] = None,
    ) -> None:
        """Export the audit log (no scores or client ids: pseudonyms only)."""
        from serving.audit import AuditLog

        settings = _settings()
        log = AuditLog(settings.audit_path, settings.audit_secret.get_secret_value())
        if format not in {"csv", "jsonl"}:
            typer.echo("error: --format must be csv or jsonl", err=True)
            raise typer.Exit(2)
        if out is None:
            n = log.export(sys.stdout, format, since)
        else:
            with out.open("w", newline="") as f:
                n = log.export(f, format, since)
        typer.echo(f"{n} audit rows exported", err=True)
