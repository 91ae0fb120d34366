"""The layers hold: the engine and the auth core do no IO, and src/ has no import circle.

- Importing any module under ``authproxy.engine`` or ``authproxy.auth`` loads neither asyncio nor socket
  (checked in a fresh interpreter, by ``sys.modules``: an indirect import counts too).
- The module-level imports of ``src/authproxy`` form no cycle. Imports under ``if TYPE_CHECKING:`` are left
  out: they never run, and they are how a module names a type of a layer above it without depending on it at
  run time. Imports inside functions are left out too (they run late, on use, and cannot deadlock a load).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import authproxy

SRC = Path(authproxy.__file__).parent
PURE_PACKAGES = ("engine", "auth")
IO_MODULES = ("asyncio", "socket")


def _modules(package: str) -> list[str]:
    return sorted(
        "authproxy." + ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for path in (SRC / package).rglob("*.py")
    )


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_sans_io_packages_load_no_io_module(package: str) -> None:
    modules = _modules(package)
    assert len(modules) > 3
    script = (
        "import importlib, json, sys\n"
        f"result = {{}}\n"
        f"for name in {modules!r}:\n"
        "    before = set(sys.modules)\n"
        "    importlib.import_module(name)\n"
        f"    result[name] = [m for m in {IO_MODULES!r} if m in sys.modules]\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC.parent)})
    loaded = {name: io for name, io in json.loads(out.stdout).items() if io}
    assert loaded == {}, f"these modules load IO modules: {loaded}"


def test_the_http_proxy_command_loads_neither_the_client_nor_sip() -> None:
    """`authproxy serve` runs in the CLI's process: the HTTP client (and through it urllib and http.client) and
    the SIP package load only for `diagnose` and `sip serve`. Together 2.7 MB of the idle proxy's resident set,
    which the bench holds to 30 MiB."""
    script = ("import sys, authproxy.cli\n"
              "print(sorted(m for m in sys.modules if m.startswith(('authproxy.client', 'authproxy.sip', "
              "'urllib.request', 'http.client'))))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC.parent)})
    assert out.stdout.strip() == "[]"


def module_imports(path: Path, name: str) -> set[str]:
    """The authproxy modules ``path`` imports at module level, outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                test = node.test
                if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    visit(node.orelse)
                    continue
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                    visit(block)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names if alias.name.startswith("authproxy"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                if module.startswith("authproxy"):
                    # "from authproxy.engine import forward" imports the submodule authproxy.engine.forward.
                    for alias in node.names:
                        candidate = f"{module}.{alias.name}"
                        found.add(candidate if _exists(candidate) else module)

    visit(tree.body)
    return found


def _exists(module: str) -> bool:
    parts = module.split(".")[1:]
    return (SRC.joinpath(*parts).with_suffix(".py")).exists() or (SRC.joinpath(*parts) / "__init__.py").exists()


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.rglob("*.py"):
        name = "authproxy." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        name = name.removesuffix(".__init__")
        graph[name] = module_imports(path, name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_src_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "authproxy.engine.connection" in graph["authproxy.proxy.connection"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_type_checking_imports_are_left_out(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nfrom authproxy.auth import errors\n"
                      "if TYPE_CHECKING:\n    from authproxy.proxy.server import ProxyServer\n")
    assert module_imports(module, "authproxy.m") == {"authproxy.auth.errors"}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("authproxy.engine", ("authproxy.proxy", "authproxy.client", "authproxy.config", "authproxy.users")),
    ("authproxy.auth", ("authproxy.engine", "authproxy.proxy", "authproxy.client", "authproxy.config",
                        "authproxy.users", "authproxy.state")),
])
def test_lower_layers_import_nothing_above_them(package: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    wrong = {name: sorted(i for i in imports if i.startswith(forbidden))
             for name, imports in graph.items() if name.startswith(package)}
    assert {name: found for name, found in wrong.items() if found} == {}
