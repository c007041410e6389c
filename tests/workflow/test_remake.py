"""`strdiffusion remake`: a checkpoint trained from a git checkout is re-made from the commit and command in its
metadata, bit for bit, also when it was resumed with more iterations; a changed weight or a missing part of its
history is named; checkpoints without provenance get one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from strdiffusion.io.errors import UserError
from strdiffusion.models import remake as remake

TINY = ".test/config/config.yaml"
MODEL = "results/builtin/models/irsde.pt"


def _strdiffusion(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "strdiffusion", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, repo_root):
    """A clone of the project's history; there, by the clone's own code and workflow, the tiny config's IR-SDE
    network trained for its 8 iterations, then resumed by the same command with 12 (another learning-rate
    schedule from iteration 8 on), then shrunk as the shipped files are. Also the shared work folder."""
    root = tmp_path_factory.mktemp("remake")
    clone = root / "clone"
    subprocess.run(["git", "clone", "-q", str(repo_root), str(clone)], check=True)
    env = dict(os.environ, PYTHONPATH=str(clone), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    res = subprocess.run([sys.executable, "-m", "snakemake", MODEL, "--cores", "2", "--configfile", TINY], cwd=clone,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    args = torch.load(clone / MODEL, weights_only=True)["train_argv"]
    args[args.index("--iterations") + 1] = "12"
    res = _strdiffusion("train", *args, cwd=clone, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert torch.load(clone / MODEL, weights_only=True)["resumes"] == [{"at": 8, "planned": 8}]
    shipped = root / "irsde.pt"
    res = _strdiffusion("shrink", str(clone / MODEL), str(shipped), cwd=clone, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return clone, shipped, root / "work", env


def _remake(trained, checkpoint: Path, *options):
    clone, _, work, _ = trained
    return _strdiffusion("remake", str(checkpoint), "--work", str(work), "--repo", str(clone), "--configfile", TINY,
                         *options, cwd=work.parent)


@pytest.mark.slow
def test_remake_gives_the_same_weights_and_a_changed_weight_is_named(trained):
    _, shipped, work, _ = trained
    res = _remake(trained, shipped)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "gives the same weights and learning curve" in res.stdout
    replay = work / "replay" / "irsde.pt"
    # the replay trained for real, in two parts as the file was (its own paths, its own resume record)
    meta = torch.load(replay, weights_only=True)
    assert meta["command"] != torch.load(shipped, weights_only=True)["command"] and meta["resumes"][0]["at"] == 8
    # one weight changed in its last float16 bit: named
    payload = torch.load(shipped, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    payload["state_dict"][name].view(-1).view(torch.int16)[0] ^= 1
    assert remake.compare_weights(payload, replay) == [name]


@pytest.mark.slow
def test_remake_of_a_file_without_its_resume_record_needs_its_segments(trained):
    """A file older than the resume record: replayed as one run of 12 iterations, its curve departs from the file's
    where the schedules part (after iteration 6, the first run's milestone), which the quick check names; given the runs' iterations, equal."""
    _, shipped, work, _ = trained
    payload = torch.load(shipped, weights_only=True)
    del payload["resumes"]
    for name in ("old", "old_segments"):
        torch.save(payload, work.parent / f"{name}.pt")
    res = _remake(trained, work.parent / "old.pt", "--rows", "4")
    assert res.returncode == 1, res.stdout + res.stderr[-3000:]
    assert "differs: curve column(s) loss, lr" in res.stdout, res.stdout
    res = _remake(trained, work.parent / "old_segments.pt", "--rows", "5", "--segments", "8,12")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "gives the same first 5 learning-curve rows" in res.stdout


@pytest.mark.slow
def test_remake_and_space_in_a_path_or_an_option_given_as_name_equals_value(trained):
    """A training whose output paths hold spaces, with options given as --name=value: the file records its job,
    and the replay, rebuilt from it, gives the same weights."""
    clone, _, work, env = trained
    args = torch.load(clone / MODEL, weights_only=True)["train_argv"]
    for name in ("--out", "--curve", "--state-dir", "--iterations"):
        i = args.index(name)
        del args[i:i + 2]
    out = clone / "results" / "builtin" / "my models" / "irsde space.pt"
    args += [f"--out={out.relative_to(clone)}", "--state-dir", "results/builtin/my state", "--iterations=8"]
    res = _strdiffusion("train", *args, cwd=clone, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    meta = torch.load(out, weights_only=True)
    assert "results/builtin/my models/irsde space.pt" in meta["train_argv"]
    assert meta["job"]["out"] == "results/builtin/my models/irsde space.pt" and meta["job"]["settings"]["iterations"] == 8
    res = _remake(trained, out)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "gives the same weights and learning curve" in res.stdout
    assert (work / "replay" / "irsde space.pt").is_file()


def test_remake_reads_name_equals_value_in_a_recorded_command_line(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"commit": "c" * 40, "command": "/x/__main__.py train --net irsde --iterations=20 --out a.pt"}, old)
    assert remake.read_provenance(old).args == ["--net", "irsde", "--iterations", "20", "--out", "a.pt"]
    new = tmp_path / "new.pt"
    torch.save({"commit": "c" * 40, "command": "strdiffusion train --out 'a b.pt'",
                "train_argv": ["--out", "a b.pt", "--iterations", "3"]}, new)
    assert remake.read_provenance(new).option("--out") == "a b.pt"


def test_remake_segments_come_from_the_resume_record_or_the_given_iterations():
    prov = remake.Provenance(Path("t.pt"), "c" * 40, ["--iterations", "20"],
                             {"resumes": [{"at": 6, "planned": 10}, {"at": 10, "planned": 10}]})
    assert remake.segments(prov) == [(10, 6), (10, 10), (20, 20)]
    old = remake.Provenance(Path("t.pt"), "c" * 40, ["--iterations", "20"], {})
    assert remake.segments(old) == [(20, 20)]
    assert remake.segments(old, [10, 20]) == [(10, 10), (20, 20)]
    with pytest.raises(UserError, match=r"--segments 10,30: must rise to the file's own --iterations 20"):
        remake.segments(old, [10, 30])


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
    command, outputs = remake.replay_command(prov, tmp_path, iterations=4)
    args = command[command.index("train") + 1:]
    assert args == ["--net", "irsde", "--out", str(tmp_path / "irsde.pt"), "--threads", "1", "--state-dir",
                    str(tmp_path / "irsde_state"), "--iterations", "4", "--curve", str(tmp_path / "irsde_curve.csv")]
    assert set(outputs) == {"--out", "--curve", "--state-dir"}
