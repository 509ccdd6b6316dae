"""A real PostgreSQL for the tests and the benchmarks: ``initdb`` into a folder, one
loopback port, trust authentication for the one local user, like :mod:`edgefleet.dev.broker`
for Mosquitto.

PostgreSQL refuses to run as root; started as root, the cluster belongs to an unprivileged
user (``EDGEFLEET_PG_USER``, default ``nobody``) and every server command runs as that user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from edgefleet.common.logs import kv
from edgefleet.dev.broker import free_port
from edgefleet.errors import EdgefleetError

log = logging.getLogger(__name__)

INSTALL_HINT = ("PostgreSQL is not installed: run `apt-get update && apt-get install -y "
                "postgresql`")
DATABASE = "edgefleet"  # also spelled out in Postgres.start's query
ROLE = "edgefleet"


class PostgresError(EdgefleetError):
    """The test PostgreSQL could not be set up or started."""


def find_bin(name: str) -> Path:
    """``initdb``/``pg_ctl`` of the newest installed PostgreSQL (Debian keeps them out of
    PATH), or :class:`PostgresError` with the install command."""
    found = shutil.which(name)
    if found:
        return Path(found)
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return versions[-1]
    raise PostgresError(INSTALL_HINT)


class Postgres:
    """One PostgreSQL cluster in ``workdir`` on a loopback port; ``restart()`` keeps both.
    As root the cluster lives in its own folder under the system's temp folder instead
    (removed on exit), owned by the unprivileged user."""

    def __init__(self, workdir: Path, *, port: int = 0, host: str = "127.0.0.1") -> None:
        self._owner = os.environ.get("EDGEFLEET_PG_USER", "nobody") if os.geteuid() == 0 else None
        if self._owner is not None:
            # the owner must reach the folder: a test's tmp_path sits below root-only folders
            workdir = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
            self._cleanup: Path | None = workdir
        else:
            self._cleanup = None
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.data = workdir / "data"
        self.log_file = workdir / "postgres.log"

    @property
    def url(self) -> str:
        """``postgresql://`` URL of the test database."""
        return f"postgresql://{ROLE}@{self.host}:{self.port}/{DATABASE}"

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._owner is not None:
            cmd = ["runuser", "-u", self._owner, "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                cwd="/", timeout=120)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["?"]
            raise PostgresError(f"{Path(cmd[-len(args)]).name} failed: {detail[0][:300]}")
        return result

    def prepare(self) -> None:
        """Create the cluster once: the role, its database, loopback-only settings."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            entry = pwd.getpwnam(self._owner)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        if (self.data / "PG_VERSION").exists():
            return
        self._run(find_bin("initdb"), "-D", self.data, "-U", ROLE, "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions")
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '{self.host}'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.workdir}'\n"
                "max_connections = 200\nshared_buffers = 64MB\n"
                "logging_collector = off\n"
            )

    def start(self, timeout: float = 30.0) -> None:
        """Start the server, wait until it accepts connections, create the database."""
        self.prepare()
        self._run(find_bin("pg_ctl"), "-D", self.data, "-l", self.log_file, "-w",
                  "-t", str(int(timeout)), "start")
        self._wait_listening(timeout)
        created = self._run(find_bin("psql"), "-h", self.host, "-p",
                            str(self.port), "-U", ROLE, "-d", "postgres", "-tAc",
                            "SELECT 1 FROM pg_database WHERE datname = 'edgefleet'")
        if created.stdout.strip() != "1":
            self._run(find_bin("createdb"), "-h", self.host, "-p", str(self.port), "-U", ROLE,
                      DATABASE)
        log.info("postgres started", extra=kv(port=self.port, data=str(self.data)))

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                return
            time.sleep(0.05)
        raise PostgresError(f"postgres did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions; ``immediate``: like a
        crash, recovery at the next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run(find_bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop", check=False)
            log.info("postgres stopped", extra=kv(port=self.port, mode=mode))

    def restart(self) -> None:
        """Stop and start again on the same port with the same data."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._run(find_bin("pg_ctl"), "-D", self.data, "status", check=False).returncode == 0

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop("immediate")
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
