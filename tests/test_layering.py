"""The package's import graph: no circles, and layers import only downward.

The graph is read from the source with `ast` (nothing is imported), and it counts every
import: module-level, function-level (lazy) and the lazy re-exports of the packages'
``_EXPORTS`` tables, because a lazy import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "zeroi2v"

# Bottom first. A module may import a lower layer, or its own group; never a higher layer nor
# another group of its own layer (tune and use stay independent). `specs` and `offsets` are
# the config's vocabulary (torch-free facts of the backbones, the head-offset grammar), so
# they sit beside it and import nothing above it.
# The engine's two rooms, MLflow (`tracking`) and scoring (`evaluation`), sit below the loop
# that uses them and know nothing of each other nor of DeepSpeed.
LAYERS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "errors", ("zeroi2v.errors", "zeroi2v.redact", "zeroi2v.files")),
    (0, "logs", ("zeroi2v.logs", "zeroi2v.lazy")),
    (1, "config", ("zeroi2v.config", "zeroi2v.specs", "zeroi2v.offsets")),
    (2, "data", ("zeroi2v.data",)),
    (3, "models", ("zeroi2v.models",)),
    (4, "evaluation", ("zeroi2v.engine.evaluation",)),
    (4, "tracking", ("zeroi2v.engine.tracking",)),
    (5, "engine", ("zeroi2v.engine",)),
    (6, "tune", ("zeroi2v.tune",)),
    (6, "use", ("zeroi2v.use",)),
]


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """``_EXPORTS = {"name": "module", ...}`` of a package `__init__` (its lazy attributes)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def import_graph() -> dict[str, set[str]]:
    """Module → the `zeroi2v` modules it imports (a name from a package resolves to the
    module that defines it when the package re-exports it lazily)."""
    files = module_files()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    exports = {name: _lazy_exports(tree) for name, tree in trees.items()}

    def resolve(package: str, name: str) -> str:
        if f"{package}.{name}" in files:
            return f"{package}.{name}"
        return exports.get(package, {}).get(name, package)

    graph: dict[str, set[str]] = {}
    for module, tree in trees.items():
        targets = set(exports[module].values())
        is_package = files[module].name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = module.split(".")
                    anchor = anchor[: len(anchor) - node.level + is_package]
                    base = ".".join([*anchor, *filter(None, [base])])
                targets.update(resolve(base, alias.name) for alias in node.names)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(module: str) -> tuple[int, str] | None:
    matches = [
        (len(prefix), rank, group)
        for rank, group, prefixes in LAYERS
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1:] if matches else None


def test_the_graph_sees_lazy_and_function_level_imports():
    graph = import_graph()
    assert "zeroi2v.models.video" in graph["zeroi2v"]  # `_EXPORTS` of zeroi2v/__init__.py
    assert "zeroi2v.models.video" in graph["zeroi2v.engine.release"]  # `from zeroi2v import
    assert "zeroi2v.data.pipeline" in graph["zeroi2v.engine.release"]  # build_model` in a def


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles among zeroi2v modules: " + "; ".join(
        " ↔ ".join(c) for c in found
    )


def test_every_module_has_a_layer():
    unplaced = [m for m in module_files() if m != "zeroi2v" and layer(m) is None]
    assert not unplaced, f"add these modules to a layer in tests/test_layering.py: {unplaced}"


def test_layers_import_only_downward():
    upward = []
    for module, targets in import_graph().items():
        if module == "zeroi2v":  # the facade: lazily re-exports build_model / merge
            continue
        rank, group = layer(module)
        for target in targets:
            target_rank, target_group = layer(target) if target != "zeroi2v" else (3, "models")
            if target_rank > rank or (target_rank == rank and target_group != group):
                upward.append(f"{module} ({group}) imports {target} ({target_group})")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_launch_scripts_shadow_no_module_and_edit_no_path():
    """`python launch/x.py` puts launch/ first on sys.path: a script named like a module that
    some library imports (the stdlib `profile`, imported by torch._dynamo) would be imported
    in its place. With no such name, the scripts need no `sys.path` preamble."""
    import importlib.util
    import sys

    scripts = sorted((PACKAGE.parent / "launch").glob("*.py"))
    assert len(scripts) > 5
    for script in scripts:
        name = script.stem
        assert name == "__init__" or (
            name not in sys.stdlib_module_names and importlib.util.find_spec(name) is None
        ), f"launch/{script.name} shadows the module '{name}'; rename the script"
        assert "sys.path" not in script.read_text(), f"launch/{script.name} edits sys.path"


def test_the_library_imports_no_application():
    """`zeroi2v` is what a wheel installs; `data_prep` and `launch` are applications run from a
    checkout, so any import of them from the library fails for a `pip install zeroi2v` user."""
    apps = ("data_prep", "launch")
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [f"{module} imports {n}" for n in names if n.split(".")[0] in apps]
    assert not found, "the library imports an application:\n" + "\n".join(sorted(found))


def _function_level_import_runs(tree: ast.Module) -> list[list[ast.stmt]]:
    """Runs of consecutive import statements inside any function (nested blocks included)."""
    runs: list[list[ast.stmt]] = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for block in ast.walk(func):
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(block, field, None)
                if not isinstance(stmts, list):  # absent, or an expression (a lambda's body)
                    continue
                run: list[ast.stmt] = []
                for stmt in [*stmts, None]:
                    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                        run.append(stmt)
                    elif run:
                        runs.append(run)
                        run = []
    return runs


def test_every_function_level_import_says_why_it_is_lazy():
    """A function-level import hides a dependency from the reader, so it has to buy something:
    an optional extra, a slow library off a fast path (a launch script's --help), torch kept
    out of a torch-free module. A ``# lazy: <why>`` comment on the import (or on the line above
    a run of them) says which; everything else belongs at the top of the module. The library
    and the applications alike."""
    apps = [p for app in ("launch", "data_prep") for p in (PACKAGE.parent / app).glob("*.py")]
    unexplained = []
    for path in [*module_files().values(), *sorted(apps)]:
        lines = path.read_text().splitlines()
        runs = _function_level_import_runs(ast.parse("\n".join(lines), str(path)))
        for run in {r[0].lineno: r for r in runs}.values():  # a nested def is walked twice
            first, last = run[0].lineno, run[-1].end_lineno
            if not any("# lazy:" in line for line in lines[first - 2 : last]):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{first}")
    assert not unexplained, (
        "function-level imports without a `# lazy: <why>` comment (hoist them to the top of "
        "the module, or say why they must wait):\n" + "\n".join(unexplained)
    )
