import copy
from pathlib import Path

import pytest
import yaml

from strdiffusion.io.errors import UserError
from strdiffusion.settings import config as cfg


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
    base = repo_root / "config" / "config.yaml"
    paper = [repo_root / "config" / "paper" / f"{n}.yaml" for n in ("psv", "celebahq", "places2")]
    assert {p.stem for p in paper} >= {"psv", "celebahq", "places2"}
    for path in paper:
        merged = cfg.layered([base, path])
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
        assert "strdiffusion/settings/schemas/config.schema.yaml" in names
        z.extractall(tmp_path / "site")
    # validate the shipped default config with the wheel's package, from a folder outside the clone
    code = ("import sys, yaml; sys.path.insert(0, sys.argv[1]); import strdiffusion.settings.config as c; "
            "assert c.__file__.startswith(sys.argv[1]), c.__file__; "
            "c.validate(yaml.safe_load(open(sys.argv[2]))); print('valid')")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site"), str(repo_root / "config" / "config.yaml")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "valid", res.stderr[-2000:]


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_each_paper_config_holds_only_what_differs_from_common_yaml(repo_root):
    paper = repo_root / "config" / "paper"
    common = _leaves(yaml.safe_load((paper / "common.yaml").read_text()))
    for name in ("psv", "celebahq", "places2"):
        own = yaml.safe_load((paper / f"{name}.yaml").read_text())
        assert own.pop("extends") == "common.yaml", name
        repeated = [key for key, value in _leaves(own).items() if common.get(key, object()) == value]
        assert not repeated, (name, repeated)
        layered = cfg.layered([paper / f"{name}.yaml"])
        assert "extends" not in layered and layered["model"]["nf"] == 64  # common.yaml beneath the file
        assert layered["run_datasets"] == own["run_datasets"]


def test_the_laptop_overlay_holds_only_what_differs_from_the_default(repo_root):
    default = _leaves(yaml.safe_load((repo_root / "config" / "config.yaml").read_text()))
    laptop = yaml.safe_load((repo_root / "config" / "laptop.yaml").read_text())
    repeated = [key for key, value in _leaves(laptop).items() if default.get(key, object()) == value]
    assert not repeated, repeated


def test_extends_merges_the_named_files_beneath_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {lr: 1.0, batch_size: 2}\nseed: 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("extends: ../a.yaml\ntrain: {lr: 2.0}\n")
    (tmp_path / "c.yaml").write_text("extends: [sub/b.yaml]\nseed: 3\n")
    (tmp_path / "later.yaml").write_text("train: {batch_size: 5}\n")
    got = cfg.layered([tmp_path / "c.yaml", tmp_path / "later.yaml"], {"seed": 4})
    assert got == {"train": {"lr": 2.0, "batch_size": 5}, "seed": 4}
    (tmp_path / "a.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(UserError, match="leads back"):
        cfg.read_layer(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(UserError, match="missing.yaml: config file not found"):
        cfg.read_layer(tmp_path / "d.yaml")


def test_a_data_set_like_another_takes_its_settings_under_its_own_name(default):
    alike = copy.deepcopy(default)
    alike["datasets"]["twin"] = {"like": "builtin", "n_test": 3}
    got = cfg.validate(alike)["datasets"]
    assert got["twin"] == {**got["builtin"], "n_test": 3} and got["builtin"]["n_test"] == default["datasets"]["builtin"]["n_test"]
    alike["datasets"]["twin"] = {"like": "nowhere"}
    with pytest.raises(UserError, match=r"datasets\.twin\.like.*'nowhere'.*defined: builtin, twin"):
        cfg.validate(alike)


def test_nested_config_override_is_typed_like_an_overlay_value(tmp_path, repo_root):
    """`--config 'datasets={"mine":{"test_fraction":0.2}}'`: Snakemake reads nested values as strings; each one
    where the schema wants a number, integer or boolean is read as an overlay file's value, a string stays one."""
    import os
    import shutil
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from strdiffusion.settings.config import coerce_overrides

    given = {"seed": 3, "datasets": {"mine": {"test_fraction": "0.2", "skip_bad_files": "true", "path": "007",
                                              "masks": {"bins": [["0.1", "0.25"]], "per_bin": "4",
                                                        "protocol": "folder", "source": "1"}}},
             "train": {"lr": "1e-4"}}
    assert coerce_overrides(given) == {
        "seed": 3, "datasets": {"mine": {"test_fraction": 0.2, "skip_bad_files": True, "path": "007",
                                         "masks": {"bins": [[0.1, 0.25]], "per_bin": 4, "protocol": "folder",
                                                   "source": "1"}}},
        "train": {"lr": 1e-4}}
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(repo_root / "Snakefile", work / "Snakefile")
    for item in ("workflow", "config", "checkpoints"):
        shutil.copytree(repo_root / item, work / item)
    (work / "photos").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(work / "photos" / f"{i}.png")
    (work / "mine.yaml").write_text(yaml.safe_dump({
        "run_datasets": ["mine"], "methods": ["mean_fill"],
        "datasets": {"mine": {"source": "folder", "path": "photos", "n_test": 2,
                              "masks": {"protocol": "lama_medium", "bins": [[0.1, 0.2]], "per_bin": 4}}}}))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-n", "-p", "--cores", "1",
                          "--configfile", "mine.yaml", "--config",
                          'datasets={"mine":{"test_fraction":0.2,"masks":{"bins":[[0.1,0.25]]}}}'],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "--test-fraction 0.2 " in res.stdout and "--bins 0.1:0.25 " in res.stdout
