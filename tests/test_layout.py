"""The package layout keeps its promises: the demo world is one source plug-in, so nothing general imports it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("model", "tasks", "flows", "tokenizer", "data_process", "zero_chatgpt")
DEMO_PLUGIN = {"data_process/demo_corpus.py", "data_process/demo_corpus_text.py"}
# The one door to the demo world: sources.py opens it lazily, for `kind: demo` sources only.
DEMO_DOOR = ("data_process/sources.py", "_demo_module")


def demo_references(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, what, enclosing function) for each import of, or module-path string naming, `demo_corpus*`."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Import):
            found.extend((node.lineno, f"import {a.name}", function) for a in node.names if "demo_corpus" in a.name)
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [alias.name for alias in node.names]
            if any("demo_corpus" in name for name in names):
                found.append((node.lineno, f"from {node.module} import ...", function))
        elif isinstance(node, ast.Constant) and "data_process.demo_corpus" in str(node.value):
            found.append((node.lineno, repr(node.value), function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def package_modules() -> list[Path]:
    return sorted(path for folder in PACKAGE_DIRS for path in (REPO / folder).rglob("*.py"))


def test_nothing_outside_the_demo_plugin_imports_it():
    assert len(package_modules()) > 30  # the walk really sees the package
    offenders, door = [], []
    for path in package_modules():
        relative = path.relative_to(REPO).as_posix()
        if relative in DEMO_PLUGIN:
            continue
        for line, what, function in demo_references(ast.parse(path.read_text(encoding="utf-8"))):
            if (relative, function) == DEMO_DOOR and not what.startswith(("import", "from")):
                door.append(line)
            else:
                offenders.append(f"{relative}:{line}: {what}")
    assert offenders == [], "only the demo plug-in and sources.py's lazy door may name demo_corpus"
    assert len(door) == 1, f"sources.py should open the demo module in one place, found lines {door}"


def test_the_check_catches_a_top_level_import_in_a_stage_task():
    stage = (REPO / "tasks" / "stage.py").read_text(encoding="utf-8")
    tampered = "from zero_chatgpt.data_process.demo_corpus import DEMO_CORPUS_VERSION\n" + stage
    assert demo_references(ast.parse(stage)) == []
    assert [what for _, what, _ in demo_references(ast.parse(tampered))] == [
        "from zero_chatgpt.data_process.demo_corpus import ..."
    ]
    package_import = "from zero_chatgpt.data_process import demo_corpus\n"
    assert len(demo_references(ast.parse(package_import))) == 1
