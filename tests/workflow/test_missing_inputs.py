"""Missing inputs and unfilled profile placeholders stop the workflow at its start (a dry run too), one line each,
all at once, naming the config or profile key and the path."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from support.workflow import filled_profile

from strdiffusion.settings.config import (
    missing_inputs,
    needs_networks,
    profile_placeholders,
    validate,
    workflow_config,
)

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"


def _work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "Snakefile", work / "Snakefile")
    for item in ("workflow", "config", "checkpoints"):
        shutil.copytree(ROOT / item, work / item)
    return work


def _dry_run(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([SNAKEMAKE, "-n", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def _errors(res) -> list[str]:
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "MissingInputException" not in res.stderr, res.stderr[-3000:]
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


def _stand_in_psv(root: Path) -> dict:
    """A few images and masks where config/paper/psv.yaml expects its data, as an overlay."""
    for sub in ("train", "test", "masks"):
        (root / sub).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(root / sub / f"{i}.png")
    return {"datasets": {"paris_streetview": {"path": str(root / "train"), "test_path": str(root / "test"),
                                              "masks": {"nvidia_source": str(root / "masks")}}}}


def test_missing_inputs_data_folders_are_one_line_each_at_a_dry_run(tmp_path):
    work = _work(tmp_path)
    errors = _errors(_dry_run(work, "--cores", "1", "--configfile", "config/paper/psv.yaml"))
    fix = f" in {work.resolve()}; put it there or set the key to your copy in an overlay"
    assert errors == [
        "error: config key 'datasets.paris_streetview.path': folder resources/paris_streetview/paris_train_original "
        "not found" + fix,
        "error: config key 'datasets.paris_streetview.test_path': folder resources/paris_streetview/paris_eval_gt "
        "not found" + fix,
        "error: config key 'datasets.paris_streetview.masks.nvidia_source': folder or .zip resources/nvidia_masks "
        "not found" + fix]


def test_missing_inputs_authors_checkpoint_is_named_by_its_key(tmp_path):
    work = _work(tmp_path)
    overlay = _stand_in_psv(tmp_path / "data")
    ck = work / "resources" / "checkpoints" / "psv"
    ck.mkdir(parents=True)
    for name in ("structure.pth", "texture.pth"):  # the discriminator is missing
        (ck / name).write_bytes(b"stand-in")
    (work / "local.yaml").write_text(yaml.safe_dump(overlay))
    errors = _errors(_dry_run(work, "--cores", "1", "--configfile", "config/paper/psv.yaml",
                              "config/paper/authors_psv.yaml", "local.yaml"))
    assert errors == ["error: config key 'checkpoints.critic': checkpoint resources/checkpoints/psv/discriminator.pth "
                      f"not found in {work.resolve()}; put the file there, or set the key to your copy (\"\" trains "
                      "the network)"]


def test_missing_inputs_unfilled_profile_placeholders_are_flagged_and_filled_ones_pass(tmp_path):
    work = _work(tmp_path)
    errors = _errors(_dry_run(work, "--profile", str(ROOT / "profiles" / "slurm")))
    assert len(errors) == 3, errors  # the CPU partition, the account, the GPU partition shared by five rules
    assert errors[0] == (f"error: {PROFILE}: key 'default-resources.slurm_partition' holds the placeholder "
                         "CHANGE_ME_cpu_partition; replace it with your CPU partition (`sinfo -s` lists them)")
    assert "'default-resources.slurm_account' holds the placeholder CHANGE_ME_account" in errors[1]
    assert ("'set-resources.{train_structure,train_texture,train_critic,train_irsde,inpaint_shard}.slurm_partition' "
            "holds the placeholder CHANGE_ME_gpu_partition") in errors[2]
    res = _dry_run(work, "--profile", str(filled_profile(tmp_path / "profile", ROOT)))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "slurm_partition=gpu" in res.stdout


def test_missing_inputs_prepared_data_need_no_source_and_builtin_needs_none(tmp_path):
    config = workflow_config(ROOT, [ROOT / "config" / "paper" / "psv.yaml"])
    assert len(missing_inputs(config, tmp_path)) == 3
    for sub in ("data", "masks/test", "masks/pool"):
        (tmp_path / "results" / "paris_streetview" / sub).mkdir(parents=True)
    (tmp_path / "results" / "paris_streetview" / "data" / "manifest.csv").write_text("id\n")
    assert missing_inputs(config, tmp_path) == []  # the data stage and the masks ran: the sources are not needed
    default = validate(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    assert missing_inputs(default, ROOT) == []  # the builtin photographs and the shipped checkpoints


def test_missing_inputs_placeholders_of_a_command_line_resource_name_no_file():
    lines = profile_placeholders({"slurm_account": "CHANGE_ME_account", "mem_mb": 1000}, {}, "the profile")
    assert lines == ["the profile: key 'default-resources.slurm_account' holds the placeholder CHANGE_ME_account; "
                     "replace it with your account (`sacctmgr -n show assoc user=$USER format=account`), "
                     "or with \"\" on a cluster without accounting"]


@pytest.mark.parametrize("missing", ["masks.source", "masks.train_source"])
def test_missing_inputs_own_mask_folders(tmp_path, missing):
    (tmp_path / "photos").mkdir()
    masks = {"protocol": "folder", "source": "my_masks", "train_source": "my_pool", "bins": [[0.1, 0.2]],
             "per_bin": 2}
    config = validate({**yaml.safe_load((ROOT / "config" / "config.yaml").read_text()), "run_datasets": ["mine"],
                       "checkpoints": {net: "" for net in ("structure", "texture", "critic", "irsde")}, "datasets": {"mine": {"source": "folder", "path": "photos", "n_test": 2, "masks": masks}}})
    (tmp_path / ("my_pool" if missing == "masks.source" else "my_masks")).mkdir()
    lines = missing_inputs(config, tmp_path)
    assert len(lines) == 1 and lines[0].startswith(f"config key 'datasets.mine.{missing}': folder or .zip "), lines


def test_missing_inputs_checkpoints_only_for_targets_that_use_a_network(tmp_path):
    """A run asking for the data, masks or export (outputs made before any network) is not stopped by a missing
    given checkpoint; one asking for the table, or for everything, is."""
    work = _work(tmp_path)
    shutil.rmtree(work / "checkpoints")
    for targets in (["results/builtin/data/manifest.csv", "results/builtin/masks/pairs.csv"], ["export"]):
        res = _dry_run(work, "--cores", "1", *targets)
        assert res.returncode == 0, res.stderr[-3000:]
    for targets in (["results/tables/builtin.md"], ["results/builtin/data/manifest.csv", "results/tables/builtin.md"],
                    []):
        errors = _errors(_dry_run(work, "--cores", "1", *targets))
        assert [e.split("':")[0] for e in errors] == [f"error: config key 'checkpoints.{net}" for net in
                                                      ("structure", "texture", "critic", "irsde")], errors


def test_missing_inputs_which_targets_use_a_network():
    assert not needs_networks(["results/builtin/data/manifest.csv", "./results/psv/masks/pairs.csv",
                               "results/builtin/structure/test/", "results/weights.json", "plan", "export"])
    for targets in ([], ["results/tables/builtin.md"], ["results/builtin/inpaint/strdiffusion/10-20/shard_0"],
                    ["all"], ["results/builtin/models/structure.pt"], ["results/builtin/datax"]):
        assert needs_networks(targets), targets
