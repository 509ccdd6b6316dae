"""Run a command with a deadline and a bound on its output, as collectors need it.

The command runs in a session of its own, so on timeout (or too much output) the whole
process group is killed (SIGKILL), grandchildren included. Output is read as it comes and never
held beyond ``max_bytes`` (stdout) and ``max_stderr`` (stderr). No shell is involved.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a bounded run gave: exit code (``None`` when killed), output, and why it stopped."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    truncated: bool = False

    def error(self, what: str) -> str | None:
        """One line saying why the run did not succeed, or ``None`` if it exited 0 in time."""
        if self.timed_out:
            return f"{what}: killed after its timeout"
        if self.truncated:
            return f"{what}: killed, output larger than its bound"
        if self.exit_code != 0:
            first = self.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
            detail = f": {first[0][:200]}" if first else ""
            return f"{what}: exit code {self.exit_code}{detail}"
        return None


Runner = Callable[[Sequence[str]], CommandResult]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Kill the group if the leader still runs (an error midway), wait for it, close pipes."""
    if proc.returncode is None and proc.poll() is None:
        _kill_group(proc)
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _drain(
    proc: subprocess.Popen[bytes], deadline: float, max_bytes: int, max_stderr: int
) -> tuple[bytes, bytes, bool, bool]:
    """Read both pipes until EOF, the deadline or too much stdout: (out, err, late, too_big).

    Stderr beyond ``max_stderr`` is read and thrown away, so a chatty command never blocks.
    """
    if proc.stdout is None or proc.stderr is None:
        raise ValueError("both pipes are needed")
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    limits = {out_fd: max_bytes, err_fd: max_stderr}
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(bufs[out_fd]), bytes(bufs[err_fd]), True, False
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                buf = bufs[key.fd]
                buf += chunk[: max(0, limits[key.fd] + 1 - len(buf))]
                if key.fd == out_fd and len(buf) > max_bytes:
                    return bytes(buf[:max_bytes]), bytes(bufs[err_fd]), False, True
    return bytes(bufs[out_fd]), bytes(bufs[err_fd][:max_stderr]), False, False


def run_bounded(
    argv: Sequence[str],
    *,
    timeout_s: float,
    max_bytes: int = 1 << 20,
    max_stderr: int = 4096,
    env: dict[str, str] | None = None,
) -> CommandResult:
    """Run ``argv`` (no shell); at most ``timeout_s`` seconds and ``max_bytes`` of stdout.

    Raises ``OSError`` when the program cannot be started (missing, not executable).
    """
    deadline = time.monotonic() + timeout_s
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=env,
    )
    try:
        out, err, timed_out, truncated = _drain(proc, deadline, max_bytes, max_stderr)
        if not (timed_out or truncated):
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out or truncated:
            _kill_group(proc)
    finally:
        _reap(proc)
    code = None if (timed_out or truncated) else proc.returncode
    return CommandResult(code, out, err, timed_out, truncated)
