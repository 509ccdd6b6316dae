"""What a simulation run does: :class:`SimOptions`, scripted events and the ``--demo`` script."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from edgefleet.errors import ConfigError
from edgefleet.sim.model import SPIKE_KINDS
from edgefleet.wire.messages import is_valid_thing_name

DEFAULT_PKI = Path(".edgefleet/broker/pki")


@dataclass(frozen=True, slots=True)
class ScriptedEvent:
    """An incident at a fixed time: ``at_s`` seconds after the start, on device ``device``
    (0-based index). A ``dropout`` disconnects with the Last Will; ``buffered`` dropouts keep
    sampling and replay the backlog on return, the others are a power loss (no samples)."""

    device: int
    kind: Literal["spike", "dropout"]
    at_s: float
    duration_s: float
    spike_kind: str = "cpu"
    buffered: bool = True


def demo_script(devices: int) -> tuple[ScriptedEvent, ...]:
    """Incidents early enough to watch: an alert that fires and resolves within minutes.

    - device 1: CPU > 90 % from 10 s for 7 min (``high_cpu``, for 5m, fires at ~5m10s);
    - device 2: package temperature > 80 °C from 20 s for 3.5 min (``high_temperature``);
    - device 3: network dropout at 45 s for 75 s (Last Will, then a backlog burst).
    """
    events = [ScriptedEvent(0, "spike", 10.0, 420.0, "cpu")]
    if devices >= 2:
        events.append(ScriptedEvent(1, "spike", 20.0, 210.0, "temp"))
    if devices >= 3:
        events.append(ScriptedEvent(2, "dropout", 45.0, 75.0, buffered=True))
    return tuple(events)


@dataclass(frozen=True, slots=True)
class SimOptions:
    """Every knob of a run; the CLI maps its flags onto these one to one."""

    devices: int = 10
    interval_s: float = 10.0
    endpoint: str = "127.0.0.1"
    port: int = 8883
    pki: Path = DEFAULT_PKI
    prefix: str = "sim"
    duration_s: float = 0.0  # 0: until stopped
    seed: int | None = None  # None: drawn at start and written to the truth file
    aws_limits: bool = False
    spike_rate: float = 0.1  # random spikes per device-hour
    spike_duration_s: float | None = None  # None: the kind's default (rule's `for` + margin)
    spike_kinds: tuple[str, ...] = tuple(SPIKE_KINDS)
    dropout_rate: float = 0.1  # random dropouts per device-hour
    dropout_duration_s: float = 60.0  # mean; each dropout lasts 0.5x to 1.5x this
    backlog_share: float = 0.5  # share of random dropouts that buffer and replay a backlog
    backlog_max: int = 10_000  # samples kept per device; the oldest are dropped beyond
    batch_max_bytes: int = 120 * 1024
    demo: bool = False
    script: tuple[ScriptedEvent, ...] = ()
    truth_file: Path | None = None
    truth_every_s: float = 5.0
    connect_wave: int = 50
    connect_timeout_s: float = 30.0
    keep_alive_s: int = 30
    reconnect_max_s: float = 10.0
    stop_budget_s: float = 5.0

    def names(self) -> list[str]:
        """The thing names, ``sim-0001`` .. (wider numbers past 9999)."""
        width = max(4, len(str(self.devices)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(1, self.devices + 1)]

    def events(self) -> tuple[ScriptedEvent, ...]:
        """The scripted events, the demo's included."""
        return self.script + (demo_script(self.devices) if self.demo else ())

    def check(self) -> SimOptions:
        """Raise :class:`ConfigError` naming the first bad option; return self."""
        problems = [
            (self.devices < 1, "--devices must be at least 1"),
            (self.interval_s <= 0, "--interval/--rate must be positive"),
            (self.spike_rate < 0 or self.dropout_rate < 0, "rates cannot be negative"),
            (not 0 <= self.backlog_share <= 1, "--backlog-share must be within 0..1"),
            (self.connect_wave < 1, "--connect-wave must be at least 1"),
            (self.duration_s < 0, "--duration cannot be negative"),
            (not is_valid_thing_name(f"{self.prefix}-1"), f"--prefix {self.prefix!r} is invalid"),
        ]
        unknown = set(self.spike_kinds) - set(SPIKE_KINDS)
        problems.append((bool(unknown), f"unknown spike kinds {sorted(unknown)}"))
        for bad, message in problems:
            if bad:
                raise ConfigError(message)
        return self

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["pki"] = str(self.pki)
        doc["truth_file"] = str(self.truth_file) if self.truth_file else None
        return doc


def options_from_args(args: argparse.Namespace) -> SimOptions:
    """Map the ``edgefleet simulate`` flags onto :class:`SimOptions`."""
    interval = 1.0 / args.rate if args.rate else args.interval
    kinds = tuple(k.strip() for k in args.spike_kinds.split(",") if k.strip())
    return SimOptions(
        devices=args.devices,
        interval_s=interval,
        endpoint=args.endpoint,
        port=args.port,
        pki=Path(args.pki),
        prefix=args.prefix,
        duration_s=args.duration,
        seed=args.seed,
        aws_limits=args.aws_limits,
        spike_rate=args.spike_rate,
        spike_duration_s=args.spike_duration or None,
        spike_kinds=kinds,
        dropout_rate=args.dropout_rate,
        dropout_duration_s=args.dropout_duration,
        backlog_share=args.backlog_share,
        demo=args.demo,
        truth_file=Path(args.truth) if args.truth else None,
        connect_wave=args.connect_wave,
    ).check()
