"""The backend's settings: environment ``EDGE_BACKEND_*``, optional TOML file.

Same conventions as the agent (see ``edgefleet.common.settings``); the names are a public
interface used by the recipes, Ansible and users (docs/backend.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.backend.web.access import WebAccess, is_loopback
from edgefleet.wire.messages import THING_NAME_PATTERN
from edgefleet.wire.policy import MAX_BACKEND_CONNECTIONS


class BackendSettings(BaseSettings):
    """Everything the backend can be told; see docs/backend.md for each setting."""

    model_config = SettingsConfigDict(env_prefix="EDGE_BACKEND_", extra="forbid")

    client_id: str = Field(default="backend", pattern=THING_NAME_PATTERN)
    # K connections sharing the fleet's subscriptions ($share/edgefleet/...); client ids
    # <client_id>-1 .. -K; "{n}" in cert_file/key_file becomes k (docs/production.md)
    connections: int = Field(default=1, ge=1, le=MAX_BACKEND_CONNECTIONS)
    # The number of this process's first connection when several processes share the one
    # identity (two tasks of infra/backend-service.yaml): connections first .. first+K-1,
    # always in the shared group, also when K = 1. Unset: 1 .. K (K = 1: client_id alone).
    connection_first: int | None = Field(default=None, ge=1, le=MAX_BACKEND_CONNECTIONS)
    endpoint: str = "localhost"
    port: int = Field(default=8883, ge=1, le=65535)
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    transport: Literal["auto", "mqtt", "ipc"] = "auto"
    aws_limits: bool = True
    session_expiry_s: int = Field(default=3600, ge=0, le=7 * 86400)
    reconnect_max_s: float = Field(default=10.0, ge=1, le=600)

    db_path: Path = Path("/var/lib/edgefleet/backend/fleet.db")
    rules_file: Path | None = None
    raw_retention_s: float = Field(default=86400.0, ge=3600)
    stale_after_intervals: float = Field(default=3.0, ge=1.0)
    stale_min_s: float = Field(default=5.0, ge=0.1)

    slack_webhook_url: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    alert_group_window_s: float = Field(default=10.0, ge=0)
    alert_repeat_s: float = Field(default=4 * 3600.0, ge=60)
    silence_confirm_share: float = Field(default=0.2, ge=0, le=1)

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=1, le=65535)
    auth_token: SecretStr | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    ws_interval_s: float = Field(default=0.5, ge=0.05, le=10)
    ws_queue_frames: int = Field(default=64, ge=2, le=10_000)

    # --- service: own feed, storage failures, inbox bound ---
    feed_silence_intervals: float = Field(default=3.0, ge=1.0)
    feed_silence_min_s: float = Field(default=10.0, ge=0.5)
    feed_alert_after_s: float = Field(default=30.0, ge=0)
    store_retries: int = Field(default=3, ge=0, le=100)
    store_give_up_s: float = Field(default=600.0, ge=0)
    subscribe_attempts: int = Field(default=20, ge=1, le=10_000)

    # --- backend acknowledgements (commit watermarks to devices; docs/delivery.md) ---
    acks: bool = True
    ack_interval_s: float = Field(default=60.0, ge=1.0, le=3600.0)
    ack_every: int = Field(default=200, ge=1, le=1_000_000)
    ack_min_interval_s: float = Field(default=5.0, ge=0.1, le=3600.0)
    ack_rate_per_s: float = Field(default=50.0, gt=0, le=10_000)
    inbox_max: int = Field(default=20_000, ge=10, le=1_000_000)

    # --- ingest bounds (per device; see docs/protocol.md) ---
    max_keys_per_device: int = Field(default=1000, ge=1, le=100_000)
    max_instances_per_family: int = Field(default=200, ge=1, le=100_000)
    max_streams_per_device: int = Field(default=8, ge=1, le=1000)
    max_seq_jump: int = Field(default=1_000_000, ge=10_000, le=2**53)

    # --- database (issue 17) ---
    # postgresql://user:password@host:port/db (libpq URL, e.g. ?sslmode=require): the fleet
    # store, outbox and metadata in PostgreSQL; absent: SQLite at db_path (docs/backend.md)
    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=8, ge=2, le=100)
    database_connect_timeout_s: float = Field(default=10.0, ge=1, le=300)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
                ("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (leave it unset for SQLite)")
        return value

    # --- web access (issue 14: Host and Origin checks, see web/access.py) ---
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("allowed_hosts", "allowed_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts", "allowed_origins")
    @classmethod
    def _web_entries(cls, value: list[str], info: ValidationInfo) -> list[str]:
        if info.field_name == "allowed_hosts":  # each raises ValueError naming a bad entry
            WebAccess.build(allowed_hosts=value)
        else:
            WebAccess.build(allowed_origins=value)
        return value

    # --- alert notification budget (alerts) ---
    alert_budget_window_s: float = Field(default=600.0, ge=10)
    alert_budget_per_device: int = Field(default=5, ge=0)  # alert events per device; 0 = off
    alert_budget_per_rule: int = Field(default=20, ge=0)  # messages per rule; 0 = off

    # --- alert operations (issue 18, Slack) ---
    # App-level token (xapp-..., scope connections:write): Socket Mode buttons on firing
    # messages (Acknowledge, Snooze 1 h, Silence device); needs the bot token for chat.update.
    slack_app_token: SecretStr | None = None
    alert_snooze_s: float = Field(default=3600.0, ge=60, le=7 * 86400)
    alert_history_days: float = Field(default=30.0, ge=1, le=366)

    @model_validator(mode="after")
    def _check_alert_ops(self) -> BackendSettings:
        if self.slack_app_token is not None:
            if not self.slack_app_token.get_secret_value().startswith("xapp-"):
                raise ValueError("slack_app_token must be an app-level token (xapp-...)")
            if not self.slack_bot_token:
                raise ValueError("slack_app_token needs EDGE_BACKEND_SLACK_BOT_TOKEN "
                                 "(buttons update their message with chat.update)")
        return self
    # --- end of alert operations ---

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @model_validator(mode="after")
    def _check(self) -> BackendSettings:
        if not is_loopback(self.http_host) and not self.auth_token:
            raise ValueError(
                f"http_host {self.http_host} is not loopback: set EDGE_BACKEND_AUTH_TOKEN"
            )
        if self.auth_token is not None and len(self.auth_token.get_secret_value()) < 16:
            raise ValueError("auth_token must be at least 16 characters")
        if self.slack_bot_token and not self.slack_channel:
            raise ValueError("slack_bot_token needs EDGE_BACKEND_SLACK_CHANNEL")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.ack_min_interval_s > self.ack_interval_s:
            raise ValueError("ack_min_interval_s must not exceed ack_interval_s")
        last = (self.connection_first or 1) + self.connections - 1
        if last > MAX_BACKEND_CONNECTIONS:
            raise ValueError(
                f"connection_first {self.connection_first} + connections {self.connections}"
                f" - 1 = {last}: the policy grants connections 1-{MAX_BACKEND_CONNECTIONS}")
        return self

    def connection_numbers(self) -> list[int]:
        """The numbers of this process's connections (0: the only one, as ``client_id``)."""
        if self.connection_first is None and self.connections == 1:
            return [0]
        first = self.connection_first or 1
        return list(range(first, first + self.connections))
