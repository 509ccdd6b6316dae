"""The ``edgefleet`` command: one entry point, one sub-command per part of the system.

Errors that edgefleet raises on purpose end the process with one line on stderr and exit
code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefleet import __version__
from edgefleet.common.logs import setup_logging
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet")

Handler = Callable[[argparse.Namespace], int]


def _cmd_pki(args: argparse.Namespace) -> int:
    from edgefleet.dev.pki import make_dev_pki
    from edgefleet.wire.messages import is_valid_thing_name

    for name in args.identity:
        if not is_valid_thing_name(name):
            raise EdgefleetError(f"identity {name!r} is not a valid thing name ([a-zA-Z0-9:_-])")
    made = make_dev_pki(Path(args.dir), list(args.identity))
    for name, ident in made.items():
        sys.stdout.write(f"{name}: cert={ident.cert} key={ident.key} ca={ident.ca}\n")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from edgefleet.dev.broker import Mosquitto

    broker = Mosquitto(Path(args.dir), port=args.port)
    broker.start()
    sys.stdout.write(
        f"mosquitto listening on {broker.host}:{broker.port} (mTLS, CA {broker.pki / 'ca.pem'})\n"
        f"issue identities with: edgefleet pki --dir {broker.pki} NAME\n"
    )
    sys.stdout.flush()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            if not broker.running:
                raise EdgefleetError(f"mosquitto stopped; see {broker.log_file}")
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


def _cmd_agent(args: argparse.Namespace) -> int:
    from edgefleet.agent.process import run_agent

    return run_agent(config=Path(args.config) if args.config else None, once=args.once)


def _cmd_provision(args: argparse.Namespace) -> int:
    from edgefleet.aws.provision_cli import run

    return run(args)


def _add_provision_parser(sub: Any) -> None:
    prov = sub.add_parser("provision", help="register a thing with AWS IoT (extra 'aws')")
    prov.add_argument("thing", help="thing name (the agent's EDGE_AGENT_THING_NAME)")
    prov.add_argument("--revoke", action="store_true", help="deactivate and detach its certs")
    prov.add_argument("--cert-id", help="with --revoke: only this certificate (id or prefix)")
    prov.add_argument("--rotate", action="store_true", help="add a new certificate and key")
    prov.add_argument("--csr", help="PEM CSR made on the device: AWS signs it, no key is made")
    prov.add_argument("--key-file", help="with --csr: the key's path on the device (printed)")
    prov.add_argument("--out", default="certs", help="folder for cert and key (default: certs)")
    prov.add_argument("--ca-file", help="Amazon Root CA 1 PEM (default: OUT/AmazonRootCA1.pem)")
    prov.add_argument("--group", help="thing group (default: edgefleet-devices)")
    prov.add_argument("--role", default="agent", choices=["agent", "backend"])
    prov.add_argument("--region", help="AWS region (default: AWS_REGION / profile)")
    prov.add_argument("--profile", help="AWS profile (default: AWS_PROFILE)")
    prov.set_defaults(func=_cmd_provision)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edgefleet.sim.command import run

    return run(args)


_SPIKE_KINDS = "cpu,memory,disk,swap,temp,load"


def _add_simulate_parser(sub: Any) -> None:
    sim = sub.add_parser("simulate", help="N simulated devices publishing through the broker")
    add = sim.add_argument
    add("--devices", type=int, default=10, help="simulated devices (default 10)")
    pace = sim.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, help="messages per second per device (1/interval)")
    pace.add_argument("--interval", type=float, default=10.0,
                      help="seconds between one device's samples (default 10)")
    add("--endpoint", default="127.0.0.1", help="broker host (default 127.0.0.1)")
    add("--port", type=int, default=8883, help="broker port (default 8883)")
    add("--pki", default=".edgefleet/broker/pki", help="the broker's CA folder (default "
        ".edgefleet/broker/pki); device certificates are issued there")
    add("--prefix", default="sim", help="thing names PREFIX-0001.. (default sim)")
    add("--duration", type=float, default=0.0,
        help="seconds to run once connected (default 0: until SIGINT/SIGTERM)")
    add("--seed", type=int, help="seed for values and incidents (default: random, recorded)")
    add("--aws-limits", action=argparse.BooleanOptionalAction, default=False,
        help="apply AWS IoT Core's client-side limits (default off: local broker)")
    add("--spike-rate", type=float, default=0.1, help="random spikes per device-hour (0.1)")
    add("--spike-duration", type=float, default=0.0,
        help="spike length in seconds (default: per kind, the default rule's `for` + margin)")
    add("--spike-kinds", default=_SPIKE_KINDS, help=f"random spike kinds ({_SPIKE_KINDS})")
    add("--dropout-rate", type=float, default=0.1, help="random dropouts per device-hour (0.1)")
    add("--dropout-duration", type=float, default=60.0, help="mean dropout seconds (60)")
    add("--backlog-share", type=float, default=0.5,
        help="share of dropouts that buffer samples and replay them on return (0.5)")
    add("--demo", action="store_true",
        help="scripted incidents in the first minute: CPU and temperature alerts, a dropout")
    add("--truth", help="ground-truth JSON file, rewritten every 5 s and on exit")
    add("--connect-wave", type=int, default=50, help="clients connecting at once (50)")
    sim.set_defaults(func=_cmd_simulate)


def _cmd_backend(args: argparse.Namespace) -> int:
    from edgefleet.backend.main import run_backend

    return run_backend(config=Path(args.config) if args.config else None)


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgefleet.dev.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(
        workdir=Path(args.dir), devices=args.devices, interval_s=args.interval,
        broker_port=args.broker_port, http_port=args.http_port, duration_s=args.duration,
        keep=args.keep, rules_file=Path(args.rules) if args.rules else None,
    ))


def _add_demo_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the whole system on this machine (Ctrl-C stops it)")
    demo.add_argument("--dir", default=".edgefleet", help="working folder (default .edgefleet)")
    demo.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    demo.add_argument("--interval", type=float, default=5.0, help="sample interval s (5)")
    demo.add_argument("--broker-port", type=int, default=8883, help="MQTT port (8883)")
    demo.add_argument("--http-port", type=int, default=8080, help="dashboard port (8080)")
    demo.add_argument("--duration", type=float, default=0.0, help="stop after S s (0: never)")
    demo.add_argument("--keep", action="store_true",
                      help="keep the last run's devices, alerts and queues (default: fresh)")
    demo.add_argument("--rules", help="alert rules file for the backend (default: "
                      "EDGE_BACKEND_RULES_FILE, else the shipped rules)")
    demo.set_defaults(func=_cmd_demo)


def _cmd_device(args: argparse.Namespace) -> int:
    from edgefleet.backend.web.admin_client import AdminClient

    client = AdminClient(args.url)
    if args.action == "label":
        labels = client.label(args.device, args.labels)
        shown = " ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(no labels)"
        sys.stdout.write(f"{args.device}: {shown}\n")
    else:
        done = client.forget(args.device, purge=args.purge)
        sys.stdout.write(f"{args.device}: forgotten, history {done.get('history')} "
                         f"({done.get('purged_rows', 0)} stored rows deleted)\n")
    return 0


def _add_device_parser(sub: Any) -> None:
    device = sub.add_parser("device", help="label or forget a device (through the backend)")
    device.add_argument("--url", help="backend URL (EDGE_BACKEND_URL, else "
                        "http://127.0.0.1:8080); token from EDGE_BACKEND_AUTH_TOKEN")
    acts = device.add_subparsers(dest="action", required=True, metavar="ACTION")
    label = acts.add_parser("label", help="set key=value or remove key- labels")
    label.add_argument("device", help="device id")
    label.add_argument("labels", nargs="+", metavar="key=value|key-")
    forget = acts.add_parser("forget", help="decommission: gone from the page and the API")
    forget.add_argument("device", help="device id")
    forget.add_argument("--purge", action="store_true", help="delete its history too")
    device.set_defaults(func=_cmd_device)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pki = sub.add_parser("pki", help="create a development CA and certificates")
    pki.add_argument("--dir", default="pki", help="folder for the CA and pairs (default: pki)")
    pki.add_argument("identity", nargs="*", help="thing names to issue, or 'backend' for the "
                     "backend's identity ('ca' and 'server' are reserved)")
    pki.set_defaults(func=_cmd_pki)

    broker = sub.add_parser("broker", help="run Mosquitto with mTLS and the fleet ACL")
    broker.add_argument("--dir", default=".edgefleet/broker", help="working folder")
    broker.add_argument("--port", type=int, default=8883, help="port on 127.0.0.1 (0: any)")
    broker.set_defaults(func=_cmd_broker)

    agent = sub.add_parser("agent", help="run the edge agent (settings: EDGE_AGENT_*)")
    agent.add_argument("--config", help="TOML settings file (or EDGE_AGENT_CONFIG)")
    agent.add_argument("--once", action="store_true", help="print one sample as JSON and exit")
    agent.set_defaults(func=_cmd_agent)

    backend = sub.add_parser("backend", help="run the backend and dashboard (EDGE_BACKEND_*)")
    backend.add_argument("--config", help="TOML settings file (or EDGE_BACKEND_CONFIG)")
    backend.set_defaults(func=_cmd_backend)
    _add_demo_parser(sub)

    _add_provision_parser(sub)
    _add_simulate_parser(sub)
    _add_device_parser(sub)
    from edgefleet.backend.web.silence_client import add_parser as add_silence_parser

    add_silence_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgefleet`` console script."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    func: Handler = args.func
    try:
        return func(args)
    except EdgefleetError as exc:
        sys.stderr.write(f"edgefleet {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
