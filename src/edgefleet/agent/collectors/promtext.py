"""The subset of the Prometheus text exposition format that textfile and exec outputs use.

Accepted, line by line: blank lines; comments (``# HELP``, ``# TYPE`` and any other ``#``
line, all ignored); samples ``name value [timestamp]`` and ``name{l="v",...} value
[timestamp]`` with the usual escapes (``\\\\``, ``\\"``, ``\\n``) in label values. The
timestamp is ignored (the sample's own time applies). ``NaN`` and ``±Inf`` are valid and
skipped. Anything else is a bad line: reported with its number, the rest still used.

:func:`prom_metrics` turns the samples into edgefleet keys: the family is
``<prefix>.<name>`` (lower case, ``:`` as ``_``); no label gives ``family``, one label gives
``family[value]``, several give ``family[a=1,b=2]`` in label-name order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgefleet.agent.collectors.base import metric_key

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_VALUE = re.compile(r"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[Ii]nf|NaN|nan)")
_TIMESTAMP = re.compile(r"-?\d{1,20}")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
MAX_FAMILY_CHARS = 64


class BadLineError(ValueError):
    """A line that is neither blank, a comment nor a valid sample."""


@dataclass(frozen=True, slots=True)
class PromSample:
    """One sample line: metric name, labels (sorted by name), value, and its line number."""

    line: int
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(slots=True)
class Parsed:
    """Samples of a text and its bad lines as ``(line number, reason)``."""

    samples: list[PromSample] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)


def _label_value(text: str, pos: int) -> tuple[str, int]:
    """The quoted value starting at ``text[pos] == '"'``; returns it and the index after it."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt not in _ESCAPES:
                raise BadLineError(f"bad escape in label value at column {i + 1}")
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    raise BadLineError("label value not closed")


def _labels(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Labels from ``text[pos] == '{'`` to the matching ``}``; returns them and the index after."""
    labels: dict[str, str] = {}
    i = pos + 1
    while True:
        if text[i : i + 1] == "}":
            return labels, i + 1
        match = _LABEL.match(text, i)
        if match is None or text[match.end() : match.end() + 2] != '="':
            raise BadLineError(f'expected label="value" at column {i + 1}')
        value, i = _label_value(text, match.end() + 1)
        if match.group() in labels:
            raise BadLineError(f"label {match.group()!r} given twice")
        labels[match.group()] = value
        if text[i : i + 1] == ",":
            i += 1
        elif text[i : i + 1] != "}":
            raise BadLineError(f"expected ',' or '}}' at column {i + 1}")


def parse_line(text: str, line: int) -> PromSample | None:
    """The sample on one line, ``None`` for a blank or comment line; :class:`BadLineError` else."""
    text = text.strip()
    if not text or text.startswith("#"):
        return None
    name = _NAME.match(text)
    if name is None:
        raise BadLineError("does not start with a metric name")
    labels: dict[str, str] = {}
    rest = name.end()
    if text[rest : rest + 1] == "{":
        labels, rest = _labels(text, rest)
    fields = text[rest:].split()
    if not 1 <= len(fields) <= 2 or (rest < len(text) and not text[rest].isspace()):
        raise BadLineError("expected: name{labels} value [timestamp]")
    if not _VALUE.fullmatch(fields[0]):
        raise BadLineError(f"value {fields[0][:40]!r} is not a number")
    if len(fields) == 2 and not _TIMESTAMP.fullmatch(fields[1]):
        raise BadLineError(f"timestamp {fields[1][:40]!r} is not an integer")
    kept = tuple(sorted((k, v) for k, v in labels.items() if v != ""))
    return PromSample(line, name.group(), kept, float(fields[0]))


def parse_exposition(text: str) -> Parsed:
    """Every sample of ``text`` and every bad line (number and reason)."""
    parsed = Parsed()
    for number, raw in enumerate(text.split("\n"), start=1):  # only \n ends a line here
        try:
            sample = parse_line(raw, number)
        except (BadLineError, IndexError) as exc:
            parsed.bad.append((number, str(exc) or "malformed"))
            continue
        if sample is not None:
            parsed.samples.append(sample)
    return parsed


def family_of(prefix: str, name: str) -> str:
    """``prefix.name`` with the name in lower case and ``:`` as ``_``."""
    return f"{prefix}.{name.lower().replace(':', '_')}"


def instance_of(labels: tuple[tuple[str, str], ...]) -> str | None:
    """None without labels; the value of a single label; else ``a=1,b=2``."""
    if not labels:
        return None
    if len(labels) == 1:
        return labels[0][1]
    return ",".join(f"{k}={v}" for k, v in labels)


def prom_metrics(
    samples: Iterable[PromSample], prefix: str, max_keys: int
) -> tuple[dict[str, float], list[tuple[int, str]]]:
    """Edgefleet metrics from samples, at most ``max_keys``; also ``(line, reason)`` refusals.

    Non-finite values are skipped silently (valid in the format, meaningless as a metric).
    """
    out: dict[str, float] = {}
    refused: list[tuple[int, str]] = []
    for sample in samples:
        if not math.isfinite(sample.value):
            continue
        family = family_of(prefix, sample.name)
        if len(family) > MAX_FAMILY_CHARS:
            refused.append((sample.line, f"name longer than {MAX_FAMILY_CHARS - 1 - len(prefix)}"))
            continue
        key = metric_key(family, instance_of(sample.labels))
        if key in out:
            refused.append((sample.line, f"{key} given twice"))
        elif len(out) >= max_keys:
            refused.append((sample.line, f"over the bound of {max_keys} keys"))
        else:
            out[key] = sample.value
    return out, refused
