"""Who may import whom (../shared/ARCHITECTURE.md, docs/interfaces.md), checked on the source:
the packages' allowed imports, the device libraries' single importers, no project import made
inside a function, and no import cycle among a package's modules.

The last two are reusable checkers taking a package name (``imports_inside_functions``,
``import_cycles``) so each package's test names its own list."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level modules it must not import
FORBIDDEN = {
    "firmware_protocols": {
        "cardsvc",
        "kiosk",
        "server",
        "onecard",
        "flask",
        "sqlalchemy",
        "smartcard",
    },
    "cardsvc": {"server", "kiosk", "firmware_protocols", "onecard", "flask", "sqlalchemy"},
    "kiosk": {"server", "onecard", "flask", "sqlalchemy", "smartcard"},
    "server": {"kiosk", "onecard", "firmware_protocols", "smartcard", "serial"},
}
# Of our own packages, the server may use only these pure modules of cardsvc.
SERVER_MAY_USE_FROM_CARDSVC = {
    "cardsvc.verify",
    "cardsvc.signin",
    "cardsvc.requestsig",
    "cardsvc.errors",
    "cardsvc.ca",
    "cardsvc.profile",
    "cardsvc.tlv",
}
# Modules allowed to touch a device library directly.
ONLY_IMPORTER = {
    "smartcard": {"cardsvc/pcsc.py"},
    "serial": {"kiosk/board/serial_link.py"},
    "pymodbus": {"kiosk/board/serial_link.py"},
}


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a import b` may import the module a.b: name each imported thing in full.
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


# The project's own top-level packages: importing one of them inside a function is refused.
PROJECT = frozenset({"cardsvc", "firmware_protocols", "kiosk", "onecard", "server", "tests"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported_modules(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool
) -> list[str]:
    """The modules an import statement names, relative imports resolved against ``module``.
    ``from a import b`` names both ``a`` and ``a.b`` (b may be a module or a name in a)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        keep = len(base) - node.level + (1 if is_package else 0)
        prefix = ".".join(base[:keep])
        source = f"{prefix}.{node.module}" if node.module else prefix
    else:
        source = node.module or ""
    return [source, *(f"{source}.{alias.name}" for alias in node.names)]


def _walk_with_scope(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement and whether it sits inside a function (or lambda)."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            inside = in_function or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            )
            visit(child, inside)

    visit(tree, False)
    return found


def imports_inside_functions(package: str) -> list[str]:
    """``path:line imports name`` for each project module imported inside a function of
    ``package`` (house rule: imports run at module level, so a cycle cannot hide)."""
    bad = []
    for path in sources(package):
        module = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node, in_function in _walk_with_scope(tree):
            if not in_function:
                continue
            names = _imported_modules(node, module, path.name == "__init__.py")
            if any(name.split(".")[0] in PROJECT for name in names):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {names[0]}")
    return bad


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (anywhere in the file, ``if
    TYPE_CHECKING`` included: a cycle that only type hints close is still a cycle).

    An edge goes to the module named, not to its parent packages: a package's ``__init__``
    that re-exports its submodules, which import each other by full name, is not a cycle."""
    paths = {module_name(path): path for path in sources(package)}
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        for node, _ in _walk_with_scope(tree):
            source, *named = _imported_modules(node, module, path.name == "__init__.py")
            if isinstance(node, ast.Import):
                named.insert(0, source)
            else:  # `from x import y`: the module x.y if there is one, else x itself
                named = [name if name in paths else source for name in named]
            targets.update(name for name in named if name in paths and name != module)
        graph[module] = targets
    return graph


def import_cycles(package: str) -> list[list[str]]:
    """The import cycles among ``package``'s modules: each strongly connected component of
    more than one module, sorted (Tarjan's algorithm)."""
    graph = import_graph(package)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources(package)
        for name in imports_of(path)
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert bad == []


def test_server_uses_only_pure_cardsvc_modules() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("server")
        for name in imports_of(path)
        if name.split(".")[0] == "cardsvc"
        and not any(name == ok or name.startswith(ok + ".") for ok in SERVER_MAY_USE_FROM_CARDSVC)
    ]
    assert bad == []


@pytest.mark.parametrize("library", sorted(ONLY_IMPORTER))
def test_device_library_is_imported_in_one_module(library: str) -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("cardsvc", "kiosk", "server", "onecard")
        for path in sources(package)
        if any(name.split(".")[0] == library for name in imports_of(path))
    }
    assert importers == ONLY_IMPORTER[library]


@pytest.mark.parametrize("package", ["kiosk", "cardsvc", "firmware_protocols", "server"])
def test_no_project_import_inside_a_function(package: str) -> None:
    assert imports_inside_functions(package) == []


@pytest.mark.parametrize("package", ["kiosk", "cardsvc", "firmware_protocols", "server"])
def test_no_import_cycle(package: str) -> None:
    assert import_cycles(package) == []


def test_the_checkers_see_what_they_look_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkers themselves, on a made-up package: a cycle through a relative import and a
    project import made inside a method are both found; a re-exporting __init__ is no cycle."""
    pkg = tmp_path / "kiosk_sample"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from kiosk_sample.a import A\n")
    (pkg / "a.py").write_text("from kiosk_sample import b\nA = 1\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "sub" / "__init__.py").write_text("from kiosk_sample.sub.c import C\n")
    (pkg / "sub" / "c.py").write_text(
        "import json\nclass C:\n    def m(self):\n        import json\n"
        "        from kiosk import tap\n"
    )
    monkeypatch.setattr(__name__ + ".ROOT", tmp_path)
    assert import_cycles("kiosk_sample") == [["kiosk_sample.a", "kiosk_sample.b"]]
    assert imports_inside_functions("kiosk_sample") == ["kiosk_sample/sub/c.py:5 imports kiosk"]


# The server's layers (../shared/ARCHITECTURE.md, "The server's layout"): each may import itself
# and the layers listed, never one above it. server.errors and server.config are leaves anyone
# may use; server.app, .cli, .wsgi, .demo and .synthetic are the wiring on top.
SERVER_LEAVES = {"server.errors", "server.config"}
SERVER_LAYERS = {
    "server.domain": set(),
    "server.store": {"server.domain"},
    "server.services": {"server.store", "server.domain"},
    "server.http": {"server.services", "server.store", "server.domain"},
    "server.api": {"server.http", "server.services", "server.store", "server.domain"},
    "server.web": {"server.http", "server.services", "server.store", "server.domain"},
}
# The pure domain uses no database, web framework or clock of its own.
DOMAIN_FORBIDDEN = {"sqlalchemy", "flask", "alembic", "psycopg", "requests", "time"}


def _server_layer(name: str) -> str | None:
    return next((layer for layer in SERVER_LAYERS if name == layer or name.startswith(layer + ".")), None)


@pytest.mark.parametrize("layer", sorted(SERVER_LAYERS))
def test_server_layers_import_only_downward(layer: str) -> None:
    allowed = SERVER_LAYERS[layer] | {layer}
    bad = []
    for path in sources(layer.replace(".", "/")):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] != "server" or len(parts) < 2 or ".".join(parts[:2]) in SERVER_LEAVES:
                continue  # not ours, or a leaf (`from server.errors import X` names server.errors.X)
            target = _server_layer(name)
            if target not in allowed:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_the_domain_is_pure() -> None:
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sources("server/domain")
        for name in imports_of(path)
        if name.split(".")[0] in DOMAIN_FORBIDDEN
    ]
    assert bad == []
