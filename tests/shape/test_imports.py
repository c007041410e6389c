"""The package's import graph: no circles, a model core (strdiffusion/core/) that imports only torch, numpy,
the standard library and itself, a sampler free of file, image and command-line libraries, and argparse only in
the command line (cli.py and the stages of strdiffusion/stages/).

Imports are read from the source with ``ast`` (module-level and function-level ones alike), so the
test needs no import side effects and sees lazy imports too."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "strdiffusion"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, top_level_only: bool = False, root: Path = PACKAGE.parent) -> set[str]:
    """Absolute names of the modules ``path`` imports (``from .x import y`` gives strdiffusion.x and,
    when y is a submodule, strdiffusion.x.y)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


# Known circles, closed by a function-level import, to be removed by the owner of the module.
# Each entry is checked to still exist, so a fixed circle must also be taken off this list.
KNOWN_LAZY_EDGES = set()


def package_graph(top_level_only: bool = False, ignore=frozenset()) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = {d for d in imports_of(path, top_level_only) if d in modules and d != name}
        # importing a submodule runs its package's __init__ first, but that is not a dependency on the package
        graph[name] = {d for d in deps if not name.startswith(d + ".") and (name, d) not in ignore}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_planted_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_graph_sees_relative_and_lazy_imports():
    graph = package_graph()
    assert "strdiffusion.core.sampling" in graph["strdiffusion.inpainting.diffusion"]
    assert "strdiffusion.models.checkpoints" in graph["strdiffusion.inpainting.diffusion"]  # imported inside a function
    assert "strdiffusion.core.nets.spade" in graph["strdiffusion.inpainting.diffusion"]


def test_no_import_circle_in_the_package():
    assert find_cycle(package_graph(ignore=KNOWN_LAZY_EDGES)) is None
    graph = package_graph()
    for a, b in sorted(KNOWN_LAZY_EDGES):
        assert b in graph.get(a, set()), f"{a} no longer imports {b}: take it off KNOWN_LAZY_EDGES"


def test_sampler_imports_no_file_image_or_command_line_library():
    banned = {"argparse", "PIL", "cv2", "pandas"}
    own = {name.split(".")[0] for name in imports_of(PACKAGE / "core" / "sampling.py")}
    assert not own & banned, own & banned
    # nor through the package modules it loads at import time
    graph = package_graph(top_level_only=True)
    seen, todo = set(), ["strdiffusion.core.sampling"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph[name])
    for name in seen:
        path = PACKAGE.parent / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = PACKAGE.parent / name.replace(".", "/") / "__init__.py"
        top = {d.split(".")[0] for d in imports_of(path, top_level_only=True)}
        assert not top & banned, (name, top & banned)


# what the model core may import besides itself
CORE_ALLOWED = {"torch", "numpy"} | set(sys.stdlib_module_names)


def core_violations(core: Path, root: Path) -> list[tuple[str, str]]:
    """(module, import) for every import of a module under ``core`` (the folder of package ``<pkg>.core``,
    ``root`` the folder above the package) that is neither in :data:`CORE_ALLOWED` nor the core itself;
    lazy imports count."""
    own = module_name(core / "__init__.py", root)
    bad = []
    for path in sorted(core.rglob("*.py")):
        for dep in sorted(imports_of(path, root=root)):
            top = dep.split(".")[0]
            inside = dep == own or dep.startswith(own + ".")
            if not inside and (top == own.split(".")[0] or top not in CORE_ALLOWED):
                bad.append((module_name(path, root), dep))
    return bad


def test_core_imports_only_torch_numpy_the_standard_library_and_itself():
    assert (PACKAGE / "core" / "sde.py").exists() and (PACKAGE / "core" / "nets" / "unet.py").exists()
    assert core_violations(PACKAGE / "core", PACKAGE.parent) == []


def test_core_check_catches_a_pipeline_import(tmp_path):
    core = tmp_path / "pkg" / "core"
    (core / "nets").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "nets" / "__init__.py").write_text("from ..sde import IRSDE\nimport torch.nn as nn\n")
    (core / "sde.py").write_text("import math\nimport numpy as np\nfrom . import nets\n")
    assert core_violations(core, tmp_path) == []
    (core / "sde.py").write_text("from ..settings import SDESettings\n")
    (core / "sampling.py").write_text("def f():\n    from tqdm import tqdm\n    from pkg import utils\n")
    assert core_violations(core, tmp_path) == [("pkg.core.sampling", "pkg"), ("pkg.core.sampling", "pkg.utils"),
                                              ("pkg.core.sampling", "tqdm"), ("pkg.core.sampling", "tqdm.tqdm"),
                                              ("pkg.core.sde", "pkg.settings"), ("pkg.core.sde", "pkg.settings.SDESettings")]


# where argparse may be imported: the command line and its stages; the library takes plain values
COMMAND_LINE = {"strdiffusion.cli", "strdiffusion.stages"}


def argparse_importers(package: Path, root: Path, allowed=frozenset(COMMAND_LINE)) -> list[str]:
    """Modules of ``package`` (``root`` the folder above it) outside ``allowed`` (modules or packages) that
    import argparse, lazily or not."""
    bad = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, root)
        if any(name == a or name.startswith(a + ".") for a in allowed):
            continue
        if any(d.split(".")[0] == "argparse" for d in imports_of(path, root=root)):
            bad.append(name)
    return bad


def test_only_the_command_line_and_its_stages_import_argparse():
    assert (PACKAGE / "stages" / "train.py").exists()
    assert argparse_importers(PACKAGE, PACKAGE.parent) == []


def command_line_shapes(package: Path, root: Path, allowed=frozenset(COMMAND_LINE)) -> list[str]:
    """``module:function`` of each function outside ``allowed`` with a parameter named ``args``, ``argv`` or
    ``namespace`` (the command line's shape), and ``module:sys.argv`` where one reads ``sys.argv``."""
    import ast

    bad = []
    for path in sorted(package.rglob("*.py")):
        name = module_name(path, root)
        if any(name == a or name.startswith(a + ".") for a in allowed):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                params = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if p]
                if {"args", "argv", "namespace"}.intersection(params):
                    bad.append(f"{name}:{getattr(node, 'name', 'lambda')}")
            elif isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                bad.append(f"{name}:sys.argv")
    return bad


def test_the_library_takes_no_command_line_shape():
    assert command_line_shapes(PACKAGE, PACKAGE.parent) == []


def test_command_line_shape_check_catches_a_library_function(tmp_path):
    pkg = tmp_path / "strdiffusion"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "stages" / "run.py").write_text("import sys\ndef main(argv=None):\n    return argv or sys.argv[1:]\n")
    (pkg / "train.py").write_text("def run(job, *, settings):\n    return job\n")
    assert command_line_shapes(pkg, tmp_path) == []
    (pkg / "train.py").write_text("import sys\ndef run(job, args):\n    return sys.argv\nf = lambda *argv: 0\n")
    assert sorted(command_line_shapes(pkg, tmp_path)) == ["strdiffusion.train:lambda", "strdiffusion.train:run",
                                                          "strdiffusion.train:sys.argv"]


def test_argparse_check_catches_a_library_module(tmp_path):
    pkg = tmp_path / "strdiffusion"
    (pkg / "stages").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("import argparse\n")
    (pkg / "stages" / "__init__.py").write_text("")
    (pkg / "stages" / "data.py").write_text("from argparse import ArgumentParser\n")
    (pkg / "data.py").write_text("import numpy\n")
    assert argparse_importers(pkg, tmp_path) == []
    (pkg / "data.py").write_text("def main():\n    import argparse\n")
    (pkg / "stagesish.py").write_text("from argparse import Namespace\n")
    assert argparse_importers(pkg, tmp_path) == ["strdiffusion.data", "strdiffusion.stagesish"]
