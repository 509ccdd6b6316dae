"""What the configurable collectors are told: units, processes, textfile folder, exec command.

A plain frozen dataclass, so the lean runtime (``agent/run.py``) builds it without pydantic.
:meth:`CollectorOptions.from_config` takes the fields of ``AgentConfig`` (or ``AgentSettings``);
a field the config lacks keeps its default here.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, fields
from pathlib import Path

from edgefleet.errors import ConfigError

MAX_UNITS = 50
MAX_PROCESSES = 50


@dataclass(frozen=True, slots=True)
class CollectorOptions:
    """Settings of the systemd, processes, textfile, exec and vitals collectors."""

    systemd_units: tuple[str, ...] = ()
    systemd_interval_s: float = 30.0
    processes: tuple[str, ...] = ()
    textfile_dir: Path | None = None
    exec_command: str | None = None
    exec_timeout_s: float = 5.0
    exec_interval_s: float = 0.0
    custom_max_keys: int = 200
    state_dir: Path | None = None

    @classmethod
    def from_config(cls, config: object) -> CollectorOptions:
        """The collector fields of a validated agent config; ``state_dir`` = the queue's folder."""
        values = {f.name: getattr(config, f.name) for f in fields(cls) if hasattr(config, f.name)}
        for name in ("systemd_units", "processes"):
            if name in values:
                values[name] = tuple(values[name])
        queue_path = getattr(config, "queue_path", None)
        if "state_dir" not in values and queue_path is not None:
            values["state_dir"] = Path(queue_path).parent
        return cls(**values)

    @property
    def exec_argv(self) -> list[str]:
        """``exec_command`` split as a POSIX shell would (no shell runs it); empty when unset."""
        return split_command(self.exec_command)


def split_command(command: str | None) -> list[str]:
    """Split ``command`` into argv; a :class:`ConfigError` naming the problem if it cannot be."""
    if command is None or not command.strip():
        return []
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"exec_command: cannot split {command!r} ({exc})") from None
