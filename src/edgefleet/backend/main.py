"""``edgefleet backend``: settings -> preflight -> one asyncio loop serving everything."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.backend.alerts.rules import default_rules_path, load_rules
from edgefleet.backend.settings import BackendSettings
from edgefleet.backend.web.access import WebAccess
from edgefleet.backend.web.app import create_app, disable_websocket_compression
from edgefleet.common.logs import kv
from edgefleet.common.settings import check_cert_file, check_private_key, load_settings
from edgefleet.errors import ConfigError
from edgefleet.transport.base import OnMessage, Transport
from edgefleet.transport.ipc import IpcTransport, resolve_transport
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.transport.pool import TransportPool
from edgefleet.wire.base import SHARE_GROUP
from edgefleet.wire.policy import backend_connection_id

log = logging.getLogger(__name__)

MQTT_RECEIVE_MAXIMUM = 65_535  # the largest value MQTT5 allows


def preflight(s: BackendSettings) -> str:
    """Check files and permissions before anything starts; return the transport kind."""
    kind = resolve_transport(s.transport)
    if kind == "mqtt":
        for name in ("cert_file", "key_file", "ca_file"):
            if getattr(s, name) is None:
                raise ConfigError(f"EDGE_BACKEND_{name.upper()} is not set")
        assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - checked above
        check_cert_file(s.ca_file, "EDGE_BACKEND_CA_FILE")
        for k in s.connection_numbers():
            check_cert_file(connection_file(s.cert_file, k), "EDGE_BACKEND_CERT_FILE")
            check_private_key(connection_file(s.key_file, k), "EDGE_BACKEND_KEY_FILE")
    if s.tls_key_file is not None:
        check_private_key(s.tls_key_file, "EDGE_BACKEND_TLS_KEY_FILE")
    try:
        s.db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = s.db_path.parent
        raise ConfigError(f"EDGE_BACKEND_DB_PATH: cannot create {where}: {exc}") from None
    return kind


def transport_factory(
    s: BackendSettings, kind: str
) -> Callable[[OnMessage, Callable[[], None]], Transport]:
    """Build the broker link once the backend's callbacks exist."""

    def make(on_message: OnMessage, on_connect: Callable[[], None]) -> Transport:
        if kind == "ipc":
            from edgefleet.backend.greengrass import watch_backend_configuration

            return IpcTransport(
                on_message_acked=on_message,
                on_connect=on_connect,
                on_client=watch_backend_configuration,
            )
        numbers = s.connection_numbers()
        if numbers != [0] or s.database_url is not None:
            # K connections, or several backends sharing the fleet (issue 17): members
            # numbered as the settings say, all in the shared group (member k is 1-based)
            return TransportPool(
                len(numbers), lambda k, *rest: _mqtt_member(s, numbers[k - 1], *rest),
                on_message, on_connect, group=SHARE_GROUP)
        return _mqtt_member(s, 0, on_message, on_connect, None)

    return make


def _mqtt_member(
    s: BackendSettings, k: int, on_message: OnMessage, on_connect: Callable[[], None],
    on_disconnect: Callable[[], None] | None,
) -> MqttClient:
    """Connection ``k`` of the backend (0: the only one), with its client id and files."""
    assert s.cert_file and s.key_file and s.ca_file  # noqa: S101 - preflight checked
    cfg = MqttConfig(
        endpoint=s.endpoint, port=s.port, cert_file=connection_file(s.cert_file, k),
        key_file=connection_file(s.key_file, k), ca_file=s.ca_file,
        client_id=s.client_id if k == 0 else backend_connection_id(s.client_id, k),
        aws_limits=s.aws_limits, session_expiry_s=s.session_expiry_s, on_connect=on_connect,
        on_disconnect=on_disconnect, max_reconnect_ms=int(s.reconnect_max_s * 1000),
        # Backpressure: unacknowledged messages (the inbox) never exceed this; the
        # broker holds the rest until we acknowledge (MQTT5 receive maximum).
        receive_maximum=min(s.inbox_max, MQTT_RECEIVE_MAXIMUM),
    )
    return MqttClient(cfg, on_message_acked=on_message)


def connection_file(path: Path, k: int) -> Path:
    """``path`` for connection ``k``: ``{n}`` in it becomes ``k`` (Mosquitto pins each
    client id to a certificate's CN, so each connection has its own there; on AWS they
    share one certificate and ``path`` has no ``{n}``)."""
    return Path(str(path).replace("{n}", str(k))) if k else path


async def _serve_http(app: Any, s: BackendSettings, stop: asyncio.Event) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    host = f"[{s.http_host}]" if ":" in s.http_host else s.http_host
    config.bind = [f"{host}:{s.http_port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 2.0
    if s.tls_cert_file and s.tls_key_file:
        config.certfile, config.keyfile = str(s.tls_cert_file), str(s.tls_key_file)
    await serve(app, config, shutdown_trigger=stop.wait)


def run_backend(config: Path | None = None) -> int:
    """Run until SIGTERM/SIGINT."""
    settings = load_settings(BackendSettings, config)
    rules = load_rules(settings.rules_file or default_rules_path())
    kind = preflight(settings)

    async def main() -> None:
        from edgefleet.backend.runtime import Backend

        backend = Backend(settings, rules, transport_factory(settings, kind))
        # Long-lived state is built: keep the collector off it, and collect young objects
        # less often (about 6 % of ingest CPU went to collections otherwise).
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        access = WebAccess.build(settings.http_host, allowed_hosts=settings.allowed_hosts,
                                 allowed_origins=settings.allowed_origins)
        app = create_app(backend.view, token=token, access=access, history=backend.history)
        disable_websocket_compression()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, backend.stop)
        scheme = "https" if settings.tls_cert_file else "http"
        log.info("dashboard", extra=kv(url=f"{scheme}://{settings.http_host}:{settings.http_port}/"))
        await backend.run(lambda stop: _serve_http(app, settings, stop))

    from edgefleet.backend.runtime import BackendFailedError

    try:
        asyncio.run(main())
    except BackendFailedError as exc:
        log.critical("backend failed; exiting with status 1 for a restart",
                     extra=kv(error=str(exc)))
        return 1
    return 0
