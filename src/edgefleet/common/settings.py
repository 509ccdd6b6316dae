"""Helpers shared by the agent's and the backend's pydantic-settings models.

Conventions (same for both services): an environment prefix (``EDGE_AGENT_`` /
``EDGE_BACKEND_``), an optional TOML config file whose unknown keys are an error, unknown
prefixed environment variables are an error too (pydantic-settings would ignore a typo),
and every failure becomes ONE line naming the setting.

The key and certificate checks live in the pydantic-free :mod:`edgefleet.common.files`
(the edge agent's long-running process uses them) and are re-exported here.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from edgefleet.common.files import check_cert_file, check_private_key
from edgefleet.errors import ConfigError

__all__ = ["check_cert_file", "check_private_key", "load_settings"]

S = TypeVar("S", bound=BaseSettings)


def _env_name(cls: type[BaseSettings], field: str) -> str:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return f"{prefix}{field}".upper()


def _one_line(cls: type[BaseSettings], exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    field = loc[0] if loc else "?"
    name = _env_name(cls, field) if field in cls.model_fields else field
    got = err.get("input")
    shown = "" if isinstance(got, dict) or got is None else f" (got {str(got)[:80]!r})"
    if err["type"] == "extra_forbidden":
        return f"unknown setting {'.'.join(loc)!r} in {source}"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    msg = str(err["msg"]).removeprefix("Value error, ")
    if not loc:
        return f"bad settings in {source}: {msg}{more}"
    return f"bad setting {name}: {msg}{shown}{more}"


def _check_env_typos(cls: type[BaseSettings]) -> None:
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    known = {_env_name(cls, f) for f in cls.model_fields}
    known.add(f"{prefix}CONFIG")
    for key in os.environ:
        if key.upper().startswith(prefix) and key.upper() not in known:
            raise ConfigError(
                f"unknown setting {key} in the environment; known: {', '.join(sorted(known))}"
            )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(cls: type[S], config_file: Path | None = None, **overrides: Any) -> S:
    """Build settings from file < environment < overrides, or raise a one-line ConfigError.

    The config file may also be named by ``<PREFIX>CONFIG`` in the environment.
    """
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    if config_file is None and os.environ.get(f"{prefix}CONFIG"):
        config_file = Path(os.environ[f"{prefix}CONFIG"])
    _check_env_typos(cls)
    file_values = _read_file(config_file) if config_file else {}
    source = str(config_file) if config_file else "the environment"
    unknown = set(file_values) - set(cls.model_fields)
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r} in {source}")
    env_set = {f for f in cls.model_fields if _env_name(cls, f) in os.environ}
    init = {k: v for k, v in file_values.items() if k not in env_set}
    init.update(overrides)
    try:
        return cls(**init)
    except ValidationError as exc:
        raise ConfigError(_one_line(cls, exc, source)) from None
