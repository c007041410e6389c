"""`strdiffusion remake`: a checkpoint trained from a git checkout is re-made from the commit and command in its
metadata, bit for bit; a changed weight or curve value is named; checkpoints without provenance get one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strdiffusion import remake
from strdiffusion.utils import UserError

TINY = ".test/config/config.yaml"
MODEL = "results/builtin/models/irsde.pt"


def _strdiffusion(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "strdiffusion", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    """A clone of the project's history, and the tiny config's IR-SDE network trained there by the clone's own
    code and workflow (so the checkpoint records the clone's commit), then shrunk as the shipped ones are."""
    clone = tmp_path_factory.mktemp("remake") / "clone"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(clone)], check=True)
    env = dict(os.environ, PYTHONPATH=str(clone), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    res = subprocess.run([sys.executable, "-m", "snakemake", MODEL, "--cores", "2", "--configfile", TINY], cwd=clone,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    shipped = clone.parent / "irsde.pt"
    res = _strdiffusion("shrink", str(clone / MODEL), str(shipped), cwd=clone, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return clone, shipped


@pytest.mark.slow
def test_remake_gives_the_same_weights_and_a_changed_file_is_named(trained, tmp_path):
    clone, shipped = trained
    res = _strdiffusion("remake", str(shipped), "--work", str(tmp_path / "work"), "--repo", str(clone),
                        "--configfile", TINY, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "gives the same weights and learning curve" in res.stdout
    replay = tmp_path / "work" / "replay" / "irsde.pt"
    assert replay.is_file()
    # the replay trained for real: its own wall time, its own output paths
    assert torch.load(replay, weights_only=True)["command"] != torch.load(shipped, weights_only=True)["command"]
    # one weight changed in the last float16 bit: named
    payload = torch.load(shipped, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    flat = payload["state_dict"][name].view(-1).view(torch.int16)
    flat[0] ^= 1
    assert remake.compare_weights(payload, replay) == [name]


@pytest.mark.slow
def test_remake_quick_check_compares_the_first_curve_rows_and_names_a_changed_column(trained, tmp_path):
    clone, shipped = trained
    payload = torch.load(shipped, weights_only=True)
    payload["curve"]["loss"][2] *= 1.0 + 1e-12  # a change a rounded print would hide
    changed = tmp_path / "changed.pt"
    torch.save(payload, changed)
    res = _strdiffusion("remake", str(changed), "--work", str(tmp_path / "work"), "--repo", str(clone),
                        "--configfile", TINY, "--rows", "2", cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    assert res.stdout.strip().endswith("differs: curve column(s) loss"), res.stdout
    curve = remake._curve_rows(tmp_path / "work" / "replay" / "changed_curve.csv")
    assert remake.compare_curves(torch.load(shipped, weights_only=True)["curve"], curve, rows=2) == []


def test_remake_refuses_a_checkpoint_without_provenance(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": {}, "command": "x train --out y"}, bare)
    with pytest.raises(UserError, match=r"bare\.pt records no commit: only a checkpoint trained from a git"):
        remake.read_provenance(bare)
    with pytest.raises(UserError, match=r"missing\.pt not found"):
        remake.read_provenance(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match=r"text\.pt cannot be read"):
        remake.read_provenance(tmp_path / "text.pt")


def test_remake_names_a_commit_missing_from_the_history(tmp_path, repo_root):
    with pytest.raises(UserError, match=r"commit 0123456789 is not in the git history of .*git fetch --unshallow"):
        remake.unpack_commit(repo_root, "0123456789" * 4, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()  # nothing half-made


def test_remake_redirects_every_output_and_keeps_the_settings(tmp_path):
    prov = remake.Provenance(Path("ck/irsde.pt"), "c" * 40, ["--net", "irsde", "--out", "a.pt", "--threads", "1",
                                                             "--state-dir", "s", "--iterations", "10"], {})
    command, outputs = remake.replay_command(prov, tmp_path)
    args = command[command.index("train") + 1:]
    assert args == ["--net", "irsde", "--out", str(tmp_path / "irsde.pt"), "--threads", "1", "--state-dir",
                    str(tmp_path / "irsde_state"), "--iterations", "10", "--curve", str(tmp_path / "irsde_curve.csv")]
    assert set(outputs) == {"--out", "--curve", "--state-dir"}
