"""The presets (docs/configuration.md, "Presets"): the default trains the four tiny networks into
results/builtin/ (its `_fresh` rows) and evaluates the shipped checkpoints (its plain rows); the
config/laptop.yaml overlay trains them longer into results/laptop/, with the default's recipe."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from strdiffusion.settings.config import layered, read_layer, validate
from strdiffusion.settings.methods import NETWORKS

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def test_the_laptop_overlay_keeps_the_defaults_recipe_and_trains_longer():
    default = validate(_config("config.yaml"))
    laptop = validate(layered([ROOT / "config" / "config.yaml", ROOT / "config" / "laptop.yaml"]))
    assert laptop["run_datasets"] == ["laptop"]
    assert laptop["datasets"]["laptop"] == default["datasets"]["builtin"]  # the same data, masks and pairs
    assert laptop["train"]["iterations"] > default["train"]["iterations"]
    for key in ("parameterization", "irsde_recipe", "lr", "critic_lr"):
        assert laptop["train"][key] == default["train"][key], key
    assert laptop["sampling"]["denoise_last"] == default["sampling"]["denoise_last"] is True


def _dry_run(work: Path, *configfiles: str) -> str:
    res = subprocess.run([SNAKEMAKE, "-n", "--cores", "2", *(["--configfile", *configfiles] if configfiles else [])],
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.slow
def test_the_default_and_the_laptop_overlay_train_all_four_networks_apart(tmp_path):
    work = tmp_path / "work"  # a copy: the checkout's own results/ must not change what a dry run shows
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    for item in ("workflow", "config", "checkpoints"):
        shutil.copytree(ROOT / item, work / item)
    for configfiles, dataset, other in (((), "builtin", "laptop"), (("config/laptop.yaml",), "laptop", "builtin")):
        out = _dry_run(work, *configfiles)
        for net in NETWORKS:
            assert f"results/{dataset}/models/{net}.pt" in out, (configfiles, net)
            # the default's plain rows sample the shipped file, its _fresh rows the network trained here
            assert (f"checkpoints/laptop/{net}.pt" in out) == (dataset == "builtin"), (configfiles, net)
        assert f"results/{other}/" not in out, configfiles
        assert ("inpaint/strdiffusion_fresh/" in out) == (dataset == "builtin"), configfiles
        if dataset == "laptop":  # the longest trainings first (priority = iterations), the short ones fill in
            # each rule's own block (its indented lines), so a missing priority cannot borrow the next rule's
            prio = {net: int(re.search(rf"rule train_{net}:\n(?: {{4}}.*\n)*? {{4}}priority: (\d+)", out).group(1))
                    for net in NETWORKS}
            assert prio == {"structure": 3000, "texture": 16000, "critic": 3000, "irsde": 16000}, prio


@pytest.mark.parametrize("overlay", ["laptop.yaml", "paper/psv.yaml", "paper/celebahq.yaml", "paper/places2.yaml"])
def test_overlays_that_train_do_not_inherit_the_defaults_shipped_checkpoints(overlay):
    config = read_layer(ROOT / "config" / overlay)  # with the file it extends, if any
    assert config["checkpoints"] == {net: "" for net in NETWORKS}  # Snakemake merges overlays key by key
    assert not any(method.endswith("_fresh") for method in config["methods"])  # no second copy of each row
