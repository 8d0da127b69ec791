"""Real servers for the tests (and docs/mlflow_ui_screenshot.py): a throwaway PostgreSQL cluster started
from the Debian binaries, and `mlflow server` processes on loopback ports, on SQLite or PostgreSQL.

Nothing here is pytest-specific: a missing PostgreSQL is reported by `postgres_missing()` (a sentence),
and a server that does not start raises `ServerError` with the end of its log."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg

MLFLOW = Path(sys.executable).parent / "mlflow"
ROLE, PASSWORD = "mlflow", "mlflow-test"  # the README's role, with a throwaway password
PG_SUPERUSER = "postgres"


class ServerError(RuntimeError):
    """A server did not start; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL's binaries (/usr/lib/postgresql/<version>/bin), else the folder of an
    `initdb` on the PATH, else None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(re.sub(r"\D", "0", p.parts[-3])))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _run_as() -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its programs as the `postgres` user."""
    return ["runuser", "-u", PG_SUPERUSER, "--"] if os.geteuid() == 0 else []


def postgres_missing() -> str | None:
    """Why a throwaway PostgreSQL cluster cannot start here, or None when it can."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_SUPERUSER)
        except KeyError:
            return "running as root without a `postgres` user to run PostgreSQL as (apt-get install postgresql)"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to run PostgreSQL as the `postgres` user"
    return None


class PostgresCluster:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:<free port> and on a socket in
    that folder; fsync off (throwaway data). `stop()` ends it and deletes the folder."""

    def __init__(self) -> None:
        reason = postgres_missing()
        if reason:
            raise ServerError(reason)
        self.bindir = postgres_bindir()
        # Not under pytest's tmp folders: those are root's, mode 0700, and the cluster runs as `postgres`.
        self.folder = Path(tempfile.mkdtemp(prefix="stylelab-pg-"))
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_SUPERUSER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.data, self.log = self.folder / "data", self.folder / "postgres.log"
        self.port = free_port()
        self._started = False

    def _pg(self, program: str, *args: str, timeout: float = 120) -> None:
        command = [*_run_as(), str(self.bindir / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.folder)
        if done.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise ServerError(f"{program} failed ({done.returncode}): {done.stdout[-2000:]}{done.stderr[-2000:]}{tail}")

    def start(self) -> PostgresCluster:
        self._pg("initdb", "-D", str(self.data), "-U", PG_SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8", "-N",
                 "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")  # fmt: skip
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start")
        self._started = True
        return self

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(Exception):
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
            self._started = False
        shutil.rmtree(self.folder, ignore_errors=True)

    def sql(self, *statements: str, dbname: str = "postgres") -> None:
        """Run statements as the superuser, over the cluster's socket (like `sudo -u postgres psql -c`)."""
        with psycopg.connect(host=str(self.folder), port=self.port, user=PG_SUPERUSER, dbname=dbname,
                             autocommit=True) as db:  # fmt: skip
            for statement in statements:
                db.execute(statement)

    def uri(self, dbname: str) -> str:
        """The SQLAlchemy URI MLflow takes for a database of the README's role, over TCP with its password."""
        return f"postgresql+psycopg://{ROLE}:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def create_mlflow_database(self, dbname: str, template: str | None = None) -> str:
        """A database owned by the README's role (made once), empty or a copy of `template`; its URI."""
        self.sql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
                 f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'; END IF; END $$")  # fmt: skip
        copy = f" TEMPLATE {template}" if template else ""
        self.sql(f"CREATE DATABASE {dbname} OWNER {ROLE}{copy}")
        return self.uri(dbname)


def migrate(uri: str, cwd: Path) -> None:
    """Create MLflow's tables in an empty database (seconds of migrations). In a child process, so that no
    pooled connection stays open on it: a database used as a TEMPLATE must have none."""
    code = "import sys; from mlflow import MlflowClient; MlflowClient(sys.argv[1]).search_experiments(max_results=1)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    done = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)  # fmt: skip
    if done.returncode != 0:
        raise ServerError(f"migrating {uri} failed:\n{done.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------------
# mlflow server


class MlflowServer:
    """A real `mlflow server` on a fixed loopback port, its backend store `backend_uri` and its artifacts
    in `folder/artifacts` (served: `--artifacts-destination`), that survives being killed: `start` again
    serves the same runs. `db` is the SQLite file, for `sqlite_copy` servers."""

    def __init__(
        self, backend_uri: str, folder: Path, db: Path | None = None, allowed_hosts: tuple[str, ...] = ()
    ) -> None:
        """`allowed_hosts`: the names the server answers to (`--allowed-hosts`, each with this port), as the
        README's team set-up gives them; MLflow's default is localhost and private IP addresses."""
        folder.mkdir(parents=True, exist_ok=True)
        self.backend_uri, self.folder, self.db = backend_uri, folder, db
        self.artifacts = folder / "artifacts"
        self.log = folder / "server.log"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.allowed_hosts = tuple(f"{host}:{self.port}" for host in allowed_hosts)
        self.proc: subprocess.Popen | None = None

    @classmethod
    def sqlite_copy(cls, template_db: Path, folder: Path) -> MlflowServer:
        """A server on a copy of a migrated SQLite database, in `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        db = folder / "mlflow.db"
        shutil.copyfile(template_db, db)
        return cls(f"sqlite:///{db}", folder, db)

    def command(self) -> list[str]:
        hosts = ["--allowed-hosts", ",".join(self.allowed_hosts)] if self.allowed_hosts else []
        return [str(MLFLOW), "server", "--backend-store-uri", self.backend_uri,
                "--artifacts-destination", str(self.artifacts), "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", "1", *hosts]  # fmt: skip

    def launch(self) -> MlflowServer:
        """Start the process; `wait_healthy` waits for it (start several, then wait: they boot side by side)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job consumers to clean up
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                                         env=env, start_new_session=True)  # fmt: skip
        return self

    def wait_healthy(self, timeout_s: float = 120) -> MlflowServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc is not None and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise ServerError(f"mlflow server at {self.uri} did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def start(self, timeout_s: float = 120) -> MlflowServer:
        return self.launch().wait_healthy(timeout_s)

    def kill(self) -> None:
        """SIGKILL the server and its workers (its own process group), as a crash would."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.proc = None
