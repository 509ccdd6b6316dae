"""``edgefleet demo``: the whole system on this machine, for a new user's first minute.

Development PKI -> Mosquitto (mTLS + fleet ACL) -> the backend with its dashboard -> one real
agent reading this machine -> N simulated devices. Ctrl-C stops everything, newest first.

Each run starts from a fresh state (the backend's database, the agent's queue, the broker's
persisted sessions, the logs and the truth file of the last run are deleted; the CA and
the certificates stay) unless ``keep`` is set. While it runs, its device names are claimed
in the broker's CA folder (:mod:`edgefleet.sim.claims`) so ``edgefleet simulate`` cannot
take them over.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.common.logs import kv
from edgefleet.dev.broker import Mosquitto
from edgefleet.errors import EdgefleetError
from edgefleet.sim.claims import read_claim, write_claim
from edgefleet.sim.options import SimOptions

log = logging.getLogger(__name__)


@dataclass
class DemoOptions:
    """Where and how big the demo is."""

    workdir: Path = Path(".edgefleet")
    devices: int = 20
    interval_s: float = 5.0
    broker_port: int = 8883
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    duration_s: float = 0.0
    keep: bool = False
    rules_file: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


# What a run leaves behind, relative to the work folder; only these are deleted (never the
# folder itself: ``--dir`` may point anywhere). The broker's pki/ stays.
STATE = ("backend", "agent", "logs", "sim-truth.json", "broker/mosquitto.db",
         "broker/mosquitto.log")
# Written by every earlier run: a folder without it was never a demo's, so nothing in it is
# deleted (``--dir src`` must not lose a ``src/backend``).
DEMO_MARK = "broker/mosquitto.conf"


def reset_state(workdir: Path) -> list[Path]:
    """Delete the previous run's state in ``workdir``; return what was deleted."""
    if not (workdir / DEMO_MARK).is_file():
        return []
    gone = []
    for rel in STATE:
        path = workdir / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        gone.append(path)
    return gone


def rules_env(rules_file: Path | None) -> dict[str, str]:
    """``EDGE_BACKEND_RULES_FILE`` for the backend: ``--rules``, else the caller's own."""
    if rules_file is None:
        inherited = os.environ.get("EDGE_BACKEND_RULES_FILE")
        return {"EDGE_BACKEND_RULES_FILE": inherited} if inherited else {}
    if not rules_file.is_file():
        raise EdgefleetError(f"--rules: rules file {rules_file} does not exist")
    return {"EDGE_BACKEND_RULES_FILE": str(rules_file.resolve())}


def this_thing() -> str:
    """A thing name for this machine's real agent."""
    name = re.sub(r"[^a-zA-Z0-9:_-]", "-", socket.gethostname())[:60] or "this-machine"
    return f"host-{name}"


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Demo:
    """Starts and stops the demo's processes."""

    def __init__(self, opts: DemoOptions) -> None:
        self.o = opts
        self.broker = Mosquitto(opts.workdir / "broker", port=opts.broker_port)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.logs = opts.workdir / "logs"
        self.claim: Path | None = None

    def claim_devices(self) -> None:
        """Claim this machine's thing name and the simulated ones for the demo's lifetime."""
        names = [this_thing()]
        if self.o.devices > 0:
            names += SimOptions(devices=self.o.devices).names()
        self.claim = write_claim(self.broker.pki, self.o.workdir.resolve(), names)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        out = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet", *args], env=env,
                                stdout=out, stderr=out)
        self.procs.append((name, proc))

    def _base_env(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith(prefix)}

    def start_backend(self) -> None:
        cert, key, ca = self.broker.identity("backend")
        env = self._base_env("EDGE_BACKEND_")
        env.update({k: v for k, v in os.environ.items() if k.startswith("EDGE_BACKEND_SLACK_")})
        settings = {
            "ENDPOINT": "127.0.0.1", "PORT": str(self.broker.port), "CERT_FILE": str(cert),
            "KEY_FILE": str(key), "CA_FILE": str(ca), "AWS_LIMITS": "false",
            "DB_PATH": str(self.o.workdir / "backend" / "fleet.db"),
            "HTTP_HOST": self.o.http_host, "HTTP_PORT": str(self.o.http_port),
        }
        env.update({f"EDGE_BACKEND_{k}": v for k, v in settings.items()})
        env.update(rules_env(self.o.rules_file))
        env.update(self.o.extra_env)
        self._spawn("backend", ["backend"], env)

    def start_agent(self) -> str:
        thing = this_thing()
        cert, key, ca = self.broker.identity(thing)
        env = self._base_env("EDGE_AGENT_")
        settings = {
            "THING_NAME": thing, "ENDPOINT": "127.0.0.1", "PORT": str(self.broker.port),
            "CERT_FILE": str(cert), "KEY_FILE": str(key), "CA_FILE": str(ca),
            "INTERVAL_S": str(self.o.interval_s), "AWS_LIMITS": "false",
            "QUEUE_PATH": str(self.o.workdir / "agent" / "queue.db"),
        }
        env.update({f"EDGE_AGENT_{k}": v for k, v in settings.items()})
        self._spawn("agent", ["agent"], env)
        return thing

    def start_simulator(self) -> None:
        if self.o.devices <= 0:
            return
        args = ["simulate", "--devices", str(self.o.devices), "--interval",
                str(self.o.interval_s), "--port", str(self.broker.port),
                "--pki", str(self.broker.pki), "--demo",
                "--truth", str(self.o.workdir / "sim-truth.json")]
        self._spawn("simulator", args, dict(os.environ))

    def wait_backend(self, timeout: float = 30.0) -> None:
        url = f"http://127.0.0.1:{self.o.http_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise EdgefleetError(f"the backend did not answer in {timeout:.0f}s; see {self.logs}")

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                log_file = self.logs / f"{name}.log"
                raise EdgefleetError(
                    f"{name} exited with {proc.returncode}: {_last_line(log_file)} "
                    f"(see {log_file})"
                )

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.info("stopped", extra=kv(process=name))
        self.broker.stop()
        if self.claim is not None:
            self.claim.unlink(missing_ok=True)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _alert_target() -> str:
    if os.environ.get("EDGE_BACKEND_SLACK_WEBHOOK_URL") or os.environ.get(
        "EDGE_BACKEND_SLACK_BOT_TOKEN"
    ):
        return "Slack, the log and the dashboard"
    return "the log and the dashboard (no EDGE_BACKEND_SLACK_* settings)"


def _preflight(opts: DemoOptions) -> None:
    """Refuse busy ports, a missing rules file or a demo running from the same folder;
    then clear the last run's state unless ``keep``."""
    for host, port, what in (("127.0.0.1", opts.broker_port, "--broker-port"),
                             (opts.http_host, opts.http_port, "--http-port")):
        if not _port_free(host, port):
            raise EdgefleetError(f"port {port} on {host} is in use; choose another with {what}")
    rules_env(opts.rules_file)
    running = read_claim(opts.workdir / "broker" / "pki")
    if running is not None and running.alive():
        raise EdgefleetError(
            f"a demo is already running from {running.workdir} (pid {running.pid}); "
            "stop it first or pass another --dir"
        )
    if not opts.keep:
        gone = reset_state(opts.workdir)
        log.info("fresh demo state (--keep keeps the last run's)", extra=kv(deleted=len(gone)))


def _banner(demo: Demo, thing: str) -> None:
    opts = demo.o
    sys.stdout.write(
        f"\nedgefleet demo is running\n"
        f"  dashboard : http://127.0.0.1:{opts.http_port}/\n"
        f"  broker    : mqtts://127.0.0.1:{demo.broker.port} (CA {demo.broker.pki}/ca.pem)\n"
        f"  devices   : {thing} (this machine) + {opts.devices} simulated\n"
        f"  alerts    : {_alert_target()}\n"
        f"  logs      : {demo.logs}/\n"
        f"Ctrl-C stops everything.\n\n"
    )
    sys.stdout.flush()


def run_demo(opts: DemoOptions) -> int:
    """Start everything, print where to look, run until Ctrl-C (or ``duration_s``)."""
    _preflight(opts)
    demo = Demo(opts)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        demo.broker.start()
        demo.claim_devices()
        demo.start_backend()
        demo.wait_backend()
        thing = demo.start_agent()
        demo.start_simulator()
        _banner(demo, thing)
        started = time.monotonic()
        while not stop:
            time.sleep(0.5)
            demo.check_alive()
            if opts.duration_s and time.monotonic() - started > opts.duration_s:
                break
    finally:
        demo.stop()
    sys.stdout.write("edgefleet demo stopped\n")
    return 0
