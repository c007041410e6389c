"""The code's shape: short functions, modules of one size a reader can hold, a thin common.smk.

These fail on the shapes that were removed (a 169-line train(), an 823-line masks.py, a
312-line common.smk of argument builders), not on style.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "strdiffusion"
MODULES = sorted(PACKAGE.rglob("*.py"))

MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500
# a longer module must say in its docstring why it is one thing
COHESIVE_MARKER = "one cohesive thing"


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_over_100_lines(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines, line {f.lineno})" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_long_modules_say_why_they_are_one_thing(path):
    text = path.read_text()
    n = len(text.splitlines())
    if n <= MAX_MODULE_LINES:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert COHESIVE_MARKER in doc, (
        f"{path.relative_to(ROOT)} has {n} lines (> {MAX_MODULE_LINES}): split it, or say in its docstring why it "
        f"is {COHESIVE_MARKER}")


def test_function_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    (f,) = list(_functions(tree))
    assert f.end_lineno - f.lineno + 1 == MAX_FUNCTION_LINES + 1


def test_common_smk_is_input_functions_only():
    lines = (ROOT / "workflow" / "rules" / "common.smk").read_text().splitlines()
    assert len(lines) < 150, f"workflow/rules/common.smk has {len(lines)} lines; option rendering belongs to the settings"
