"""The package's layering, read from the source with ``ast`` (nothing is imported to check it).

* no import cycles among fedhar's modules (and the app packages ``clients``/``server``), counting module-level
  imports and those inside functions alike: a lazy import still closes a cycle;
* nothing outside ``fedhar/cli`` imports ``fedhar.cli`` (the CLI sits on top, nothing points back up to it);
* nothing in ``fedhar/`` imports the top-level ``clients`` or ``server`` packages (Flower's app entry points
  are thin wrappers over fedhar, not a layer fedhar depends on);
* Flower beyond its public API is imported only through ``fedhar.deploy.flower_internals`` (which checks the
  Flower version it was written against).

And the tests mirror the package: ``tests/<layer>/`` for each ``fedhar/<layer>/``.

Imports under ``if TYPE_CHECKING:`` are left out: they never run. And importing the federated package changes
no environment variable (``fedhar.environment`` sets them where a process starts).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fedhar", "clients", "server")  # the top-level packages of this repository (pyproject.toml)

#: (importing module, imported module) → why that import is still allowed. Each one is left out of the cycle
#: check and allowed by the back-arrow check; any other cycle or back-arrow fails, and so does an entry whose
#: import no longer happens (remove it then).
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a module of this repository)
    line: int
    lazy: bool  # inside a function or method


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def repo_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


MODULES = repo_modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, lazy: bool = False):
    """(import node, inside a function?) for every import that can run, in source order."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _walk(other, lazy)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, lazy
        yield from _walk(child, lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))


def _resolve(name: str) -> str | None:
    """The repository module that ``import name`` runs last (a name inside a module: that module)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> list[Import]:
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, lazy in _walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]  # `from a import b`: module a.b, or a name in a
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                found.append(Import(module, target, node.lineno, lazy))
    return found


def import_graph() -> dict[str, list[Import]]:
    return {module: imports_of(module) for module in MODULES}


def without_exceptions(graph: dict[str, list[Import]]) -> dict[str, list[Import]]:
    return {m: [e for e in edges if (e.source, e.target) not in KNOWN_EXCEPTIONS] for m, edges in graph.items()}


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One cycle (as its import statements) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for edge in graph[v]:
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for group in groups:
        members, start = set(group), min(group)
        # a shortest path from start back to start inside the group (breadth first)
        paths: dict[str, list[Import]] = {start: []}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for edge in graph[v]:
                if edge.target == start:
                    found.append(paths[v] + [edge])
                    queue = []
                    break
                if edge.target in members and edge.target not in paths:
                    paths[edge.target] = paths[v] + [edge]
                    queue.append(edge.target)
    return found


def describe(cycle: list[Import]) -> str:
    steps = [f"{e.source} --({'in a function, ' if e.lazy else ''}line {e.line})--> {e.target}" for e in cycle]
    return "\n    ".join(steps)


def back_arrows(graph: dict[str, list[Import]]) -> dict[tuple[str, str], Import]:
    """Imports pointing up: into fedhar.cli from outside it, or from fedhar into the app packages."""
    found = {}
    for module, edges in graph.items():
        if not module.startswith("fedhar"):
            continue
        for e in edges:
            into_cli = e.target.split(".")[:2] == ["fedhar", "cli"] and module.split(".")[:2] != ["fedhar", "cli"]
            into_apps = e.target.split(".")[0] in ("clients", "server")
            if into_cli or into_apps:
                found.setdefault((module, e.target), e)
    return found


# ---- the checks themselves ----------------------------------------------------------------------------


def test_the_walk_sees_the_package():
    assert {"fedhar.cli.main", "fedhar.federated.server", "fedhar.model.har_model", "clients.app"} <= set(MODULES)
    lines = {(e.target, e.lazy) for e in imports_of("fedhar.model.har_model")}
    assert ("fedhar.model.baselines", True) in lines  # build_model's lazy import counts
    assert ("fedhar.model.base", False) in lines


def test_known_exceptions_still_happen():
    edges = {(e.source, e.target) for edges in import_graph().values() for e in edges}
    stale = [key for key in KNOWN_EXCEPTIONS if key not in edges]
    assert not stale, f"KNOWN_EXCEPTIONS lists {stale}, which no longer happen: remove them from this file"


def test_no_import_cycles():
    found = cycles(without_exceptions(import_graph()))
    assert not found, "import cycles in the package:\n  " + "\n  ".join(describe(c) for c in found)


def test_nothing_below_the_cli_imports_it_and_fedhar_does_not_import_the_app_packages():
    found = back_arrows(without_exceptions(import_graph()))
    listed = "\n  ".join(f"{e.source} line {e.line} imports {e.target}" for e in found.values())
    assert not found, f"imports pointing back up (into fedhar.cli, or from fedhar into clients/server):\n  {listed}"


# ---- the checker finds what it should ------------------------------------------------------------------


def test_the_cycle_finder_names_a_cycle_through_a_lazy_import():
    graph = {
        "a": [Import("a", "b", 3, False)],
        "b": [Import("b", "c", 5, False)],
        "c": [Import("c", "a", 9, True)],
        "d": [Import("d", "a", 1, False)],
    }
    (cycle,) = cycles(graph)
    assert [(e.source, e.target) for e in cycle] == [("a", "b"), ("b", "c"), ("c", "a")]
    assert "c --(in a function, line 9)--> a" in describe(cycle)
    assert cycles({"a": [Import("a", "b", 1, False)], "b": []}) == []


@pytest.mark.parametrize(
    ("module", "target", "arrow"),
    [
        ("fedhar.deploy.runtime", "fedhar.cli.common", True),
        ("fedhar.federated.simulate", "clients.app", True),
        ("fedhar.federated.simulate", "server", True),
        ("fedhar.cli.server", "fedhar.cli.common", False),  # inside the CLI
        ("fedhar.cli.server", "fedhar.deploy.server", False),  # downwards
        ("clients.app", "fedhar.federated.client_app", False),  # the app packages may use fedhar
    ],
)
def test_back_arrows_are_recognised(module, target, arrow):
    assert bool(back_arrows({module: [Import(module, target, 1, False)]})) is arrow


def test_dotted_names_resolve_to_repository_modules():
    assert _resolve("fedhar.federated.client.NODE_THREADS") == "fedhar.federated.client"
    assert _resolve("fedhar.deploy.server") == "fedhar.deploy.server"  # not the top-level `server` package
    assert _resolve("server.app") == "server.app"
    assert _resolve("torch.nn") is None


# ---- no import side effects ------------------------------------------------------------------------------

FEDHAR_VARIABLES = ("FLWR_TELEMETRY_ENABLED", "OMP_WAIT_POLICY")  # what fedhar.environment sets


def _environment_after(imports: list[str]) -> dict:
    """The variables that importing ``imports`` changes (name → [before, after]), in a fresh process whose
    environment lacks fedhar's variables."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import importlib, json, os, sys\n"
        "before = dict(os.environ)\n"
        f"for name in {imports!r}: importlib.import_module(name)\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after) "
        "if before.get(k) != after.get(k)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in FEDHAR_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_fedhar_federated_leaves_the_environment_unchanged():
    assert _environment_after(["fedhar.federated"]) == {}


def test_no_federated_module_sets_fedhar_variables_on_import():
    modules = sorted(m for m in MODULES if m.startswith("fedhar.federated."))
    changed = _environment_after(modules)
    assert not {k: v for k, v in changed.items() if k in FEDHAR_VARIABLES}, changed  # (Flower sets GRPC_VERBOSITY)


def test_set_process_environment_sets_defaults_and_keeps_the_users_choice(monkeypatch):
    import os

    from fedhar.environment import set_process_environment

    monkeypatch.delenv("FLWR_TELEMETRY_ENABLED", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_process_environment()
    assert os.environ["FLWR_TELEMETRY_ENABLED"] == "0"
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# ---- Flower internals only through the adapter ------------------------------------------------------------

ADAPTER = "fedhar.deploy.flower_internals"
#: Flower's public API: its app-facing packages (and the names ``flwr.common`` itself exports)
PUBLIC_FLOWER = ("flwr.app", "flwr.clientapp", "flwr.serverapp", "flwr.simulation")
#: (importing module, Flower module) → why it imports a Flower internal without the adapter
FLOWER_INTERNALS_ELSEWHERE: dict[tuple[str, str], str] = {
    ("fedhar.federated.client", "flwr.supercore.differential_privacy"): (
        "KEY_CLIPPING_NORM, the config key Flower's client-side DP strategies send, which flwr.serverapp does "
        "not export; the federated layer importing the deploy adapter would point up a layer"
    ),
    ("fedhar.federated.transport", "flwr.common.constant"): (
        "ErrorCode: the codes of flwr.app.Error replies, which flwr.app does not export; the federated layer "
        "importing the deploy adapter would point up a layer"
    ),
}


def flower_imports(module: str) -> list[tuple[str, int]]:
    """(Flower module, line) of each import of Flower in ``module``."""
    path = MODULES[module]
    found = []
    for node, _lazy in _walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            names = [node.module or ""] if not node.level else []
        found += [(name, node.lineno) for name in names if name == "flwr" or name.startswith("flwr.")]
    return found


def is_public_flower(name: str) -> bool:
    return name == "flwr.common" or any(name == p or name.startswith(p + ".") for p in PUBLIC_FLOWER)


def test_flower_internals_are_imported_only_through_the_adapter():
    internal = {(m, name): line for m in MODULES if m != ADAPTER for name, line in flower_imports(m)
                if not is_public_flower(name)}  # fmt: skip
    new = [f"{m} line {line} imports {name}" for (m, name), line in internal.items()
           if (m, name) not in FLOWER_INTERNALS_ELSEWHERE]  # fmt: skip
    assert not new, f"Flower internals imported outside {ADAPTER} (import them from there):\n  " + "\n  ".join(new)
    stale = [key for key in FLOWER_INTERNALS_ELSEWHERE if key not in internal]
    assert not stale, f"FLOWER_INTERNALS_ELSEWHERE lists {stale}, which no longer happen: remove them"
    assert any(not is_public_flower(name) for name, _ in flower_imports(ADAPTER))


def test_public_and_internal_flower_are_told_apart():
    assert is_public_flower("flwr.serverapp.strategy") and is_public_flower("flwr.app")
    assert not is_public_flower("flwr.supercore.control") and not is_public_flower("flwr.common.serde")
    assert not is_public_flower("flwr.proto.control_pb2") and not is_public_flower("flwr.supernode")


#: test folders that are not a fedhar package: threat scenarios across layers, and the layouts' fixture writers
CROSS_CUTTING_TEST_FOLDERS = {"security": "hostile inputs across layers", "fixtures": "fixture files in official layouts"}


def test_the_tests_mirror_the_package():
    """tests/<layer>/ for each fedhar/<layer>/, top-level test files for fedhar's top-level modules."""
    tests = REPO / "tests"
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"}
    packages = {p.name for p in (REPO / "fedhar").iterdir() if (p / "__init__.py").is_file()}
    assert folders - set(CROSS_CUTTING_TEST_FOLDERS) <= packages, "a test folder that names no fedhar package"
    modules = {p.stem for p in (REPO / "fedhar").glob("*.py")}
    loose = {p.stem.removeprefix("test_") for p in tests.glob("test_*.py")} - {"structure"}
    assert loose <= modules, f"top-level tests of no top-level fedhar module: {loose - modules} (move them)"
