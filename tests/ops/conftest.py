"""Real services for the operations tests: a throwaway PostgreSQL cluster and an `mlflow server`.

Both bind to 127.0.0.1 on free ports, run in their own process groups and are stopped (and their
folders removed) when the fixture ends, also when a test fails. PostgreSQL is used when its server
binaries are installed (`.ci/run` installs them); otherwise the MLflow server falls back to sqlite,
unless CKPTMERGE_REQUIRE_POSTGRES=1 (CI sets it once PostgreSQL is installed) makes that an error.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_TIMEOUT = 180  # a fresh PostgreSQL store runs MLflow's migrations: ~15 s here
PG_START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Where initdb/pg_ctl live: CKPTMERGE_PG_BINDIR, PATH, or Debian's /usr/lib/postgresql/N/bin."""
    env = os.environ.get("CKPTMERGE_PG_BINDIR")
    candidates = [Path(env)] if env else []
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).parent)  # type: ignore[arg-type]
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: p.parent.name, reverse=True)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file():
            return c
    return None


def _as_user() -> tuple[list[str], str | None]:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` system user then."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return [], "running as root and there is no 'postgres' user to run PostgreSQL as"
    runuser = shutil.which("runuser")
    if runuser is None:
        return [], "running as root and runuser is missing"
    return [runuser, "-u", "postgres", "--"], None


@contextlib.contextmanager
def local_postgres() -> Iterator[tuple[str | None, str]]:
    """Yield ``(sqlalchemy_uri, why_not)``: a fresh cluster in a temp folder, or ``(None, reason)``."""
    bindir = postgres_bindir()
    if bindir is None:
        yield None, "no PostgreSQL server binaries (initdb, pg_ctl) found"
        return
    prefix, why = _as_user()
    if why:
        yield None, why
        return
    root = Path(tempfile.mkdtemp(prefix="ckptmerge-pg-"))
    data = root / "data"
    started, uri, why = False, None, ""
    try:
        try:
            if prefix:
                shutil.chown(root, user="postgres")
            subprocess.run(
                [
                    *prefix,
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "mlflow",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                timeout=PG_START_TIMEOUT,
            )
            port = free_port()
            opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
            started = True  # from here on, stop it whatever happens (pg_ctl may time out with it running)
            subprocess.run(
                [
                    *prefix,
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(root / "postgres.log"),
                    "-w",
                    "-t",
                    str(PG_START_TIMEOUT),
                    "-o",
                    opts,
                    "start",
                ],
                check=True,
                capture_output=True,
                timeout=PG_START_TIMEOUT + 10,
            )
            uri = f"postgresql+psycopg://mlflow@127.0.0.1:{port}/postgres"
        except (subprocess.SubprocessError, OSError) as e:
            log = (
                (root / "postgres.log").read_text(errors="replace")[-1500:] if (root / "postgres.log").exists() else ""
            )
            err = (getattr(e, "stderr", b"") or b"").decode(errors="replace")[-1000:]
            why = f"PostgreSQL did not start: {e} {err} {log}".strip()
        yield uri, why
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log_path: Path, port: int | None = None) -> Iterator[str]:
    """``mlflow server`` on a loopback port (a free one by default), artifacts proxied to a local folder;
    yields its URL."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # Without MLflow's job runner (a supervisor and seven huey consumers, each importing mlflow: about 40 s
    # of CPU per start on this 2-core machine, while the test searches compete for the cores). It runs
    # server-side GenAI jobs (scorers, prompt optimisation) that ckptmerge never submits; tracking, the
    # registry and artifact proxying are the same server code either way.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
    )  # its own process group: the workers go with it
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not come up (exit {proc.poll()}):\n"
                    f"{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)  # uvicorn waits for keep-alive clients (this process) to hang up
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[dict]:
    """A real MLflow tracking server for the module: PostgreSQL store when possible, else sqlite."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with local_postgres() as (pg_uri, why_not):
        if pg_uri is None and os.environ.get("CKPTMERGE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CKPTMERGE_REQUIRE_POSTGRES=1 but {why_not}")
        backend = pg_uri or f"sqlite:///{root / 'mlflow.db'}"
        kind = "postgresql" if pg_uri else "sqlite"
        print(f"\nmlflow server backend: {kind}" + (f" ({why_not})" if why_not else ""))
        t0 = time.perf_counter()
        with mlflow_server(backend, root / "artifacts", root / "server.log") as url:
            print(f"mlflow server up in {time.perf_counter() - t0:.1f} s")
            yield {
                "url": url,
                "backend": kind,
                "artifacts": root / "artifacts",
                "root": root,
                "log": root / "server.log",
            }
