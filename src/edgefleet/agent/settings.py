"""The agent's settings: environment ``EDGE_AGENT_*``, optional TOML file, defaults only here.

The names are a public interface (recipes, Ansible, users); see ``docs/agent.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.agent.collectors.options import MAX_PROCESSES, MAX_UNITS, split_command
from edgefleet.agent.collectors.processes import parse_spec
from edgefleet.errors import ConfigError
from edgefleet.wire.base import MAX_MESSAGE_BYTES, THING_NAME_PATTERN
from edgefleet.wire.policy import backend_identities

CommaList = Annotated[list[str], NoDecode]
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,256}")


class AgentSettings(BaseSettings):
    """Everything the agent can be told; see docs/agent.md for each setting."""

    model_config = SettingsConfigDict(env_prefix="EDGE_AGENT_", extra="forbid")

    thing_name: str | None = Field(default=None, pattern=THING_NAME_PATTERN)
    endpoint: str = "localhost"
    port: int = Field(default=8883, ge=1, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    transport: Literal["auto", "mqtt", "ipc"] = "auto"

    interval_s: float = Field(default=10.0, ge=0.05, le=3600)
    collectors: CommaList = Field(default_factory=list)
    disabled_collectors: CommaList = Field(default_factory=list)

    queue: Literal["sqlite", "memory"] = "sqlite"
    queue_path: Path = Path("/var/lib/edgefleet/agent/queue.db")
    queue_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    queue_max_samples: int = Field(default=1_000_000, ge=10)

    aws_limits: bool = True
    max_publishes_per_s: float = Field(default=100.0, gt=0, le=100.0)
    max_bytes_per_s: int = Field(default=512 * 1024, gt=0, le=512 * 1024)
    batch_max_bytes: int = Field(default=120 * 1024, ge=4096, le=MAX_MESSAGE_BYTES)
    max_inflight: int = Field(default=10, ge=1, le=100)
    keep_alive_s: int = Field(default=30, ge=5, le=1200)
    reconnect_max_s: float = Field(default=60.0, ge=1, le=600)
    cert_check_s: float = Field(default=5.0, gt=0)
    reload_check_s: float = Field(default=2.0, ge=0)  # 0: no file watch (SIGHUP still works)

    # --- collectors (issue 21) ---
    systemd_units: CommaList = Field(default_factory=list)
    systemd_interval_s: float = Field(default=30.0, ge=1, le=3600)
    processes: CommaList = Field(default_factory=list)
    textfile_dir: Path | None = None
    exec_command: str | None = None
    exec_timeout_s: float = Field(default=5.0, gt=0, le=300)
    exec_interval_s: float = Field(default=0.0, ge=0, le=86400)
    custom_max_keys: int = Field(default=200, ge=1, le=1000)

    # --- delivery (issue 16; docs/agent.md, "Backend acknowledgements") ---
    delivery: Literal["auto", "backend", "broker"] = "auto"
    resend_after_s: float = Field(default=180.0, ge=1, le=86400)
    max_uncommitted: int = Field(default=2000, ge=1, le=5000)  # < the backend's 10,000 window
    give_up_after: int = Field(default=5, ge=1, le=100)

    @field_validator("systemd_units", "processes", mode="before")
    @classmethod
    def _split_collector_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("systemd_units")
    @classmethod
    def _unit_names(cls, value: list[str]) -> list[str]:
        value = list(dict.fromkeys(value))
        for unit in value:
            if unit.startswith("-") or not _UNIT_NAME.fullmatch(unit):
                raise ValueError(f"{unit!r} is not a systemd unit name")
        if len(value) > MAX_UNITS:
            raise ValueError(f"at most {MAX_UNITS} units (got {len(value)})")
        return value

    @field_validator("processes")
    @classmethod
    def _process_specs(cls, value: list[str]) -> list[str]:
        value = list(dict.fromkeys(value))
        labels = [parse_spec(spec).label for spec in value]
        if len(set(labels)) < len(labels):
            raise ValueError("two process specs have the same name/label")
        if len(value) > MAX_PROCESSES:
            raise ValueError(f"at most {MAX_PROCESSES} process specs (got {len(value)})")
        return value

    @field_validator("exec_command")
    @classmethod
    def _exec_command(cls, value: str | None) -> str | None:
        try:
            return value if split_command(value) else None
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("thing_name")
    @classmethod
    def _not_the_backend(cls, value: str | None) -> str | None:
        if value is not None and value.casefold() in backend_identities():
            raise ValueError(
                f"{value!r} is the backend's identity (it reads the whole fleet), not a device's"
            )
        return value

    @field_validator("collectors", "disabled_collectors", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _aws_keep_alive(self) -> AgentSettings:
        if self.aws_limits and self.keep_alive_s < 30:
            raise ValueError("keep_alive_s must be >= 30 when aws_limits is on (AWS minimum)")
        return self
