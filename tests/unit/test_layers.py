"""Imports point one way: the gateway's layers, and the packages around them, read from the source.

The gateway is built in layers, bottom first: `wire` (frames, handshake, the
connection protocol), `fanout` (publications, outbounds, the hub), `fanin`
(brokers, ordering, history), `session` (admission, commands, limits),
`process` (the app, uvicorn, the drain). A module may import its own layer
and the ones below it, never one above. Around it: `shared` imports neither
`gateway` nor `booking_api`, and what other backends import from `shared`
never reaches the developer toolbox; the two services do not import each
other. And no module imports itself back through others.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "booking_api", "shared")
GATEWAY_LAYERS = ("wire", "fanout", "fanin", "session", "process")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imports_of(path: Path, name: str) -> set[str]:
    """Every project module `path` imports, at any depth of the file (TYPE_CHECKING included)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    known = modules()
    return {module for module in found if module in known and module != name}


@cache
def graph() -> dict[str, set[str]]:
    return {name: imports_of(path, name) for name, path in modules().items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "gateway" or len(parts) < 2 or parts[1] not in GATEWAY_LAYERS:
        return None
    return GATEWAY_LAYERS.index(parts[1])


def test_every_gateway_module_lives_in_a_layer() -> None:
    """Besides the package itself and its entry point, each gateway module belongs to a layer."""
    loose = [
        m
        for m in modules()
        if m.startswith("gateway.") and layer(m) is None and m != "gateway.__main__"
    ]
    assert loose == []


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer(m) is not None))
def test_gateway_layers_import_only_downwards(module: str) -> None:
    """A layer imports itself and the layers below it."""
    own = layer(module)
    assert own is not None
    upward = sorted(m for m in graph()[module] if (layer(m) or -1) > own)
    assert upward == [], f"{module} imports from a layer above it"


def test_the_packages_around_the_gateway_keep_their_direction() -> None:
    """shared imports no service; the services do not import each other; backends' shared no toolbox."""
    wrong = []
    for module, imported in graph().items():
        for target in imported:
            top, target_top = module.split(".")[0], target.split(".")[0]
            if top == "shared" and target_top in ("gateway", "booking_api"):
                wrong.append((module, target))
            if {top, target_top} == {"gateway", "booking_api"}:
                wrong.append((module, target))
            in_toolbox = module.startswith("shared.toolbox")
            if not in_toolbox and target.startswith("shared.toolbox"):
                wrong.append((module, target))
    assert wrong == []


def test_no_import_cycles() -> None:
    """No module imports itself back through others."""
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_check_sees_the_imports() -> None:
    """The checker itself reads imports: the connection module imports the frames module."""
    assert "gateway.wire.frames" in graph()["gateway.wire.connection"]
    assert "gateway.wire.connection" in graph()["gateway.process.server"]
