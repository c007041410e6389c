"""One definition each: the method list, device resolution, SDE compatibility and
equal-size batches, used by the workflow, the inpaint and metric stages and training alike."""
from __future__ import annotations

import re
from importlib import resources

import pytest
import torch
import yaml

from strdiffusion.io.errors import UserError
from strdiffusion.io.images import equal_size_runs
from strdiffusion.models.checkpoints import sde_mismatch
from strdiffusion.runtime.gpu import resolve_device
from strdiffusion.settings.methods import (
    CLASSICAL,
    DIFFUSION,
    METHODS,
    WORKFLOW_METHODS,
    base_method,
    is_fresh,
    method_networks,
)


def test_the_schema_accepts_exactly_the_library_methods():
    schema = yaml.safe_load(resources.files("strdiffusion").joinpath("settings/schemas/config.schema.yaml").read_text())
    assert tuple(schema["properties"]["methods"]["items"]["enum"]) == WORKFLOW_METHODS


def test_fresh_rows_run_their_base_method():
    assert set(WORKFLOW_METHODS) - set(METHODS) == {"strdiffusion_fresh", "strdiffusion_noresample_fresh", "irsde_fresh"}
    assert base_method("strdiffusion_noresample_fresh") == "strdiffusion_noresample" and is_fresh("irsde_fresh")
    for method in METHODS + ("telea_fresh", "fresh"):
        assert base_method(method) == method and not is_fresh(method)


def test_workflow_and_inpaint_stage_read_the_one_method_list(repo_root):
    from strdiffusion.inpainting import run as inpaint
    from strdiffusion.stages import inpaint as inpaint_stage

    assert inpaint.CLASSICAL is CLASSICAL and inpaint.DIFFUSION is DIFFUSION
    assert set(inpaint_stage.build_parser()._option_string_actions["--method"].choices) == set(METHODS)
    common = (repo_root / "workflow" / "rules" / "common.smk").read_text()
    assert "from strdiffusion.settings.methods import" in common
    assert not re.search(r'"(strdiffusion_noresample|navier_stokes)"', common)  # no second list


def test_method_networks():
    assert method_networks("strdiffusion") == ("structure", "texture", "critic")
    assert method_networks("strdiffusion_noresample") == ("structure", "texture")
    assert method_networks("irsde") == ("irsde",)
    assert all(method_networks(m) == () for m in CLASSICAL)
    with pytest.raises(ValueError, match="unknown method"):
        method_networks("telia")


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("meta", local_rank=3) == torch.device("meta")
    with pytest.raises(UserError, match="not a torch device"):
        resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", local_rank=2) == torch.device("cuda", 2)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda", 0)  # an explicit index wins


def test_sde_mismatch():
    a = {"T": 100, "max_sigma": 30.0, "schedule": "cosine", "eps": 0.005}
    assert sde_mismatch(a, dict(a)) is None
    assert sde_mismatch(a, {**a, "max_sigma": 30.0 * (1 + 1e-12)}) is None
    assert sde_mismatch(a, {**a, "eps": 0.004}) == "eps"
    assert sde_mismatch(a, {**a, "T": 400, "schedule": "linear"}) == "T"  # the first in settings order
    assert sde_mismatch(a, {"T": 100}) is None  # only settings both give are compared
    assert sde_mismatch({"T": 100}, {"schedule": "linear"}) is None


def test_equal_size_runs():
    sizes = [(2, 2), (2, 2), (2, 2), (3, 2), (2, 2), (2, 2)]
    assert list(equal_size_runs(sizes, 2)) == [[0, 1], [2], [3], [4, 5]]
    assert list(equal_size_runs(sizes, 16)) == [[0, 1, 2], [3], [4, 5]]
    assert list(equal_size_runs(sizes, 1)) == [[i] for i in range(6)]
    assert list(equal_size_runs([], 4)) == []


def test_rows_sample_given_checkpoints_and_fresh_rows_the_networks_trained_here():
    from strdiffusion.settings.methods import (
        curve_inputs,
        given_checkpoints,
        needed_networks,
        row_models,
        trained_networks,
    )

    config = {"methods": ["telea", "strdiffusion", "irsde_fresh"],
              "checkpoints": {"structure": "s.pt", "texture": "t.pt", "critic": "", "irsde": "i.pt"}}
    assert row_models(config, "d", "strdiffusion") == {"structure": "s.pt", "texture": "t.pt",
                                                       "critic": "results/d/models/critic.pt"}
    assert row_models(config, "d", "irsde_fresh") == {"irsde": "results/d/models/irsde.pt"}  # i.pt is not used
    assert row_models(config, "d", "telea") == {}
    assert needed_networks(config) == ["structure", "texture", "critic", "irsde"]
    assert trained_networks(config) == ["critic", "irsde"]
    assert given_checkpoints(config) == {"structure": "s.pt", "texture": "t.pt"}  # no plain irsde row
    assert curve_inputs(config, "d") == {"critic": "results/d/curves/critic.csv", "irsde": "results/d/curves/irsde.csv",
                                         "structure_given": "s.pt", "texture_given": "t.pt"}
    config["checkpoints"] = dict.fromkeys(config["checkpoints"], "")
    assert trained_networks(config) == needed_networks(config) and given_checkpoints(config) == {}
