"""The package's import graph: no module imports itself back through others (a loop hides in
a function-level import too), and the CTranslate2 reader does not import its writer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nmt_cli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the nmt_cli modules it imports anywhere in its body (functions included)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` imports the submodule, not a name of the
                # package's own (parent packages, run first, are not counted for any import)
                named = [f"{node.module}.{alias.name}" for alias in node.names]
                submodules = [name for name in named if name in modules]
                own_names = len(submodules) < len(named)
                targets = [*submodules, *([node.module] if own_names else [])]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_loop(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a path of modules, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (loop := visit(target, [*path, target])):
                return loop
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (loop := visit(name, [name])):
            return loop
    return None


def test_the_import_graph_has_no_loop() -> None:
    graph = import_graph()
    assert len(graph) > 40  # every module was read
    assert find_loop(graph) is None, " -> ".join(find_loop(graph) or [])


def test_a_loop_is_found() -> None:
    assert find_loop({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_loop({"a": {"b"}, "b": set()}) is None


def test_the_ctranslate2_reader_does_not_import_its_writer() -> None:
    graph = import_graph()
    assert "nmt_cli.inference.export" not in graph["nmt_cli.inference.ctranslate2"]
    assert "nmt_cli.inference.ct2_format" in graph["nmt_cli.inference.ctranslate2"]
    assert "nmt_cli.inference.ct2_format" in graph["nmt_cli.inference.export"]
