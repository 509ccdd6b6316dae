"""A real Mosquitto broker standing in for AWS IoT Core: mTLS required, identity from the
certificate CN, and the ACL from :mod:`edgefleet.wire.policy`.

Used by the tests (a pytest fixture wraps :class:`Mosquitto`), the benchmarks and
``edgefleet broker`` / ``edgefleet demo``.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from edgefleet.common.logs import kv
from edgefleet.dev.pki import SERVER_NAME, DevCA
from edgefleet.errors import BrokerError
from edgefleet.wire.policy import mosquitto_acl

log = logging.getLogger(__name__)

INSTALL_HINT = "mosquitto is not installed: run `apt-get update && apt-get install -y mosquitto`"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or :class:`BrokerError` with the install command."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise BrokerError(INSTALL_HINT)


def render_config(
    *, port: int, host: str, pki: Path, acl: Path, log_file: Path, forgetful: bool = False,
) -> str:
    """The mosquitto.conf text for one mTLS listener.

    Persistence is on, so that persistent sessions (the backend's) and their queued QoS 1
    messages survive a broker restart, as they do on AWS IoT Core. ``forgetful``: nothing is
    written to disk, and nothing is queued for a disconnected client (one message at most,
    dropped when the next arrives): a broker that acknowledges a publish and then loses it.
    """
    keep = ["persistence true", f"persistence_location {log_file.parent}/",
            "autosave_interval 60", "max_queued_messages 1000000"]
    if forgetful:
        keep = ["persistence false", "max_queued_messages 1"]
    lines = [
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl}",
        *keep,
        f"log_dest file {log_file}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages true",
        # AWS IoT Core allows 100 unacknowledged QoS 1 messages per client; the backend acks
        # after storing each batch, so a larger window here only changes throughput.
        "max_inflight_messages 1000",
        # Above AWS's 128 KiB on purpose: oversized messages must reach the backend's own
        # check in tests (AWS IoT Core would refuse them at the edge).
        "message_size_limit 262144",
        f"listener {port} {host}",
        f"cafile {pki / 'ca.pem'}",
        f"certfile {pki / (SERVER_NAME + '.pem')}",
        f"keyfile {pki / (SERVER_NAME + '.key')}",
        "require_certificate true",
        "use_identity_as_username true",
        # The client id becomes the certificate CN whatever the client asks for, so no
        # identity can take over another's session or knock it offline (AWS IoT Core: the
        # policy's iot:Connect on client/${iot:Connection.Thing.ThingName}). docs/faults.md.
        "use_username_as_clientid true",
        "tls_version tlsv1.2",
    ]
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to user 'mosquitto', who cannot read 0600 keys.
        lines.insert(0, "user root")
    else:
        lines.insert(0, f"user {getpass.getuser()}")
    return "\n".join(lines) + "\n"


class Mosquitto:
    """One Mosquitto process on a loopback port; ``restart()`` keeps the port."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        readers: tuple[str, ...] = (),
        forgetful: bool = False,
    ) -> None:
        """``readers``: identities that may read every device's topics besides ``backend``;
        ``forgetful``: keep nothing for offline clients and nothing across restarts."""
        self.workdir = workdir
        self.readers = readers
        self.forgetful = forgetful
        self.host = host
        self.port = port or free_port(host)
        self.pki = workdir / "pki"
        self._proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log_file = workdir / "mosquitto.log"

    def prepare(self) -> None:
        """Write the PKI (if missing), the ACL and the config."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = DevCA(self.pki).ensure()
        ca.ensure_identity(SERVER_NAME, server=True)
        acl = self.workdir / "acl"
        acl.write_text(mosquitto_acl(readers=self.readers))
        self.conf.write_text(
            render_config(
                port=self.port, host=self.host, pki=self.pki, acl=acl, log_file=self.log_file,
                forgetful=self.forgetful,
            )
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self._proc is not None and self._proc.poll() is None:
            return
        binary = find_mosquitto()
        self.prepare()
        self._proc = subprocess.Popen(
            [binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._wait_listening(timeout)
        log.info("mosquitto started", extra=kv(port=self.port, pid=self._proc.pid))

    def _wait_listening(self, timeout: float) -> None:
        assert self._proc is not None  # noqa: S101 - called right after Popen
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = (self._proc.stderr.read() if self._proc.stderr else b"").decode()
                tail = self.log_file.read_text()[-500:] if self.log_file.exists() else ""
                raise BrokerError(f"mosquitto exited: {(err or tail).strip()[:300]}")
            with contextlib.suppress(OSError), socket.create_connection(
                (self.host, self.port), timeout=0.2
            ):
                return
            time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} in {timeout}s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
        log.info("mosquitto stopped", extra=kv(port=self.port))

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def identity(self, name: str) -> tuple[Path, Path, Path]:
        """(cert, key, ca) for a client identity, issued by this broker's CA when missing."""
        ident = DevCA(self.pki).ensure().ensure_identity(name)
        return ident.cert, ident.key, ident.ca

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
