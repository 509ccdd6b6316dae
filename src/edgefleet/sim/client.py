"""The simulated device's MQTT connection: the shared awscrt adapter plus an abrupt exit.

:meth:`SimClient.abort` ends the connection with DISCONNECT reason 0x04
(``DISCONNECT_WITH_WILL_MESSAGE``): the broker then publishes the Last Will exactly as it
does when a device loses power or its network (MQTT 5, section 3.14.2.1). The SDK gives no
way to drop the socket silently, and waiting for the keep-alive to expire would take 1.5 x
keep-alive; reason 0x04 gives the same effect at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from edgefleet.common.logs import kv
from edgefleet.dev.pki import DevCA, Identity, check_identity_name
from edgefleet.errors import ConfigError
from edgefleet.sim.device import AGENT_VERSION
from edgefleet.sim.options import SimOptions
from edgefleet.transport.mqtt import MqttClient, MqttConfig
from edgefleet.wire.messages import StatusMessage, encode, status_topic

log = logging.getLogger(__name__)


class SimClient(MqttClient):
    """:class:`MqttClient` that can also vanish the way a crashed device does."""

    async def abort(self, wait_s: float = 3.0) -> None:
        """Disconnect so that the broker sends the Last Will, and wait for the stop."""
        await self.stop(wait_s, send_will=True)


def status_payload(device: str, state: str, ts: float, interval_s: float) -> bytes:
    """A :class:`StatusMessage` as the agent sends it (``ts``: when it connected)."""
    msg = StatusMessage(
        v=1,
        device_id=device,
        state="online" if state == "online" else "offline",
        ts=ts,
        agent_version=AGENT_VERSION,
        interval_s=interval_s,
    )
    return encode(msg)


def make_client(ident: Identity, opts: SimOptions, on_connect: Callable[[], None]) -> SimClient:
    """A started client for one device, its Last Will ``offline`` stamped with now."""
    cfg = MqttConfig(
        endpoint=opts.endpoint,
        port=opts.port,
        cert_file=ident.cert,
        key_file=ident.key,
        ca_file=ident.ca,
        client_id=ident.name,
        keep_alive_s=opts.keep_alive_s,
        aws_limits=opts.aws_limits,
        min_reconnect_ms=500,
        max_reconnect_ms=int(opts.reconnect_max_s * 1000),
        will=(
            status_topic(ident.name),
            status_payload(ident.name, "offline", time.time(), opts.interval_s),
        ),
        on_connect=on_connect,
    )
    with _system_trust_store(ident.ca):
        client = SimClient(cfg)
    client.start()
    return client


@contextlib.contextmanager
def _system_trust_store(ca_file: Path) -> Iterator[None]:
    """Point ``SSL_CERT_FILE`` at ``ca_file`` while a client is built.

    awscrt's s2n loads the whole system trust store (~150 certificates from
    /etc/ssl/certs/ca-certificates.crt) for every TLS context and then replaces it with the
    CA we pass anyway: about 6 ms of CPU per client, the bulk of connecting 1000 devices.
    With the variable set it loads our one CA instead (0.3 ms). Trust is unchanged: our
    clients always override the trust store with ``ca_file``.
    """
    saved = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca_file)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = saved


def issue_identities(pki: DevCA, names: list[str]) -> dict[str, Identity]:
    """One certificate per device (CN = thing name) from the broker's CA; reused if present."""
    if not pki.ca_file.exists():
        raise ConfigError(
            f"no CA at {pki.ca_file}: start `edgefleet broker` first or pass --pki DIR "
            "(the broker's pki folder)"
        )
    for name in names:
        check_identity_name(name, device=True)
    pki.ensure()
    made = {name: pki.ensure_identity(name) for name in names}
    log.info("device identities ready", extra=kv(devices=len(made), pki=str(pki.folder)))
    return made
