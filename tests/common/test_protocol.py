"""The wire contract: models, shipped JSON Schema, and the reasons a message is refused."""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.common import protocol as p
from edgefleet.errors import ProtocolError

SHIPPED = json.loads(resources.files("edgefleet.common").joinpath("protocol.schema.json").read_text())


def _metrics(device: str = "dev-1", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "v": 1,
        "device_id": device,
        "stream": "a1b2c3",
        "sent_at": 1_700_000_010.5,
        "samples": [
            {"seq": 7, "ts": 1_700_000_000.0, "metrics": {"cpu.percent": 12.5, "disk.used_percent[/]": 40}},
            {"seq": 8, "ts": 1_700_000_010.0, "metrics": {"cpu.percent": 13.0}, "failed": ["temp"]},
        ],
        "health": {
            "queue_depth": 2, "queue_bytes": 300, "oldest_age_s": 10.5, "dropped_total": 0,
            "publish_errors_total": 1, "rss_bytes": 30_000_000, "agent_version": "0.1.0",
        },
    }
    doc.update(extra)
    return doc


def test_shipped_schema_matches_the_models() -> None:
    assert json.loads(json.dumps(p.json_schema())) == SHIPPED


def test_schema_and_models_agree_on_examples() -> None:
    good = _metrics()
    jsonschema.validate(good, SHIPPED)
    msg = p.decode(p.metrics_topic("dev-1"), json.dumps(good).encode())
    assert isinstance(msg, p.MetricsMessage)
    assert [s.seq for s in msg.samples] == [7, 8]
    assert msg.samples[0].ts == 1_700_000_000.0  # time TAKEN, not sent_at
    status = {"v": 1, "device_id": "dev-1", "state": "offline", "ts": 1.0}
    jsonschema.validate(status, SHIPPED)
    assert isinstance(p.decode(p.status_topic("dev-1"), json.dumps(status).encode()), p.StatusMessage)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(samples=[]), "malformed"),
        (lambda d: d["samples"][0].update(seq=-1), "malformed"),
        (lambda d: d["samples"][0]["metrics"].update({"Bad Key": 1}), "malformed"),
        (lambda d: d.update(v=2), "unknown_version"),
        (lambda d: d.update(device_id="dev-2"), "spoofed"),
    ],
)
def test_refusal_reasons(mutate: Any, reason: str) -> None:
    doc = _metrics()
    mutate(doc)
    with pytest.raises(ProtocolError) as err:
        p.decode(p.metrics_topic("dev-1"), json.dumps(doc).encode())
    assert err.value.reason == reason
    # the schema refuses the same documents (spoofing is a topic check it cannot see)
    if reason not in ("spoofed",):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, SHIPPED)


def test_oversized_not_json_and_bad_topic() -> None:
    with pytest.raises(ProtocolError, match="oversized"):
        p.decode(p.metrics_topic("d"), b" " * (p.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ProtocolError, match="malformed"):
        p.decode(p.metrics_topic("d"), b"\xff\xfe")
    with pytest.raises(ProtocolError, match="malformed"):
        p.decode(p.metrics_topic("d"), b"[1,2]")
    with pytest.raises(ProtocolError, match="bad_topic"):
        p.decode("dt/edgefleet/d/other", b"{}")
    with pytest.raises(ProtocolError, match="bad_topic"):
        p.decode("dt/other/d/metrics", b"{}")


def test_encode_round_trip_is_compact() -> None:
    msg = p.MetricsMessage.model_validate(_metrics())
    raw = p.encode(msg)
    assert b" " not in raw
    assert p.decode(p.metrics_topic("dev-1"), raw) == msg


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_decode_never_raises_anything_but_protocol_error(blob: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        p.decode(p.metrics_topic("dev-1"), blob)
