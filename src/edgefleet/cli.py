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

from edgefleet import __version__
from edgefleet.common.logs import setup_logging
from edgefleet.errors import EdgefleetError

log = logging.getLogger("edgefleet")

Handler = Callable[[argparse.Namespace], int]


def _cmd_pki(args: argparse.Namespace) -> int:
    from edgefleet.common.pki import make_dev_pki
    from edgefleet.common.protocol import is_valid_thing_name

    for name in args.identity:
        if not is_valid_thing_name(name):
            raise EdgefleetError(f"identity {name!r} is not a valid thing name ([a-zA-Z0-9:_-])")
    made = make_dev_pki(Path(args.dir), list(args.identity))
    for name, ident in made.items():
        sys.stdout.write(f"{name}: cert={ident.cert} key={ident.key} ca={ident.ca}\n")
    return 0


def _cmd_broker(args: argparse.Namespace) -> int:
    from edgefleet.common.broker import Mosquitto

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
    from edgefleet.agent.main import run_agent

    return run_agent(config=Path(args.config) if args.config else None, once=args.once)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="edgefleet", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pki = sub.add_parser("pki", help="create a development CA and certificates")
    pki.add_argument("--dir", default="pki", help="folder for the CA and pairs (default: pki)")
    pki.add_argument("identity", nargs="*", help="thing names (or 'backend') to issue")
    pki.set_defaults(func=_cmd_pki)

    broker = sub.add_parser("broker", help="run Mosquitto with mTLS and the fleet ACL")
    broker.add_argument("--dir", default=".edgefleet/broker", help="working folder")
    broker.add_argument("--port", type=int, default=8883, help="port on 127.0.0.1 (0: any)")
    broker.set_defaults(func=_cmd_broker)

    agent = sub.add_parser("agent", help="run the edge agent (settings: EDGE_AGENT_*)")
    agent.add_argument("--config", help="TOML settings file (or EDGE_AGENT_CONFIG)")
    agent.add_argument("--once", action="store_true", help="print one sample as JSON and exit")
    agent.set_defaults(func=_cmd_agent)
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
