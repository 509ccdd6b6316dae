"""The package layout is the architecture: no import cycles, and lower layers never import upper ones.

Walks the AST of every module under ``src/edgefleet`` (no import is executed). Every ``import``
statement counts as an edge, wherever it stands: at module level, inside a function (lazy) or
under ``if TYPE_CHECKING:``. A lazy or type-only import still ties the two modules together: the
reader has to understand both, and mypy follows it. ``from pkg import name`` counts as an edge to
``pkg.name`` when that is a module, otherwise to ``pkg``. The layers are in docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "edgefleet"

# Each top-level part of the package ("__init__" is edgefleet/__init__.py, which holds only the
# version) and the parts it may import besides itself. Lower layers first.
BASE = {"__init__", "errors", "common", "wire"}
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "errors": set(),
    "common": {"errors"},
    "wire": {"errors", "common"},
    "transport": BASE,
    "notify": BASE,  # the Slack Lambda imports it: never the backend
    "agent": BASE | {"transport"},
    "backend": BASE | {"transport", "notify"},
    "aws": BASE | {"notify"},
    # development tooling: the simulator reuses the agent's batching; the demo runs the simulator
    "sim": BASE | {"transport", "agent", "dev"},
    "dev": BASE | {"transport", "sim"},
    # the command line wires everything together
    "cli": BASE | {"agent", "backend", "aws", "dev", "sim", "transport"},
    "__main__": {"cli"},
}
LOWER = {"errors", "common", "wire", "transport"}
UPPER = {"agent", "backend", "aws"}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(src: Path = SRC) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / ROOT).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgefleet modules that ``name`` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_pkg]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {m for m in found if m in known and m != name}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = all_modules(src)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        src_part = part(module)
        for dep in sorted(deps):
            dep_part = part(dep)
            if dep_part == src_part:
                continue
            lower_into_upper = src_part in LOWER and dep_part in UPPER
            if lower_into_upper or dep_part not in ALLOWED.get(src_part, set()):
                bad.append(f"{module} imports {dep} ({src_part} may not import {dep_part})")
    return bad


GRAPH = import_graph()


def test_every_part_has_a_layer() -> None:
    assert {part(m) for m in GRAPH} <= set(ALLOWED), "a new top-level part needs a place in ALLOWED"


def test_the_walk_sees_the_real_imports() -> None:
    # guards the walker itself: a test that found no edges could never fail
    assert "edgefleet.wire.base" in GRAPH["edgefleet.wire.messages"]  # module level
    assert "edgefleet.backend.greengrass" in GRAPH["edgefleet.backend.main"]  # inside a function
    assert "edgefleet.backend.alerts.centre" in GRAPH["edgefleet.backend.web.parts"]  # typing
    assert "edgefleet.wire.messages" in GRAPH["edgefleet.backend.settings"]


def test_no_import_cycle() -> None:
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_lower_layers_never_import_upper_ones() -> None:
    assert layer_violations(GRAPH) == []


def write(root: Path, module: str, text: str) -> None:
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.parents:
        if parent == root:
            break
        (parent / "__init__.py").touch()
    path.write_text(text)


@pytest.mark.parametrize(
    "how",
    ["import edgefleet.alpha.b", "from edgefleet.alpha import b", "from . import b", "from .b import X"],
)
def test_a_cycle_is_found_however_it_is_written(tmp_path: Path, how: str) -> None:
    write(tmp_path, "edgefleet.alpha.a", how + "\n")
    write(tmp_path, "edgefleet.alpha.b", "from typing import TYPE_CHECKING\n"
          "if TYPE_CHECKING:\n    from edgefleet.alpha.a import A\n")
    cycle = find_cycle(import_graph(tmp_path))
    assert cycle is not None and set(cycle) == {"edgefleet.alpha.a", "edgefleet.alpha.b"}


def test_a_lower_layer_importing_an_upper_one_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "edgefleet.backend.runtime", "X = 1\n")
    write(tmp_path, "edgefleet.wire.base", "def f():\n    from edgefleet.backend.runtime import X\n")
    assert layer_violations(import_graph(tmp_path)) == [
        "edgefleet.wire.base imports edgefleet.backend.runtime (wire may not import backend)"
    ]
