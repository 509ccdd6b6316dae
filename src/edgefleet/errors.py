"""The exception tree shared by every part of edgefleet.

    EdgefleetError                 any error this package raises on purpose
    +-- ConfigError                a bad setting, file or permission: fix it, then restart
    |   +-- KeyFileError           a private key or certificate file is missing or too open
    +-- ProtocolError              a message that breaks the wire contract (see protocol.md)
    +-- TransportError             the link to the broker failed; the caller may retry
    |   +-- PermanentPublishError  the broker refused the message (e.g. PUBACK 135): no retry
    +-- BrokerError                the local Mosquitto harness could not start

Every message is a single line that names what is wrong and, where it can, how to fix it.
"""

from __future__ import annotations


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""


class ConfigError(EdgefleetError):
    """A setting, a file or a permission is wrong; the process should not start."""


class KeyFileError(ConfigError):
    """A certificate or private key file is missing, unreadable or readable by others."""


class ProtocolError(EdgefleetError):
    """A message does not follow the wire contract.

    ``reason`` is a short stable token used as a counter label (``malformed``, ``oversized``,
    ``unknown_version``, ``spoofed``, ``bad_topic``).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class TransportError(EdgefleetError):
    """Publishing or subscribing failed; the data stays queued and is retried."""


class PermanentPublishError(TransportError):
    """The broker refused the message for good (e.g. reason 135, not authorised)."""

    def __init__(self, reason_code: int, detail: str) -> None:
        super().__init__(f"broker refused publish with reason {reason_code}: {detail}")
        self.reason_code = reason_code


class BrokerError(EdgefleetError):
    """The local Mosquitto broker could not be started or configured."""
