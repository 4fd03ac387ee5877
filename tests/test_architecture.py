"""The package's shape, checked so that it stays what docs/architecture.md draws: few loose modules, no module or
function that grew too long, no import cycle (function-level imports count), no private name used outside its
module, one version string, and no subpackage that shadows a public ``rlprune.<name>``."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import rlprune

PACKAGE = Path(rlprune.__file__).parent
ROOT = PACKAGE.parent
MAX_LOOSE_MODULES = 8
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100
MAX_LONG_FUNCTIONS = 2


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(f): (f, ast.parse(f.read_text())) for f in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` in module ``name`` reads from."""
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere (inside functions and ``TYPE_CHECKING`` blocks too)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, tree) in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = imported(name, node, path.name == "__init__.py")
                for alias in node.names:
                    target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in mods else source
                    if target in mods and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name for a in node.names if a.name in mods and a.name != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_few_loose_modules_and_none_too_long():
    loose = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(loose) <= MAX_LOOSE_MODULES, f"loose modules under rlprune/: {sorted(loose)}"
    long = {m: n for m, (p, _) in modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_at_most_two_long_functions():
    long = [
        f"{m}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for m, (_, tree) in modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert len(long) <= MAX_LONG_FUNCTIONS, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_crosses_modules():
    crossing = []
    for name, (path, tree) in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and imported(name, node, path.name == "__init__.py").startswith(
                "rlprune"
            ):
                crossing += [f"{name}: {a.name}" for a in node.names if re.match(r"_[^_]", a.name)]
    assert not crossing, f"private names imported from another module: {crossing}"


def test_one_version_string():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rlprune.version.__version__"}
    written = [m for m, (p, _) in modules().items() if re.search(r"^__version__\s*=", p.read_text(), re.M)]
    assert written == ["rlprune.version"]
    assert rlprune.__version__ == __import__("rlprune.version").version.__version__


def test_no_module_shadows_a_name_of_its_package():
    """``import rlprune.x.y`` sets ``rlprune.x`` to the subpackage, and a package that binds a name of one of its own
    modules (``from .analysis import analysis``) hides the module: one of the two would vanish."""
    top = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} | {p.stem for p in PACKAGE.glob("*.py")}
    assert not top & set(rlprune.__all__)
    for init in PACKAGE.glob("*/__init__.py"):
        children = {p.stem for p in init.parent.glob("*.py")} | {
            p.parent.name for p in init.parent.glob("*/__init__.py")
        }
        bound = {
            alias.asname or alias.name
            for node in ast.parse(init.read_text()).body
            if isinstance(node, ast.ImportFrom | ast.Import)
            for alias in node.names
        } | {n.name for n in ast.parse(init.read_text()).body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
        assert not bound & children, f"{init.parent.name}: binds {sorted(bound & children)}, also module names"


def test_plan_and_its_schema_hold_the_same_fields_and_defaults():
    """``Plan`` (what code handles) and ``PlanSchema`` (what a file may hold) describe one thing: a field or default
    added to one and not the other would be dropped or invented on a round trip."""
    import dataclasses

    from rlprune.io.schemas import PlanSchema
    from rlprune.pruning.options import PruneOptions
    from rlprune.pruning.plan import Plan

    plan_fields = {f.name: f for f in dataclasses.fields(Plan) if f.name != "options"}
    option_fields = {f.name for f in dataclasses.fields(PruneOptions)}
    schema = {k: v for k, v in PlanSchema.model_fields.items() if k != "format"}
    assert set(schema) == set(plan_fields) | option_fields
    for name, f in plan_fields.items():
        if f.default is not dataclasses.MISSING:
            assert schema[name].default == f.default, name
        elif f.default_factory is not dataclasses.MISSING:
            assert schema[name].default_factory() == f.default_factory(), name
        else:
            assert schema[name].is_required(), name
