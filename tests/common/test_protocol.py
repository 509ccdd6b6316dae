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

from edgefleet.errors import ProtocolError
from edgefleet.wire import messages as p

SHIPPED = json.loads(resources.files("edgefleet.wire").joinpath("protocol.schema.json").read_text())


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


# -- strict wire types ----------------------------------------------------------------------

# JSON Schema calls 13.0 an integer (same number as 13); the backend reads the wire strictly
# and refuses it. Checked against the shipped schema read the same way: integers are JSON
# integers, bool is never a number.
_STRICT = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


def _sample(doc: dict[str, Any]) -> dict[str, Any]:
    sample: dict[str, Any] = doc["samples"][0]
    return sample


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        pytest.param(lambda d: _sample(d).update(seq="13"), "samples.0.seq", id="seq-string"),
        pytest.param(lambda d: _sample(d).update(seq=13.0), "samples.0.seq", id="seq-float"),
        pytest.param(lambda d: _sample(d).update(seq=13.5), "samples.0.seq", id="seq-fraction"),
        pytest.param(lambda d: _sample(d).update(seq=True), "samples.0.seq", id="seq-bool"),
        pytest.param(lambda d: _sample(d).update(seq=2**53), "samples.0.seq", id="seq-over-max"),
        pytest.param(lambda d: _sample(d).update(seq=2**63 - 1), "samples.0.seq", id="seq-int64-max"),
        pytest.param(lambda d: d.update(v=True), "v", id="version-bool"),
        pytest.param(lambda d: d.update(v=1.0), "v", id="version-float"),
        pytest.param(lambda d: _sample(d)["metrics"].update({"cpu.percent": "5"}), "samples.0.metrics.cpu.percent", id="value-string"),
        pytest.param(lambda d: _sample(d)["metrics"].update({"cpu.percent": True}), "samples.0.metrics.cpu.percent", id="value-bool"),
        pytest.param(lambda d: _sample(d)["metrics"].update({"cpu.percent": None}), "samples.0.metrics.cpu.percent", id="value-null"),
        pytest.param(lambda d: _sample(d).update(ts="1700000000"), "samples.0.ts", id="ts-string"),
        pytest.param(lambda d: _sample(d).update(ts=False), "samples.0.ts", id="ts-bool"),
        pytest.param(lambda d: d["health"].update(queue_depth=2.0), "health.queue_depth", id="health-int-float"),
        pytest.param(lambda d: d["health"].update(rss_bytes="1"), "health.rss_bytes", id="health-int-string"),
        pytest.param(lambda d: d.update(stream=5), "stream", id="stream-number"),
        pytest.param(lambda d: _sample(d).update(failed=[1]), "samples.0.failed.0", id="failed-number"),
    ],
)
def test_wire_types_are_strict_and_the_schema_agrees(mutate: Any, where: str) -> None:
    doc = _metrics()
    mutate(doc)
    with pytest.raises(ProtocolError) as err:
        p.decode(p.metrics_topic("dev-1"), json.dumps(doc).encode())
    assert err.value.reason == "malformed"
    assert err.value.detail.startswith(f"{where}: ")  # the detail names the field
    assert not _STRICT(SHIPPED).is_valid(doc)


def test_status_version_must_be_the_integer_one() -> None:
    for version in (True, 1.0, "1"):
        doc = {"v": version, "device_id": "dev-1", "state": "online", "ts": 1.0}
        with pytest.raises(ProtocolError):
            p.decode(p.status_topic("dev-1"), json.dumps(doc).encode())
        assert not _STRICT(SHIPPED).is_valid(doc)


def test_integers_and_the_largest_seq_pass() -> None:
    doc = _metrics()
    _sample(doc).update(seq=p.MAX_SEQ, ts=1_700_000_000)  # an integer is a valid number
    _sample(doc)["metrics"]["cpu.percent"] = 5
    _STRICT(SHIPPED).validate(doc)
    msg = p.decode(p.metrics_topic("dev-1"), json.dumps(doc).encode())
    assert isinstance(msg, p.MetricsMessage)
    assert (msg.samples[0].seq, msg.samples[0].metrics["cpu.percent"]) == (2**53 - 1, 5.0)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
@pytest.mark.parametrize("field", [b'"cpu.percent": 12.5', b'"ts": 1700000000.0'])
def test_non_finite_numbers_are_refused(literal: bytes, field: bytes) -> None:
    raw = json.dumps(_metrics()).encode()
    assert field in raw
    raw = raw.replace(field, field.split(b":")[0] + b": " + literal, 1)
    with pytest.raises(ProtocolError) as err:
        p.decode(p.metrics_topic("dev-1"), raw)
    assert err.value.reason == "malformed"
    assert "finite" in err.value.detail


def test_a_valid_message_takes_the_one_pass_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(*_: Any) -> None:
        raise AssertionError("the slow path ran for a valid message")

    monkeypatch.setattr(p, "_classify", slow)
    assert isinstance(p.decode(p.metrics_topic("dev-1"), json.dumps(_metrics()).encode()),
                      p.MetricsMessage)


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        pytest.param(lambda d: d["health"].update(dropped_total=2**53), "health.dropped_total", id="dropped-over-max"),
        pytest.param(lambda d: d["health"].update(queue_depth=10**30), "health.queue_depth", id="depth-huge"),
        pytest.param(lambda d: d["health"].update(oldest_age_s=1e300), "health.oldest_age_s", id="age-huge"),
    ],
)
def test_health_counters_are_bounded_like_seq(mutate: Any, where: str) -> None:
    """One device must not turn the fleet's summed figures (agents' dropped samples) absurd."""
    doc = _metrics()
    mutate(doc)
    with pytest.raises(ProtocolError) as err:
        p.decode(p.metrics_topic("dev-1"), json.dumps(doc).encode())
    assert err.value.reason == "malformed" and where in err.value.detail, err.value.detail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SHIPPED)


def test_status_interval_is_bounded() -> None:
    """A device announcing an interval of 1e300 s would never go stale."""
    doc = {"v": 1, "device_id": "dev-1", "state": "online", "ts": 1.7e9, "interval_s": 1e300}
    with pytest.raises(ProtocolError) as err:
        p.decode(p.status_topic("dev-1"), json.dumps(doc).encode())
    assert err.value.reason == "malformed" and "interval_s" in err.value.detail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SHIPPED)
