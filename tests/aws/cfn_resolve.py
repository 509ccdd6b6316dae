"""Resolve the intrinsic functions of the infra/ templates for given parameter values, and turn
CloudFormation property names into API parameter names: the tests then hand the resources'
properties to the AWS APIs (moto) as CloudFormation would.

Covers what the templates use: Ref, Fn::Sub (``${Name}``, ``${Name.Attr}``, ``${!literal}``),
Fn::GetAtt, Fn::FindInMap, Fn::If, Fn::Join. Anything else raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

_SUB = re.compile(r"\$\{(!?)([^}]+)\}")
_FUNCTIONS = {"Ref": "_ref", "Fn::GetAtt": "_get_att", "Fn::Sub": "_sub",
              "Fn::FindInMap": "_find_in_map", "Fn::If": "_if", "Fn::Join": "_join"}


class Resolver:
    """``refs``: Ref values (parameters, pseudo parameters, resources' ids); ``attrs``:
    ``"Resource.Attr"`` values; ``conditions``: each condition's truth."""

    def __init__(self, template: Mapping[str, Any], refs: Mapping[str, Any],
                 attrs: Mapping[str, Any], conditions: Mapping[str, bool]) -> None:
        self.mappings = template.get("Mappings", {})
        self.refs = refs
        self.attrs = attrs
        self.conditions = conditions

    def __call__(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self(x) for x in node]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            if key == "Ref" or key.startswith("Fn::"):
                if key not in _FUNCTIONS:
                    raise NotImplementedError(key)
                fn: Callable[[Any], Any] = getattr(self, _FUNCTIONS[key])
                return fn(arg)
        return {k: self(v) for k, v in node.items()}

    def _ref(self, name: str) -> Any:
        return self.refs[name]

    def _get_att(self, arg: list[str]) -> Any:
        return self.attrs[".".join(arg)]

    def _sub(self, text: str) -> str:
        def one(m: re.Match[str]) -> str:
            if m.group(1):
                return "${" + m.group(2) + "}"
            name = m.group(2)
            return str(self.attrs[name] if "." in name and name not in self.refs
                       else self.refs[name])

        return _SUB.sub(one, text)

    def _find_in_map(self, arg: list[Any]) -> Any:
        table, key, field = (str(self(x)) for x in arg)
        return self.mappings[table][key][field]

    def _if(self, arg: list[Any]) -> Any:
        name, yes, no = arg
        return self(yes if self.conditions[name] else no)

    def _join(self, arg: list[Any]) -> str:
        sep, parts = arg
        return str(sep).join(str(p) for p in self(parts))


def camel(node: Any, keep: frozenset[str] = frozenset()) -> Any:
    """CloudFormation's ``PascalCase`` keys as the APIs' ``camelCase`` (ECS, IoT); the
    values of keys in ``keep`` (free-form maps such as log driver options) stay as they are."""
    if isinstance(node, list):
        return [camel(x, keep) for x in node]
    if not isinstance(node, dict):
        return node
    return {k[:1].lower() + k[1:]: v if k in keep else camel(v, keep) for k, v in node.items()}
