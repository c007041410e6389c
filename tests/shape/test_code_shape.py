"""The code's shape: short functions, modules of one size a reader can hold, a thin common.smk; in the
package and in the benchmarks.

They fail on what a reader cannot hold (a function of over 100 lines, a module of over 500, a common.smk
that builds arguments instead of naming inputs), not on style.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "strdiffusion"
MODULES = sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])

MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_shape_checks_cover_the_package_and_the_benchmarks():
    names = {str(p.relative_to(ROOT)) for p in MODULES}
    assert {"strdiffusion/core/sde.py", "strdiffusion/settings/jobs.py", "benchmarks/run.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_over_100_lines(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines, line {f.lineno})" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.relative_to(ROOT)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{path.relative_to(ROOT)} has {n} lines (> {MAX_MODULE_LINES}): split it"


def test_function_length_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    (f,) = list(_functions(tree))
    assert f.end_lineno - f.lineno + 1 == MAX_FUNCTION_LINES + 1


def test_common_smk_is_input_functions_only():
    lines = (ROOT / "workflow" / "rules" / "common.smk").read_text().splitlines()
    assert len(lines) < 160, f"workflow/rules/common.smk has {len(lines)} lines; option rendering belongs to the settings"
