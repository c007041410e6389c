"""The package's layers (:data:`strdiffusion.LAYERS`): every import, those inside functions included, goes to
the importing module's own subpackage or to a lower layer; never up, never sideways within a layer."""
import ast
import re
from pathlib import Path

import pytest

import strdiffusion

PACKAGE = Path(strdiffusion.__file__).resolve().parent


def _imported(node, package: str, here: tuple[str, ...]):
    """Absolute dotted names a statement imports (a ``from X import name`` yields ``X.name`` too, since the
    name may be a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = list(here[: len(here) - node.level + 1])
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{a.name}" for a in node.names]


def layer_violations(package_dir: Path, layers) -> list[str]:
    """One line per import of a module of ``package_dir`` that goes up or sideways in ``layers``."""
    package = package_dir.name
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if source == "__init__":
            continue
        here = (package, *rel.parts[:-1])
        if rel.name == "__init__.py":
            here = (*here, "__init__")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported(node, package, here):
                parts = name.split(".")
                if parts[0] != package or len(parts) < 2 or parts[1] == source or parts[1] not in rank:
                    continue
                target = parts[1]
                if source not in rank:
                    found.append(f"{rel}: subpackage '{source}' is missing from the layer table")
                elif rank[target] >= rank[source]:
                    where = "a higher layer" if rank[target] > rank[source] else "its own layer"
                    found.append(f"{rel}:{node.lineno}: {source} imports {package}.{target} ({where})")
    return sorted(set(found))


def test_layer_table_names_every_subpackage_and_module_once():
    names = [n for layer in strdiffusion.LAYERS for n in layer]
    assert len(names) == len(set(names))
    present = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    present |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert present == set(names)


def test_layer_table_holds_for_the_package():
    assert layer_violations(PACKAGE, strdiffusion.LAYERS) == []


def test_only_the_command_line_sits_beside_the_subpackages():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "cli.py"]


def _toy(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "toy"
    for rel, text in {"__init__.py": "", "low/__init__.py": "", "mid/__init__.py": "", "side/__init__.py": "",
                      "high/__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


TOY_LAYERS = (("low",), ("mid", "side"), ("high",))


def test_layer_table_check_allows_imports_down_and_within_a_subpackage(tmp_path):
    root = _toy(tmp_path, {"mid/a.py": "from toy.low import x\nfrom . import b\nfrom .b import y\n",
                           "mid/b.py": "y = 1\n", "high/c.py": "from ..mid import a\nimport toy.side\n"})
    assert layer_violations(root, TOY_LAYERS) == []


@pytest.mark.parametrize("text, target", [
    ("from toy.high import x\n", "toy.high"),                          # up, absolute
    ("from ..high import x\n", "toy.high"),                            # up, relative
    ("def f():\n    import toy.high.c\n", "toy.high"),                # up, inside a function
    ("from toy import high\n", "toy.high"),                            # up, as a module of the package
    ("from toy.side.s import x\n", "toy.side"),                        # sideways, within the layer
])
def test_layer_table_check_catches_a_deliberate_upward_or_sideways_import(tmp_path, text, target):
    root = _toy(tmp_path, {"mid/a.py": text})
    (problem,) = layer_violations(root, TOY_LAYERS)
    assert problem.startswith("mid/a.py:") and f"mid imports {target} (" in problem


def test_layer_table_check_catches_a_subpackage_left_out_of_the_table(tmp_path):
    root = _toy(tmp_path, {"extra/__init__.py": "", "extra/e.py": "from toy.low import x\n"})
    assert layer_violations(root, TOY_LAYERS) == ["extra/e.py: subpackage 'extra' is missing from the layer table"]


def _words(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@pytest.mark.parametrize("layer", range(1, len(strdiffusion.LAYERS) - 2))
def test_layer_table_is_what_each_subpackage_docstring_says(layer):
    lower = [n for group in strdiffusion.LAYERS[:layer] for n in group]
    for name in strdiffusion.LAYERS[layer]:
        doc = (PACKAGE / name / "__init__.py").read_text()
        said = re.search(r"May import ([^.]*)\.", doc)
        assert said and said[1].replace("\n", " ") == _words(lower), f"strdiffusion/{name}/__init__.py"


def test_layer_table_keeps_the_command_line_in_stages_and_cli():
    """Below ``stages/`` and ``cli.py`` the library takes typed settings and paths: no parameter named after the
    command line's shape (``args``, ``argv``, ``namespace``; ``*args`` pass-throughs aside) and no ``sys.argv``."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("stages", "cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                found += [f"{rel}:{node.lineno} {node.name}({n})" for n in names if n in ("args", "argv", "namespace")]
            if isinstance(node, ast.Attribute) and node.attr == "argv" and getattr(node.value, "id", "") == "sys":
                found.append(f"{rel}:{node.lineno} sys.argv")
    assert found == []
