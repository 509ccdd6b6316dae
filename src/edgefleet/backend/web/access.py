"""Who may talk to the web app: the Host and Origin checks (docs/api.md, "Access").

- **Host** (DNS rebinding): a page on ``http://evil.example:8080`` whose name the attacker
  re-points to 127.0.0.1 reaches the backend with ``Host: evil.example:8080``. Only names
  the backend serves are answered: ``localhost``/``127.0.0.1``/``[::1]`` on a loopback or
  wildcard listener, the listener's own address or name, any IP literal on a wildcard
  listener (an address cannot be rebound), and ``EDGE_BACKEND_ALLOWED_HOSTS``. Ports are not
  compared: the attacker picks the name, not the port, and an SSH tunnel forwards from
  another local port.
- **Origin** (cross-site WebSocket): browsers do not apply the same-origin policy to
  WebSockets, so ``/ws`` itself refuses a page from another origin. Allowed: the request's
  own origin (scheme of the connection + its validated ``Host``), its loopback aliases on a
  loopback listener (``localhost`` for ``127.0.0.1``, same port), and
  ``EDGE_BACKEND_ALLOWED_ORIGINS``. Browsers always send ``Origin`` on a WebSocket
  handshake; a client without one is not a browser page (see :meth:`WebAccess.origin_ok`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

_LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for addresses that only this machine can reach."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")
_WILDCARDS = {"0.0.0.0", "::", ""}  # noqa: S104 - names of the wildcard listener, not a bind


def split_host(value: str) -> tuple[str, int | None] | None:
    """``"Name:8080"`` -> ``("name", 8080)``, ``"[::1]"`` -> ``("::1", None)``; None if invalid."""
    found = _HOST.fullmatch(value.strip().lower()) if len(value) <= 300 else None
    if found is None:
        return None
    name = found["v6"] or found["name"].rstrip(".")
    port = int(found["port"]) if found["port"] else None
    if not name or (found["v6"] and not _is_ip(name)) or port == 0 or (port or 0) > 65535:
        return None
    return name, port


def normalise_origin(value: str) -> str | None:
    """``"HTTP://Host:80"`` -> ``"http://host"``: scheme://host[:port], default port dropped."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class WebAccess:
    """The Host names and extra Origins the web app answers; build with :meth:`build`."""

    names: frozenset[str]  # the listener's own name or address, EDGE_BACKEND_ALLOWED_HOSTS
    origins: frozenset[str]  # EDGE_BACKEND_ALLOWED_ORIGINS, normalised
    loopback: bool = True  # localhost, 127.0.0.1, [::1]: for a loopback or wildcard listener
    any_address: bool = False  # any IP literal: for a wildcard listener (0.0.0.0, ::)

    @classmethod
    def build(
        cls, listen_host: str = "127.0.0.1", *, allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ) -> WebAccess:
        """For a listener on ``listen_host``. Raises ValueError naming a bad entry."""
        listen = listen_host.strip("[]").lower()
        wildcard = listen in _WILDCARDS
        names = set() if wildcard or is_loopback(listen) else {listen}
        for entry in allowed_hosts:
            parsed = split_host(entry)
            if parsed is None or parsed[1] is not None:
                raise ValueError(f"allowed host {entry!r}: give a host name without port")
            names.add(parsed[0])
        origins = set()
        for entry in allowed_origins:
            origin = normalise_origin(entry)
            if origin is None:
                raise ValueError(f"allowed origin {entry!r}: need scheme://host[:port]")
            origins.add(origin)
        return cls(frozenset(names), frozenset(origins), loopback=wildcard or is_loopback(listen),
                   any_address=wildcard)

    def host_ok(self, header: str | None) -> bool:
        """True when ``header`` (a request's Host) names this backend; any port."""
        parsed = split_host(header or "")
        if parsed is None:
            return False
        name = parsed[0]
        return (name in self.names or (self.loopback and is_loopback(name))
                or (self.any_address and _is_ip(name)))

    def origin_ok(self, origin: str | None, host: str | None, scheme: str) -> bool:
        """True when a WebSocket handshake with ``Origin: origin`` may proceed.

        ``host`` is the request's (already checked) Host header, ``scheme`` the request's
        (``ws``/``wss``/``http``/``https``). A missing Origin is allowed here: that client is
        not a browser, and the token (when one is set) is checked for it like for anyone.
        """
        if origin is None:
            return True
        given = normalise_origin(origin)
        if given is None:  # "null" (sandboxed frames, file://) and anything malformed
            return False
        if given in self.origins:
            return True
        web_scheme = "https" if scheme in ("https", "wss") else "http"
        own = normalise_origin(f"{web_scheme}://{host}") if host else None
        if own is None:
            return False
        return given == own or (self.loopback and _loopback_aliases(given, own))


def _loopback_aliases(one: str, other: str) -> bool:
    """``http://localhost:8080`` and ``http://127.0.0.1:8080``: same scheme and port, and
    both hosts loopback names (the same listener, reached under another name)."""
    a, b = urlsplit(one), urlsplit(other)
    return (a.scheme == b.scheme and a.port == b.port and bool(a.hostname and b.hostname)
            and is_loopback(str(a.hostname)) and is_loopback(str(b.hostname)))
