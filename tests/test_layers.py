"""The layering in DESIGN.md, checked on the source text (``ast``; nothing is imported).

- ``core/`` imports neither ``voxgate.transports`` nor ``voxgate.testing``.
- ``protocols/`` is sans-I/O: no asyncio, aiohttp or aiortc, and nothing from the layers
  that drive it (``transports``, ``core``, ``server``, ``testing``).
- No module under ``core/realtime/`` is longer than 500 lines (STYLE.md, "Layout").
- A server route module is a leaf: it imports no other route module and not the app
  factory; what routes share lives in ``server/*_service.py``, ``services``, ``sessions``.

Every import form counts: ``import x``, ``from x import y``, ``from voxgate import x``,
relative imports, and imports inside functions or ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "voxgate"

CORE_FORBIDDEN = ("voxgate.transports", "voxgate.testing")
PROTOCOLS_FORBIDDEN = (
    "asyncio",
    "aiohttp",
    "aiortc",
    "voxgate.transports",
    "voxgate.core",
    "voxgate.server",
    "voxgate.testing",
)
REALTIME_MAX_LINES = 500


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    statement: str  # the import as written
    targets: tuple[str, ...]  # every absolute name it may load


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool) -> Iterator[Import]:
    """Every import in ``source``, with relative names resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, f"import {alias.name}", (alias.name,))
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__":
                continue
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                base_name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                base_name = node.module or ""
            # ``from voxgate import transports`` loads voxgate.transports: each imported
            # name may be a submodule, so it is a target too
            targets = (base_name, *(f"{base_name}.{a.name}" for a in node.names))
            names = ", ".join(a.name for a in node.names)
            written = "." * node.level + (node.module or "")
            yield Import(module, node.lineno, f"from {written} import {names}", targets)


def is_under(name: str, prefixes: tuple[str, ...]) -> str | None:
    for prefix in prefixes:
        if name == prefix or name.startswith(prefix + "."):
            return prefix
    return None


def sources(layer: str) -> list[Path]:
    found = sorted((PACKAGE / layer).rglob("*.py"))
    assert found, f"no modules under src/voxgate/{layer}: has the layout moved?"
    return found


def violations(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sources(layer):
        module = module_name(path)
        text = path.read_text(encoding="utf-8")
        for imp in imports(text, module, is_package=path.name == "__init__.py"):
            hits = sorted({p for t in imp.targets if (p := is_under(t, forbidden))})
            if hits:
                where = f"{path.relative_to(SRC.parent)}:{imp.line}"
                found.append(f"{where}: {imp.module}: `{imp.statement}` -> {', '.join(hits)}")
    return found


def test_core_imports_neither_transports_nor_testing() -> None:
    bad = violations("core", CORE_FORBIDDEN)
    assert not bad, (
        "core/ must not import transports/ or testing/ (DESIGN.md, Layers; STYLE.md):\n  "
        + "\n  ".join(bad)
    )


def test_protocols_are_sans_io() -> None:
    bad = violations("protocols", PROTOCOLS_FORBIDDEN)
    assert not bad, (
        "protocols/ are sans-I/O translators: no asyncio/aiohttp/aiortc and no import of "
        "transports/, core/, server/ or testing/ (STYLE.md, principle 1):\n  " + "\n  ".join(bad)
    )


def test_realtime_core_modules_stay_small() -> None:
    bad = []
    for path in sources("core/realtime"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > REALTIME_MAX_LINES:
            bad.append(f"{path.relative_to(SRC.parent)}: {module_name(path)}: {lines} lines")
    assert not bad, (
        f"modules under core/realtime/ are kept to {REALTIME_MAX_LINES} lines "
        "(STYLE.md, Layout: past that it is usually two ideas):\n  " + "\n  ".join(bad)
    )


#: The modules under server/ that add routes (``add_routes``); each is a leaf.
def route_modules() -> list[Path]:
    return [p for p in sources("server") if "def add_routes(" in p.read_text(encoding="utf-8")]


def test_route_modules_are_leaves() -> None:
    routes = {module_name(p) for p in route_modules()}
    assert "voxgate.server.relay_routes" in routes, routes  # the finder still finds them
    bad = []
    for path in route_modules():
        module = module_name(path)
        text = path.read_text(encoding="utf-8")
        for imp in imports(text, module, is_package=False):
            hits = {t for t in imp.targets if t in routes | {"voxgate.server.app"}} - {module}
            if hits:
                where = f"{path.relative_to(SRC.parent)}:{imp.line}"
                found = ", ".join(sorted(hits))
                bad.append(f"{where}: {module}: `{imp.statement}` -> {found}")
    assert not bad, (
        "a route module imports no other route module nor the app factory (STYLE.md: a "
        "route module is a leaf; shared code goes to a *_service module):\n  " + "\n  ".join(bad)
    )


# The checker itself: a rule that silently misses an import form would pass forever.
@pytest.mark.parametrize(
    ("source", "module", "is_package", "caught"),
    [
        ("import voxgate.transports.ws", "voxgate.core.relay", False, True),
        ("import voxgate.testing as t", "voxgate.core.relay", False, True),
        ("from voxgate.testing.memory import memory_pair", "voxgate.core.x", False, True),
        ("from voxgate import transports", "voxgate.core.relay", False, True),
        ("from voxgate import audio, testing", "voxgate.core.relay", False, True),
        ("from ..transports import ws", "voxgate.core.relay", False, True),
        ("from ...testing import memory", "voxgate.core.sfu.agent", False, True),
        ("from .. import testing", "voxgate.core.sfu.agent", False, False),  # voxgate.core
        ("from ... import testing", "voxgate.core.sfu.agent", False, True),
        ("from .. import transports", "voxgate.core", True, True),
        ("def f():\n    from voxgate.transports import ws", "voxgate.core.x", False, True),
        ("if TYPE_CHECKING:\n    import voxgate.testing", "voxgate.core.x", False, True),
        ("import voxgate.transportsx", "voxgate.core.x", False, False),
        ("from voxgate import audio", "voxgate.core.relay", False, False),
        ("from . import limits", "voxgate.core.relay", False, False),
        ("from __future__ import annotations", "voxgate.core.relay", False, False),
    ],
)
def test_checker_sees_every_import_form(
    source: str, module: str, is_package: bool, caught: bool
) -> None:
    found = [
        imp
        for imp in imports(source, module, is_package=is_package)
        if any(is_under(t, CORE_FORBIDDEN) for t in imp.targets)
    ]
    assert bool(found) is caught, found


@pytest.mark.parametrize(
    "source",
    ["import asyncio", "from asyncio import Queue", "import aiohttp.web", "from aiortc import x"],
)
def test_checker_sees_io_libraries(source: str) -> None:
    found = [
        imp
        for imp in imports(source, "voxgate.protocols.chat", is_package=False)
        if any(is_under(t, PROTOCOLS_FORBIDDEN) for t in imp.targets)
    ]
    assert found
