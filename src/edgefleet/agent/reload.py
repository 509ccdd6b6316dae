"""Live configuration: SIGHUP, a changed settings file or a Greengrass deployment reload the
agent's settings without a restart (``docs/agent.md``, *Live configuration*).

A reload reads the settings exactly as ``edgefleet agent`` does at start (file < environment,
plus the component configuration under Greengrass), validated by pydantic-settings in a short
child process (:mod:`edgefleet.agent.resolve`) so the long-running image stays free of
pydantic. Bad settings are refused with ONE logged line and the running ones stay. Good ones
are compared field by field with the running settings (:func:`plan`):

- :data:`RESTART_FIELDS` differ -> refused: they name the device or its durable queue;
- :data:`RECONNECT_FIELDS` differ -> the MQTT connection is rebuilt as for a certificate
  rotation (the durable queue and its seqs carry across);
- anything else (interval, collectors, publish limits, watch intervals) changes in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.common.logs import kv
from edgefleet.errors import ConfigError

log = logging.getLogger(__name__)

RESOLVE_MODULE = "edgefleet.agent.resolve"
RESOLVE_TIMEOUT_S = 60.0
SETTLE_S = 0.3

RESTART_FIELDS = frozenset(
    {"thing_name", "transport", "queue", "queue_path", "queue_max_bytes", "queue_max_samples"}
)
"""Refused at reload: the device's identity, and the durable queue (opened once at start)."""

RECONNECT_FIELDS = frozenset(
    {"endpoint", "port", "cert_file", "key_file", "ca_file", "keep_alive_s", "reconnect_max_s",
     "aws_limits"}
)
"""Built into the MQTT client: a change rebuilds the connection (under ``ipc``, the nucleus
owns the connection and only ``aws_limits``' publish limits apply)."""

LIMIT_FIELDS = frozenset(
    {"max_publishes_per_s", "max_bytes_per_s", "batch_max_bytes", "max_inflight", "aws_limits",
     "delivery", "resend_after_s", "max_uncommitted", "give_up_after"}
)
"""The publisher's batching, flow control and delivery rules: applied in place."""

SCHEDULE_FIELDS = frozenset({"interval_s", "cert_check_s", "reload_check_s"})
"""Read by the agent's loops at every round: applied in place."""


@dataclass(frozen=True, slots=True)
class Change:
    """What a reload from one :class:`AgentConfig` to another does."""

    changed: tuple[str, ...]
    refused: tuple[str, ...] = ()
    reconnect: bool = False
    limits: bool = False
    collectors: bool = False


def plan(old: AgentConfig, new: AgentConfig, *, mqtt: bool) -> Change:
    """Compare two settings; every field not named above counts as a collector setting."""
    changed = tuple(
        f.name for f in fields(AgentConfig) if getattr(old, f.name) != getattr(new, f.name)
    )
    names = set(changed)
    special = RESTART_FIELDS | RECONNECT_FIELDS | LIMIT_FIELDS | SCHEDULE_FIELDS
    return Change(
        changed=changed,
        refused=tuple(n for n in changed if n in RESTART_FIELDS),
        reconnect=mqtt and bool(names & RECONNECT_FIELDS),
        limits=bool(names & LIMIT_FIELDS),
        collectors=bool(names - special),
    )


def refusal(change: Change) -> str:
    """The one-line reason a :class:`Change` with ``refused`` fields is not applied."""
    names = ", ".join(change.refused)
    return f"{names} cannot change while the agent runs (restart it to apply)"


async def resolve(config_file: Path | None, overrides: Mapping[str, str]) -> AgentConfig:
    """The settings as ``edgefleet agent`` would build them now; ConfigError if bad."""
    argv = [sys.executable, "-m", RESOLVE_MODULE]
    if config_file is not None:
        argv.append(str(config_file))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(json.dumps(dict(overrides)).encode()), RESOLVE_TIMEOUT_S
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(f"validating the settings took over {RESOLVE_TIMEOUT_S:g}s") from None
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"]
        raise ConfigError(lines[-1].removeprefix("edgefleet agent: error: "))
    try:
        return AgentConfig.from_mapping(json.loads(out))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"settings validation gave no usable answer: {exc}") from None


def file_id(path: Path | None) -> tuple[int, int, int] | None:
    """What tells a changed file: inode (atomic replace), size and mtime; None if absent."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


Apply = Callable[[AgentConfig], Awaitable[Change]]


class Reloader:
    """Runs reloads one at a time: on :meth:`request` (SIGHUP, Greengrass) or a file change."""

    def __init__(
        self, apply: Apply, config_file: Path | None, check_s: Callable[[], float]
    ) -> None:
        self._apply = apply
        self.config_file = config_file
        self._check_s = check_s
        self._wanted = asyncio.Event()
        self._overrides: dict[str, str] = {}
        self._why = "SIGHUP"
        self._seen = file_id(config_file)
        self.applied = 0
        self.refused = 0

    def request(self, overrides: Mapping[str, str] | None = None, why: str = "SIGHUP") -> None:
        """Reload soon; ``overrides`` (Greengrass configuration) replace the previous ones."""
        if overrides is not None:
            self._overrides = dict(overrides)
        self._why = why
        self._wanted.set()

    def wake(self) -> None:
        """Let :meth:`run` see its ``stop`` event now."""
        self._wanted.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reload on request or when the settings file changes, until ``stop``."""
        while not stop.is_set():
            check_s = self._check_s() if self.config_file is not None else 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), check_s or None)
            if stop.is_set():
                return
            now = file_id(self.config_file)
            if not self._wanted.is_set() and now == self._seen:
                continue
            why = self._why if self._wanted.is_set() else "settings file changed"
            await asyncio.sleep(SETTLE_S)  # one reload for a burst (a deployment, an editor)
            self._wanted.clear()
            now = file_id(self.config_file)
            self._seen = now
            await self.reload_once(why)

    async def reload_once(self, why: str) -> Change | None:
        """Resolve and apply the settings now; log one line either way."""
        try:
            new = await resolve(self.config_file, self._overrides)
            change = await self._apply(new)
        except Exception as exc:  # noqa: BLE001 - a reload must never end the agent
            self.refused += 1
            known = isinstance(exc, ConfigError | OSError)
            reason = " ".join((str(exc) if known else repr(exc)).split())
            log.error(
                "settings reload REFUSED; the running settings stay",
                extra=kv(trigger=why, reason=reason),
            )
            return None
        self.applied += 1
        log.info(
            "settings reloaded" if change.changed else "settings reloaded; nothing changed",
            extra=kv(trigger=why, changed=",".join(change.changed) or "-",
                     reconnect=change.reconnect),
        )
        return change
