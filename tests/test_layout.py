"""The package layout stays true: each stage imports only the stages below it (README, "Where things are")."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "redvtp_eval"

ALLOWED: dict[str, set[str]] = {
    "models": set(),
    "pruners": set(),
    "engine": {"models", "pruners"},
    "harness": {"engine", "models", "pruners"},
    "report": {"harness", "engine", "models", "pruners"},
    "toy": {"report", "harness", "engine", "models", "pruners"},
    "bench": {"harness", "engine", "models", "pruners"},
    "analysis": {"harness", "engine", "models", "pruners"},
}
"""Stage → the other stages it may import (every stage may import itself). Nothing imports toy, bench or analysis."""
ENTRY_POINTS = {"__init__.py", "__main__.py"}
"""The only modules at the top level; ``__main__`` may import any stage."""


def imported_stages(path: Path) -> set[str]:
    """The first component after ``redvtp_eval.`` of every import in the file, function-level ones included."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return {name.split(".")[1] for name in names if name.startswith("redvtp_eval.")}


def test_top_level_holds_only_the_entry_points_and_the_stages():
    modules = {p.name for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert modules == ENTRY_POINTS, f"move {sorted(modules - ENTRY_POINTS)} into a stage folder"
    assert folders == set(ALLOWED), f"a new folder needs a row in ALLOWED: {sorted(folders ^ set(ALLOWED))}"


def test_every_stage_says_what_it_does_and_what_it_may_import():
    for stage in ALLOWED:
        docstring = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text()))
        assert docstring, f"redvtp_eval/{stage}/__init__.py needs a docstring: what the stage does and may import"


def test_imports_go_one_way():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        stage = path.relative_to(PACKAGE).parts[0]
        if stage in ENTRY_POINTS:
            continue
        for imported in imported_stages(path) - ALLOWED[stage] - {stage}:
            wrong.append(f"{path.relative_to(PACKAGE.parent)} imports redvtp_eval.{imported}")
    assert not wrong, "imports against the layout (allowed: tests/test_layout.py ALLOWED):\n" + "\n".join(wrong)
