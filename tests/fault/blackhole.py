"""A TCP proxy on 127.0.0.1 that can black-hole the network silently, and heal it.

    proxy = BlackholeProxy("127.0.0.1", broker.port)
    await proxy.start()            # clients connect to proxy.port instead of the broker
    proxy.cut()                    # nothing moves any more, in either direction
    ...
    proxy.restore()                # bytes flow again on the connections still open
    await proxy.close()

A cut models a router that drops every packet, not a peer that hangs up: no FIN and no RST
reaches either side, every socket stays open. Bytes sent during the cut are held, not thrown
away, the way TCP retransmission delivers them once the path heals; a side that closed its
socket during the cut (its FIN) is passed on only after the restore, like the FIN itself
would be. A connection accepted during the cut completes its TCP handshake (the kernel does
that) but is not connected on to the broker until the restore: a TLS ClientHello sent into the
hole gets no answer. So a client notices a dead link only through its own timers
(MQTT keep-alive and ping timeout, connect and TLS timeouts), which is what the fault suite
checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    """What went through the proxy; times are ``time.monotonic()``."""

    accepted: int = 0
    accepted_during_cut: int = 0
    upstream_connected: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    closed_by_client: int = 0
    closed_by_server: int = 0
    cuts: list[tuple[float, float | None]] = field(default_factory=list)


class BlackholeProxy:
    """Forwards every connection to ``target_host:target_port`` until :meth:`cut`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.stats = ProxyStats()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    async def start(self) -> BlackholeProxy:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        """Stop forwarding in both directions; close nothing."""
        if self._open.is_set():
            self._open.clear()
            self.stats.cuts.append((time.monotonic(), None))

    def restore(self) -> None:
        """Forward again whatever is still connected (held bytes first)."""
        if not self._open.is_set():
            start, _ = self.stats.cuts[-1]
            self.stats.cuts[-1] = (start, time.monotonic())
            self._open.set()

    def reset_one(self) -> bool:
        """Abort the oldest open connection, both sides (a TCP RST): one client loses its
        link while the others go on. False when none is open."""
        while self._pairs:
            client, server = self._pairs.pop(0)
            if not client.transport.is_closing():
                client.transport.abort()
                server.transport.abort()
                return True
        return False

    async def close(self) -> None:
        """Stop listening and abort every connection (teardown only)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    # -- internals -------------------------------------------------------------------------

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:
            self._tasks.add(me)
        self.stats.accepted += 1
        if self.is_cut:
            self.stats.accepted_during_cut += 1
        self._writers.add(c_writer)
        s_writer: asyncio.StreamWriter | None = None
        try:
            await self._open.wait()  # a connection made during the cut hangs until the restore
            try:
                s_reader, s_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return  # broker down: the client sees its connection closed
            self.stats.upstream_connected += 1
            self._writers.add(s_writer)
            self._pairs.append((c_writer, s_writer))
            pumps = {
                asyncio.ensure_future(self._pump(c_reader, s_writer, up=True)),
                asyncio.ensure_future(self._pump(s_reader, c_writer, up=False)),
            }
            self._tasks.update(pumps)
            try:
                _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if pending:  # the other direction gets a moment to finish its half-close
                    await asyncio.wait(pending, timeout=5)
            finally:
                for pump in pumps:
                    pump.cancel()
                self._tasks.difference_update(pumps)
        finally:
            for writer in (c_writer, s_writer):
                if writer is not None:
                    writer.transport.abort()
                    self._writers.discard(writer)
            if me is not None:
                self._tasks.discard(me)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while True:
                await self._open.wait()
                data = await reader.read(_CHUNK)
                await self._open.wait()  # read just before a cut: held, sent after the restore
                if not data:
                    if up:
                        self.stats.closed_by_client += 1
                    else:
                        self.stats.closed_by_server += 1
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                if up:
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return
