"""The rules docs/architecture.md states about the code as a whole, checked on the source itself.

* The import graph of controller/, worker/ and shared/ has no cycle, counting imports inside
  functions too (a function-level import hides a cycle; it does not remove it). Imports under
  ``if TYPE_CHECKING:`` are not run and are left out. ``worker`` never imports ``controller``.
* A set of event types, stop reasons, worker actions, run states or attempt states is declared
  only in ``shared/``; everywhere else it is imported from there.
* Every ``file:function`` docs/architecture.md names exists.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.events import EventType, StopReason, WorkerAction
from shared.states import AttemptState, RunState

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "worker", "shared")
DOC = REPO / "docs" / "architecture.md"


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that runs, wherever it is (module level, functions, classes, try blocks)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {_known(n) for n in names} - {""}
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    out = set()
    for alias in node.names:
        full = f"{base}.{alias.name}"
        out.add(full if full in MODULES else _known(base))
    return out - {""}


def _known(name: str) -> str:
    """``name`` or its nearest enclosing module of ours; "" for anything else (stdlib, torch ...)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return ""


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _targets(module, path, node)
        graph[module] = edges - {module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_function_level_imports() -> None:
    graph = import_graph()
    # worker.cli imports worker.train inside main() only: the graph must still hold that edge.
    assert "worker.train" in graph["worker.cli"]
    assert "controller.scheduler.slurm" in graph["controller.scheduler.registry"]


def test_the_import_graph_has_no_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_worker_and_shared_never_import_the_controller() -> None:
    for module, edges in import_graph().items():
        if module.startswith(("worker", "shared")):
            bad = sorted(e for e in edges if e.startswith("controller"))
            assert not bad, f"{module} imports {bad}"
        if module.startswith("shared"):
            bad = sorted(e for e in edges if e.startswith("worker"))
            assert not bad, f"{module} imports {bad}"


# ------------------------------------------------------------------ contract sets
CONTRACT_ENUMS = {
    "EventType": EventType,
    "StopReason": StopReason,
    "WorkerAction": WorkerAction,
    "RunState": RunState,
    "AttemptState": AttemptState,
}


def _member_of(node: ast.expr) -> str | None:
    """The contract enum an element belongs to: ``RunState.QUEUED`` or the string ``"queued"``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        enum = CONTRACT_ENUMS.get(node.value.id)
        if enum is not None and node.attr in enum.__members__:
            return node.value.id
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        for name, enum in CONTRACT_ENUMS.items():
            if node.value in {m.value for m in enum}:
                return name
    return None


def contract_sets(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Literal collections (set, tuple, list, ``Literal[...]``) of 2+ members of one contract enum."""
    for node in ast.walk(tree):
        elements: list[ast.expr] = []
        if isinstance(node, ast.Set | ast.Tuple | ast.List):
            elements = list(node.elts)
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "Literal"
        ):
            inner = node.slice
            elements = list(inner.elts) if isinstance(inner, ast.Tuple) else [inner]
        if len(elements) < 2:
            continue
        kinds = {_member_of(e) for e in elements}
        if len(kinds) == 1 and None not in kinds:
            yield node.lineno, kinds.pop() or ""


def test_the_contract_scanner_sees_both_spellings() -> None:
    found = list(
        contract_sets(ast.parse('A = ("stopping", "finished")\nB = {RunState.QUEUED, RunState.RUNNING}'))
    )
    assert [kind for _, kind in found] == ["EventType", "RunState"]
    assert not list(contract_sets(ast.parse('C = ("cancel", "resume", "checkpoint", "stop")')))


def test_contract_sets_are_declared_only_in_shared() -> None:
    offenders = []
    for module, path in MODULES.items():
        if module.startswith("shared"):
            continue
        for line, kind in contract_sets(ast.parse(path.read_text())):
            offenders.append(f"{path.relative_to(REPO)}:{line}: a set of {kind} values")
    assert not offenders, "declare these in shared/ and import them:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ the architecture document
REF = re.compile(
    r"`((?:controller|worker|shared|migrations|deploy|bench|tests)/[\w/.-]+\.\w+)(?::([\w.]+))?`"
)


def references() -> list[tuple[str, str | None]]:
    return sorted(set(REF.findall(DOC.read_text())), key=lambda r: (r[0], r[1] or ""))


def _defines(path: Path, dotted: str) -> bool:
    """Whether ``path`` defines ``Name`` or ``Class.method`` (functions, classes, assignments)."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for part in dotted.split("."):
        found = None
        for node in scope:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == part:
                found = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == part for t in targets):
                    found = node
        if found is None:
            return False
        scope = found.body if isinstance(found, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) else []
    return True


def test_the_architecture_document_names_many_places() -> None:
    refs = references()
    assert len(refs) >= 40 and sum(1 for _, name in refs if name) >= 25


@pytest.mark.parametrize(("file", "name"), references(), ids=lambda v: str(v))
def test_every_place_the_architecture_document_names_exists(file: str, name: str | None) -> None:
    path = REPO / file
    assert path.is_file(), f"docs/architecture.md names {file}, which does not exist"
    if name and path.suffix == ".py":
        assert _defines(path, name), f"docs/architecture.md names {file}:{name}, which is not defined there"
