"""The agent's process: ``edgefleet agent`` validates, re-executes itself, serves, reloads.

Two process images, one PID (``docs/agent.md``, *One process, two images*): :func:`run_agent`
validates the settings with pydantic-settings and runs the preflight checks, then re-executes
the interpreter as ``python -m edgefleet.agent.run``, which calls :func:`serve` with the
plain :class:`~edgefleet.agent.config.AgentConfig` it was handed. :func:`serve` runs the
:class:`~edgefleet.agent.main.Agent` until SIGTERM/SIGINT; SIGHUP reloads its settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from edgefleet.agent.collectors import CollectorOptions, build_collectors, collect_all
from edgefleet.agent.config import HANDOVER_ENV, AgentConfig, Handover
from edgefleet.agent.main import Agent, preflight
from edgefleet.common.logs import JsonFormatter, kv

log = logging.getLogger(__name__)

RUNTIME_MODULE = "edgefleet.agent.run"
# Blocked from just before the re-exec until the new image has its handlers: a SIGTERM in
# between is delivered then (a clean stop) instead of killing the half-started process; a
# SIGHUP then is a reload of what was just read.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
_HANDOVER_SIGNALS = _STOP_SIGNALS | {signal.SIGHUP}


def _print_once(settings: AgentConfig) -> int:
    collectors = build_collectors(settings.collectors or None, settings.disabled_collectors,
                                  CollectorOptions.from_config(settings))
    time.sleep(0.5)  # rates and CPU need a short window after the first reading
    taken = time.time()
    metrics, failed = collect_all(collectors)
    doc = {"ts": taken, "metrics": metrics, "failed": failed}
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


async def _serve(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, agent.stop)
    loop.add_signal_handler(signal.SIGHUP, agent.reloader.request)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDOVER_SIGNALS)  # blocked across the re-exec
    await agent.run()


def serve(config: AgentConfig, config_file: Path | None = None) -> int:
    """Run the agent in this process until SIGTERM/SIGINT (the re-executed image's job);
    SIGHUP and changes of ``config_file`` reload the settings."""
    thing = preflight(config)

    async def main() -> int:
        agent = Agent(config, thing, config_file)
        await _serve(agent)
        return 0 if agent.failure is None else 1

    return asyncio.run(main())


def _logging_now() -> tuple[str, str]:
    """The level and format ``setup_logging`` gave this process, for the next image."""
    root = logging.getLogger()
    json_out = any(isinstance(h.formatter, JsonFormatter) for h in root.handlers)
    return logging.getLevelName(root.level), "json" if json_out else "text"


def _reexec(config: AgentConfig, config_file: Path | None) -> None:
    """Replace this process image (same PID) by the lean runtime; returns only on failure."""
    level, fmt = _logging_now()
    env = dict(os.environ)
    env[HANDOVER_ENV] = Handover(config, level, fmt, config_file).to_env()
    argv = [sys.executable, "-m", RUNTIME_MODULE]
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, _HANDOVER_SIGNALS)
    try:
        os.execve(sys.executable, argv, env)  # noqa: S606 - our own interpreter, fixed argv
    except OSError as exc:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDOVER_SIGNALS)
        log.warning("cannot re-execute the agent; running it here", extra=kv(error=str(exc)))


def run_agent(config: Path | None = None, once: bool = False) -> int:
    """``edgefleet agent``: run until SIGTERM/SIGINT, or print one sample with ``once``.

    Settings are validated here, with pydantic-settings; the long-running agent is then the
    same process re-executed without pydantic (:mod:`edgefleet.agent.run`).
    """
    # A SIGHUP before the runtime has its handler is a no-op (it ignores what it reads next).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from edgefleet.agent.settings import AgentSettings
    from edgefleet.common.settings import load_settings

    resolved = AgentConfig.from_settings(load_settings(AgentSettings, config))
    if once:
        return _print_once(resolved)
    preflight(resolved)
    named = config or os.environ.get("EDGE_AGENT_CONFIG") or None
    config_file = Path(named).absolute() if named else None
    if sys.executable:
        _reexec(resolved, config_file)
    return serve(resolved, config_file)
