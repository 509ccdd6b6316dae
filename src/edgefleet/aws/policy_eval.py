"""Small, honest evaluators for the two access-control languages edgefleet uses.

:class:`IotPolicyEvaluator` decides an AWS IoT Core request against policy documents, for the
subset of the language in :mod:`edgefleet.aws.policies`: ``Effect`` Allow/Deny (an explicit
Deny wins, no Allow means an implicit deny), ``Action`` (``iot:Connect``, ``iot:Publish``,
``iot:Subscribe``, ``iot:Receive``, ``*`` globs), ``Resource`` ARNs with ``*``/``?`` and the
variables ``${iot:Connection.Thing.ThingName}`` and ``${iot:ClientId}``, and the one
condition ``Bool iot:Connection.Thing.IsAttached``. Anything else raises
:class:`UnsupportedPolicyError` instead of being guessed.

:class:`MosquittoAcl` mirrors Mosquitto 2.0's ``acl_file`` checks (``src/security_default.c``
of 2.0.11): ``topic``/``pattern``/``user`` lines, ``%u``/``%c`` substitution, deny lines first,
MQTT wildcard matching. Mosquitto 2.0 grants every SUBSCRIBE and filters at delivery (a
``FIXME`` in its source), which :meth:`MosquittoAcl.allows` reproduces.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Decision = Literal["allow", "explicit_deny", "implicit_deny"]
MqttAccess = Literal["read", "write", "subscribe"]

RESOURCE_KINDS = {
    "iot:connect": "client",
    "iot:publish": "topic",
    "iot:receive": "topic",
    "iot:subscribe": "topicfilter",
}
_STATEMENT_KEYS = {"Sid", "Effect", "Action", "Resource", "Condition"}
_VAR_RE = re.compile(r"\$\{([^}]*)\}")
_IS_ATTACHED = "iot:Connection.Thing.IsAttached"


class UnsupportedPolicyError(ValueError):
    """The document uses a part of the policy language this evaluator does not model."""


@dataclass(frozen=True)
class Connection:
    """An MQTT connection: its client id and the things its certificate is attached to."""

    client_id: str
    attached_things: frozenset[str] = field(default_factory=frozenset)

    @property
    def thing_name(self) -> str | None:
        """What ``${iot:Connection.Thing.ThingName}`` resolves to, or None (unresolved)."""
        return self.client_id if self.client_id in self.attached_things else None


def _as_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise UnsupportedPolicyError(f"expected a string or a list of strings, got {value!r}")
    return items


def _variable(name: str, conn: Connection) -> str | None:
    if name == "iot:Connection.Thing.ThingName":
        return conn.thing_name
    if name == "iot:ClientId":
        return conn.client_id
    raise UnsupportedPolicyError(f"policy variable ${{{name}}} is not supported")


def _glob(text: str) -> str:
    return "".join(
        ".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in text
    )


def resource_regex(pattern: str, conn: Connection) -> re.Pattern[str] | None:
    """The regex for one Resource; variables match literally; None if one is unresolved."""
    parts: list[str] = []
    pos = 0
    for match in _VAR_RE.finditer(pattern):
        value = _variable(match.group(1), conn)
        if value is None:
            return None
        parts += [_glob(pattern[pos : match.start()]), re.escape(value)]
        pos = match.end()
    parts.append(_glob(pattern[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def _condition_holds(condition: Mapping[str, Any], conn: Connection) -> bool:
    for operator, tests in condition.items():
        if operator != "Bool" or not isinstance(tests, dict) or set(tests) != {_IS_ATTACHED}:
            raise UnsupportedPolicyError(f"condition {operator} {tests!r} is not supported")
        expected = str(tests[_IS_ATTACHED]).lower() == "true"
        if (conn.thing_name is not None) != expected:
            return False
    return True


class IotPolicyEvaluator:
    """Decides requests against the policy documents attached to one certificate."""

    def __init__(
        self, documents: Sequence[Mapping[str, Any]], *, region: str, account: str,
        partition: str = "aws",
    ) -> None:
        self._statements = [stmt for doc in documents for stmt in _statements(doc)]
        self._prefix = f"arn:{partition}:iot:{region}:{account}:"

    def arn(self, action: str, name: str) -> str:
        """The resource ARN AWS IoT checks for ``action`` on ``name`` (client id/topic/filter)."""
        kind = RESOURCE_KINDS.get(action.lower())
        if kind is None:
            raise UnsupportedPolicyError(f"action {action!r} is not modelled")
        return f"{self._prefix}{kind}/{name}"

    def decide(self, conn: Connection, action: str, name: str) -> Decision:
        """``allow``, ``explicit_deny`` or ``implicit_deny`` for one request."""
        resource = self.arn(action, name)
        allowed = False
        for stmt in self._statements:
            if not _applies(stmt, conn, action, resource):
                continue
            if stmt["Effect"] == "Deny":
                return "explicit_deny"
            allowed = True
        return "allow" if allowed else "implicit_deny"

    def allows(self, conn: Connection, action: str, name: str) -> bool:
        """True when :meth:`decide` says ``allow``."""
        return self.decide(conn, action, name) == "allow"


def _statements(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = doc.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    for stmt in statements:
        unknown = set(stmt) - _STATEMENT_KEYS
        if unknown or stmt.get("Effect") not in ("Allow", "Deny"):
            raise UnsupportedPolicyError(f"statement {stmt!r} uses {sorted(unknown)} or no Effect")
        _as_list(stmt["Action"])
        _as_list(stmt["Resource"])
    return list(statements)


def _applies(stmt: Mapping[str, Any], conn: Connection, action: str, resource: str) -> bool:
    actions = _as_list(stmt["Action"])
    if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
        return False
    if "Condition" in stmt and not _condition_holds(stmt["Condition"], conn):
        return False
    for pattern in _as_list(stmt["Resource"]):
        regex = resource_regex(pattern, conn)
        if regex is not None and regex.fullmatch(resource):
            return True
    return False


# --- Mosquitto ------------------------------------------------------------------------------


def topic_matches(sub: str, topic: str) -> bool:
    """MQTT matching of a concrete ``topic`` against filter ``sub`` (``$`` topics included)."""
    if topic.startswith("$") and sub[:1] in ("+", "#"):
        return False
    subs, levels = sub.split("/"), topic.split("/")
    for i, part in enumerate(subs):
        if part == "#":
            return i == len(subs) - 1
        if i >= len(levels) or (part not in ("+", levels[i])):
            return False
    return len(subs) == len(levels)


@dataclass(frozen=True)
class AclEntry:
    """One ``topic``/``pattern`` line: the filter and what it grants (nothing: deny)."""

    topic: str
    read: bool
    write: bool

    @property
    def deny(self) -> bool:
        return not (self.read or self.write)


_ACCESS = {"read": (True, False), "write": (False, True), "readwrite": (True, True),
           "deny": (False, False)}


@dataclass
class MosquittoAcl:
    """A parsed Mosquitto ACL file; :meth:`allows` answers as Mosquitto 2.0 does."""

    users: dict[str | None, list[AclEntry]] = field(default_factory=dict)
    patterns: list[AclEntry] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> MosquittoAcl:
        """Parse ``acl_file`` text; raise ``ValueError`` on a line Mosquitto would refuse."""
        acl = cls()
        user: str | None = None
        for raw in text.splitlines():
            line = raw.rstrip()
            if not line.strip() or line.startswith("#"):
                continue
            head, _, rest = line.lstrip(" ").partition(" ")
            if head == "user":
                if not rest.strip():
                    raise ValueError(f"missing user name: {raw!r}")
                user = rest.strip()
            elif head in ("topic", "pattern"):
                entry = _entry(rest, raw)
                target = acl.patterns if head == "pattern" else acl.users.setdefault(user, [])
                _add(target, entry)
            else:
                raise ValueError(f"invalid ACL line: {raw!r}")
        return acl

    def allows(
        self, *, username: str | None, client_id: str, access: MqttAccess, topic: str
    ) -> bool:
        """Would Mosquitto allow ``access`` on ``topic`` for this client?"""
        if access == "subscribe":
            return True  # Mosquitto 2.0 grants every SUBSCRIBE and checks each delivery.
        entries = self.users.get(username, [])
        found = _check(((e, e.topic) for e in entries), topic, access)
        if found is not None:
            return found
        if any(ch in (username or "") + client_id for ch in "+#"):
            return False
        for entry in self.patterns:
            if "%u" in entry.topic and username is None:
                continue
            local = entry.topic.replace("%c", client_id)
            local = local.replace("%u", username) if username is not None else local
            found = _check([(entry, local)], topic, access)
            if found is not None:
                return found
        return False


def _entry(rest: str, raw: str) -> AclEntry:
    access, _, topic = rest.lstrip(" ").partition(" ")
    topic = topic.strip()
    if not topic:
        access, topic = "readwrite", access
    if access not in _ACCESS or not _valid_filter(topic):
        raise ValueError(f"invalid ACL line: {raw!r}")
    read, write = _ACCESS[access]
    return AclEntry(topic, read, write)


def _add(target: list[AclEntry], entry: AclEntry) -> None:
    if entry.deny:
        target.insert(0, entry)  # Mosquitto puts deny entries at the front of the list.
    else:
        target.append(entry)


def _valid_filter(topic: str) -> bool:
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            return False
        if level == "#" and i != len(levels) - 1:
            return False
    return bool(topic)


def _check(
    entries: Iterable[tuple[AclEntry, str]], topic: str, access: MqttAccess
) -> bool | None:
    """First decisive entry: False for a matching deny, True for a grant, None: no match."""
    for entry, acl_topic in entries:
        if topic.startswith("$") and not acl_topic.startswith("$"):
            continue
        if topic_matches(acl_topic, topic):
            if entry.deny:
                return False
            if (access == "read" and entry.read) or (access == "write" and entry.write):
                return True
    return None
