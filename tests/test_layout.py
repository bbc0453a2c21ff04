"""The shape of the house: no import circles in src/, src/ never imports a script, modules of a readable
size, and scripts whose main() is a table of contents."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("train", "evaluate", "inference", "analyze_failures", "plot_metrics")
MAX_MODULE_LINES = 400
MAX_MAIN_LINES = 60


def src_imports() -> dict[str, set[str]]:
    """Every src/ module and the src/ modules it imports (at the top or inside functions)."""
    graph = {}
    for path in sorted((ROOT / "src").glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"src.{a.name}" for a in node.names] if node.module == "src" else [node.module]
                imported.update(names)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        graph[f"src.{path.stem}"] = imported
    return graph


def test_src_has_no_import_circle_and_never_imports_a_script():
    graph = src_imports()
    for module, imported in graph.items():
        assert not imported & set(SCRIPTS) and not any(i.startswith("tools") for i in imported), module
    done, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import circle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for imported in graph[module] & graph.keys():
            visit(imported)
        path.pop()
        done.add(module)

    for module in graph:
        visit(module)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in [
    *ROOT.glob("*.py"), *(ROOT / "src").glob("*.py"), *(ROOT / "tools").glob("*.py")]))
def test_modules_stay_readable(path):
    lines = len((ROOT / path).read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines; split it along its jobs"


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_scripts_main_fits_a_screen(script):
    tree = ast.parse((ROOT / f"{script}.py").read_text())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    assert main.end_lineno - main.lineno + 1 <= MAX_MAIN_LINES
