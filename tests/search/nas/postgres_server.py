"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, start on a free port, stop and delete.

It uses the server binaries of the OS packages (initdb, pg_ctl and postgres on PATH or in
/usr/lib/postgresql/<version>/bin; `.ci/run` installs them on a Debian CI machine that lacks them) and the
`postgres` extra's driver (psycopg 3). What is missing is said in `missing()`, for a test to skip with.
PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user (or `nobody`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from effx_serve.core.proc import free_port

INSTALL_SERVER = "apt-get install postgresql (Debian/Ubuntu; .ci/run does it on CI)"
INSTALL_DRIVER = "pip install 'effx-serve[postgres]'"
USER = "effx"  # the server's superuser, trusted on 127.0.0.1 (no password)


def server_bin() -> Path | None:
    """The folder of initdb, pg_ctl and postgres: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version(Path(p).parent.name), reverse=True)]
    return next((c for c in candidates if all((c / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))), None)


def _version(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def run_as() -> pwd.struct_passwd | None:
    """The unprivileged user the server runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def missing() -> str | None:
    """Why no server can be started here (what to install), or None."""
    if importlib.util.find_spec("psycopg") is None:
        return f"the PostgreSQL driver psycopg is not installed: {INSTALL_DRIVER}"
    if server_bin() is None:
        return f"the PostgreSQL server (initdb, pg_ctl, postgres) is not on PATH nor in /usr/lib/postgresql/*/bin: {INSTALL_SERVER}"
    if os.geteuid() == 0 and run_as() is None:
        return "PostgreSQL refuses to run as root and there is no 'postgres' or 'nobody' user to run it as"
    return None


class PostgresServer:
    """One server in a temporary folder on 127.0.0.1:<free port> (and a unix socket in that folder)."""

    def __init__(self) -> None:
        self.bin = server_bin()
        self.user = run_as()
        self.root = Path(tempfile.mkdtemp(prefix="effx-pg-"))  # not under pytest's root-only tmp: the server's user must reach it
        if self.user:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = free_port()
        self.databases = 0

    def _run(self, *argv: str, timeout: float = 60) -> None:
        as_user = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []} if self.user else {}
        done = subprocess.run([str(self.bin / argv[0]), *argv[1:]], cwd=self.root, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "LC_ALL": "C"}, **as_user)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def start(self) -> PostgresServer:
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C")
        # Quick and throwaway: no fsync, small memory; enough connections for a few workers with their heartbeats.
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c shared_buffers=16MB -c max_connections=60")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start", timeout=90)
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, password: str | None = None, port: int | None = None) -> str:
        auth = f"{USER}:{password}" if password else USER
        return f"postgresql+psycopg://{auth}@127.0.0.1:{port or self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL (the form docs/search.md shows)."""
        import psycopg

        self.databases += 1
        name = f"effx_test_{self.databases}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)
