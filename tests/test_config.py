import copy

import pytest
import yaml

from strdiffusion import config as cfg
from strdiffusion.utils import UserError


@pytest.fixture(scope="module")
def default(repo_root):
    return yaml.safe_load((repo_root / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_gets_defaults(default):
    full = cfg.validate(default)
    assert full["datasets"]["builtin"]["masks"]["nvidia_binning"] == "index"
    assert "nvidia_binning" not in default["datasets"]["builtin"]["masks"]  # input not mutated


@pytest.mark.parametrize("edit, key", [
    (lambda c: c.update(unknwon=1), "'unknwon'"),
    (lambda c: c["datasets"]["builtin"].update(n_tset=3), "datasets.builtin.n_tset"),
    (lambda c: c["sampling"].update(jump="five"), "sampling.jump"),
    (lambda c: c.update(image_size=0), "image_size"),
    (lambda c: c["datasets"]["builtin"]["masks"].update(bins=[[0.5, 1.5]]), "datasets.builtin.masks.bins.0.1"),
    (lambda c: c["datasets"]["builtin"]["masks"].update(bins=[[0.4, 0.2]]), "datasets.builtin.masks.bins[0]"),
    (lambda c: c.update(image_size=62), "image_size"),
    (lambda c: c["methods"].insert(0, "lama"), "methods.0"),
])
def test_bad_config_names_the_key(default, edit, key):
    bad = copy.deepcopy(default)
    edit(bad)
    with pytest.raises(UserError) as info:
        cfg.validate(bad)
    message = str(info.value)
    assert key in message and "\n" not in message


def test_folder_source_requires_a_path(default):
    bad = copy.deepcopy(default)
    bad["datasets"]["builtin"]["source"] = "folder"
    with pytest.raises(UserError, match="datasets.builtin.path"):
        cfg.validate(bad)


def test_paper_configs_are_valid(repo_root):
    base = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    paper = [repo_root / "config" / "paper" / f"{n}.yaml" for n in ("psv", "celebahq", "places2")]
    assert {p.stem for p in paper} >= {"psv", "celebahq", "places2"}
    for path in paper:
        merged = cfg.merge(copy.deepcopy(base), yaml.safe_load(path.read_text()))
        full = cfg.validate(merged, source=str(path))
        assert full["image_size"] == 256 and full["model"]["nf"] == 64
        # nothing of the tiny preset leaks into the paper settings through the deep merge
        assert (full["model"]["attn_heads"], full["model"]["attn_dim_head"], full["sde"]["T"]) == (4, 32, 400)
        assert (full["sampling"]["u_max"], full["sampling"]["re"], full["train"]["lr"]) == (6, 5, 1e-4)
        for name in full["run_datasets"]:
            assert full["datasets"][name]["masks"]["protocol"] == "nvidia"
        for overlay in (repo_root / "config" / "paper").glob(f"authors_{path.stem}.yaml"):
            cfg.validate(cfg.merge(copy.deepcopy(merged), yaml.safe_load(overlay.read_text())), source=str(overlay))


def test_wheel_contains_the_schema_and_validates_outside_the_clone(tmp_path, repo_root):
    """`pip wheel --no-deps .` must ship what config validation reads: the schema."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"   # a copy, so the build writes nothing into the working tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / name, src / name)
    shutil.copytree(repo_root / "strdiffusion", src / "strdiffusion",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("strdiffusion-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "strdiffusion/schemas/config.schema.yaml" in names
        z.extractall(tmp_path / "site")
    # validate the shipped default config with the wheel's package, from a folder outside the clone
    code = ("import sys, yaml; sys.path.insert(0, sys.argv[1]); import strdiffusion.config as c; "
            "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
            "c.validate(yaml.safe_load(open(sys.argv[2]))); print('valid')")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site"), str(repo_root / "config" / "config.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "valid", res.stderr[-2000:]
