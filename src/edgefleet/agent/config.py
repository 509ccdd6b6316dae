"""The agent's settings as the long-running process sees them: already validated, plain data.

``AgentSettings`` (pydantic-settings, :mod:`edgefleet.agent.settings`) DEFINES and VALIDATES
the settings. ``edgefleet agent`` then re-executes itself as ``python -m edgefleet.agent.run``
(same PID) and hands the validated values over in the environment variable
:data:`HANDOVER_ENV` as JSON; the new process image rebuilds them here as an
:class:`AgentConfig` without importing pydantic (about 12 MiB of RSS saved for the life of
the agent). The agent settings hold no secret (the key is a path), so the handover may sit in
the process environment; the runtime removes it from ``os.environ`` when it reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError

HANDOVER_ENV = "EDGEFLEET_AGENT_RESOLVED"

_PATHS: tuple[str, ...] = ("cert_file", "key_file", "ca_file", "queue_path")
_LISTS: tuple[str, ...] = ("collectors", "disabled_collectors")
_FLOATS: tuple[str, ...] = (
    "interval_s", "max_publishes_per_s", "reconnect_max_s", "cert_check_s", "reload_check_s"
)
# --- collectors (issue 21) ---
_PATHS += ("textfile_dir",)
_LISTS += ("systemd_units", "processes")
_FLOATS += ("systemd_interval_s", "exec_timeout_s", "exec_interval_s")
# --- delivery (issue 16) ---
_FLOATS += ("resend_after_s",)


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Same fields and meaning as ``AgentSettings`` (a test keeps the two in step)."""

    thing_name: str | None
    endpoint: str
    port: int
    cert_file: Path | None
    key_file: Path | None
    ca_file: Path | None
    transport: str
    interval_s: float
    collectors: tuple[str, ...]
    disabled_collectors: tuple[str, ...]
    queue: str
    queue_path: Path
    queue_max_bytes: int
    queue_max_samples: int
    aws_limits: bool
    max_publishes_per_s: float
    max_bytes_per_s: int
    batch_max_bytes: int
    max_inflight: int
    keep_alive_s: int
    reconnect_max_s: float
    cert_check_s: float
    reload_check_s: float
    # --- collectors (issue 21) ---
    systemd_units: tuple[str, ...]
    systemd_interval_s: float
    processes: tuple[str, ...]
    textfile_dir: Path | None
    exec_command: str | None
    exec_timeout_s: float
    exec_interval_s: float
    custom_max_keys: int
    # --- delivery (issue 16) ---
    delivery: str
    resend_after_s: float
    max_uncommitted: int
    give_up_after: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AgentConfig:
        """Rebuild from ``AgentSettings.model_dump(mode="json")``; every field, nothing else."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in values]
        unknown = sorted(set(values) - set(names))
        if missing or unknown:
            raise ConfigError(
                f"agent settings handover does not match this version (missing {missing}, "
                f"unknown {unknown}); start the agent with: edgefleet agent"
            )
        out = {n: values[n] for n in names}
        for name in _PATHS:
            out[name] = None if out[name] is None else Path(out[name])
        for name in _LISTS:
            out[name] = tuple(str(v) for v in out[name])
        for name in _FLOATS:
            out[name] = float(out[name])
        return cls(**out)

    @classmethod
    def from_settings(cls, settings: object) -> AgentConfig:
        """Copy the fields of a validated ``AgentSettings`` (or any object that has them)."""
        if isinstance(settings, AgentConfig):
            return settings
        return cls.from_mapping({f.name: getattr(settings, f.name) for f in fields(cls)})

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form (paths as strings, lists as arrays) that :meth:`from_mapping` reads."""
        doc = asdict(self)
        for name in _PATHS:
            doc[name] = None if doc[name] is None else str(doc[name])
        for name in _LISTS:
            doc[name] = list(doc[name])
        return doc


@dataclass(frozen=True, slots=True)
class Handover:
    """What ``edgefleet agent`` passes to the process image it re-executes."""

    config: AgentConfig
    log_level: str = "INFO"
    log_format: str = "text"
    config_file: Path | None = None  # the settings file a reload reads again

    def to_env(self) -> str:
        """The value of :data:`HANDOVER_ENV`."""
        return json.dumps({
            "settings": self.config.to_json_dict(),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "config_file": None if self.config_file is None else str(self.config_file),
        })

    @classmethod
    def take(cls, environ: MutableMapping[str, str] | None = None) -> Handover:
        """Remove :data:`HANDOVER_ENV` from the environment and decode it."""
        env = os.environ if environ is None else environ
        raw = env.pop(HANDOVER_ENV, None)
        if not raw:
            raise ConfigError(
                f"{HANDOVER_ENV} is not set: edgefleet.agent.run is started by "
                "`edgefleet agent` (which validates the settings first); run that instead"
            )
        try:
            doc = json.loads(raw)
            config = AgentConfig.from_mapping(doc["settings"])
            file = doc.get("config_file")
            return cls(
                config, str(doc["log_level"]), str(doc["log_format"]), file and Path(file)
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{HANDOVER_ENV} is not a valid handover: {exc}") from None
