"""End-to-end: the real Snakemake workflow on a tiny config in a temporary folder, and its lint.

Tests that run the workflow (not only a dry run) are marked ``slow``: ``make test-fast`` skips them."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from support.workflow import SNAKEMAKE, TINY, make_workdir, snakemake

CLASSICAL = ["mean_fill", "telea", "navier_stokes", "biharmonic"]
DIFFUSION = ["strdiffusion", "strdiffusion_noresample", "irsde"]



@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_workflow_end_to_end_table(classical_run):
    work, _ = classical_run
    md = (work / "results/tables/builtin.md").read_text()
    for name in ("Mean-colour fill", "Telea (OpenCV)", "Navier-Stokes (OpenCV)", "Biharmonic (scikit-image)", "StrDiffusion",
                 "StrDiffusion w/o resampling", "IR-SDE (no structure)"):
        assert f"| {name} |" in md
    assert "10-20% PSNR↑" in md and "30-40% FID↓" in md
    # weights are missing in this TORCH_HOME: n/a with a footnote naming the file
    assert "n/a" in md and "alexnet-owt-7be5be79.pth" in md and "pt_inception-2015-12-05-6726825d.pth" in md
    table = pd.read_csv(work / "results/tables/builtin.csv", dtype={"bin": str})
    psnr = table[table.metric == "psnr"].set_index(["method", "bin"]).value
    assert len(psnr) == 7 * 2 and psnr.between(5, 60).all()
    # the divergence diagnostic: diffusion rows only, a share in [0, 1]
    clipped = table[table.metric == "clipped"]
    assert set(clipped.method) == set(DIFFUSION) and clipped.value.between(0, 1).all()
    # bigger holes are harder for every method
    for m in CLASSICAL:
        assert psnr[(m, "10-20")] > psnr[(m, "30-40")]
    assert (work / "results/tables/builtin.tex").read_text().count(r"\textbf{") >= 2
    for net in ("structure", "texture", "critic", "irsde"):
        assert (work / f"results/builtin/models/{net}.pt").is_file()
        curve = pd.read_csv(work / f"results/builtin/curves/{net}.csv")
        assert curve["iteration"].tolist() == [0, 2, 4, 6, 8]  # checkpoint_every 2 of 8
        assert ("auc" if net == "critic" else "hole_psnr") in curve.columns
    for fig in ("qualitative", "metrics_vs_hole_ratio", "learning_curves"):
        assert (work / f"results/figures/builtin/{fig}.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_workflow_second_run_does_nothing(classical_run):
    work, torch_home = classical_run
    res = snakemake(work, "-n", torch_home=torch_home)
    assert "Nothing to be done" in res.stdout + res.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_workflow_report_html(classical_run):
    work, torch_home = classical_run
    snakemake(work, "--report", "results/report.html", torch_home=torch_home)
    html = (work / "results/report.html").read_text(errors="replace")
    assert "qualitative.png" in html and "builtin.csv" in html and "learning_curves.png" in html


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_workflow_masks_are_in_their_bins(classical_run):
    work, _ = classical_run
    pairs = pd.read_csv(work / "results/builtin/masks/pairs.csv", dtype={"bin": str})
    assert sorted(pairs.bin.unique()) == ["10-20", "30-40"] and len(pairs) == 8
    import numpy as np
    from PIL import Image

    for row in pairs.itertuples():
        hole = (np.asarray(Image.open(work / row.mask).convert("L")) > 127).mean()
        lo, hi = (int(v) / 100 for v in row.bin.split("-"))
        assert lo < hole <= hi


def test_workflow_bad_config_key_is_one_line(tmp_path, request):
    repo = Path(request.config.rootpath)
    work = make_workdir(tmp_path / "bad", repo, {**TINY, "metrcs": {}})
    res = snakemake(work, "-n", torch_home=tmp_path, check=False)
    assert res.returncode != 0
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'metrcs'" in errors[0]


def _outputs(work: Path, per_image: bool = False) -> dict:
    """Bytes of every mask, inpainted image and table of a run (and per-image metric file), by relative path."""
    files = {}
    patterns = ["results/builtin/masks/test/*/*.png", "results/builtin/inpaint/*/*/*/*.png", "results/tables/*"]
    if per_image:
        patterns.append("results/builtin/metrics/*/*/per_image.csv")
    for pattern in patterns:
        for p in sorted(work.glob(pattern)):
            files[str(p.relative_to(work))] = p.read_bytes()
    return files


@pytest.mark.slow
@pytest.mark.xdist_group("workflow")  # one worker makes the shared run
def test_determinism_other_seed_changes_masks_and_diffusion_fills(classical_run, tmp_path, request):
    """The seed reaches the masks and the diffusion sampler. (That the same seed gives the same bytes is shown by
    the resume test below: a second run from scratch, killed twice and resumed, equals the first in every file.)"""
    work_a, torch_home = classical_run
    repo = Path(request.config.rootpath)
    shard = "results/builtin/inpaint/strdiffusion/10-20/shard_0"
    work_c = make_workdir(tmp_path / "c", repo, {**TINY, "seed": 1})
    snakemake(work_c, "results/builtin/masks/test", shard, torch_home=torch_home)
    a, c = _outputs(work_a), _outputs(work_c)
    masks = [k for k in a if "/masks/" in k]
    assert masks and all(k in c for k in masks)
    assert any(a[k] != c[k] for k in masks)
    diffusion = [k for k in a if k.startswith(shard + "/")]
    assert diffusion and all(k in c for k in diffusion)
    assert any(a[k] != c[k] for k in diffusion)


def _run_until(work: Path, torch_home: Path, pattern: str, *targets: str, count: int = 1, timeout=600) -> bool:
    """Start the workflow (up to ``targets``), kill -9 its whole process group once ``count`` paths match
    ``pattern``. True if killed."""
    import signal
    import time

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TORCH_HOME"] = str(torch_home)
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([SNAKEMAKE, *targets, "--cores", "2", "--configfile", "tiny.yaml", "--rerun-incomplete"],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if len(list(work.glob(pattern))) >= count:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    proc.wait()
    return False


@pytest.mark.slow
@pytest.mark.xdist_group("resume")  # a worker of its own: its run goes on beside the shared one
def test_resume_after_kill_equals_uninterrupted(tmp_path, classical_torch_home, request):
    """kill -9 during training, then during inpainting; the resumed run equals the uninterrupted one in every mask,
    diffusion-inpainted image and per-image metric file (so a second run with the same seed gives the same bytes).
    The run goes up to the three diffusion methods' per-image metrics: the four trainings, every diffusion shard,
    without the classical methods, the set metrics, the table and figures (derived from these by deterministic
    code, byte-identical from the same inputs)."""
    torch_home = classical_torch_home
    repo = Path(request.config.rootpath)
    work = make_workdir(tmp_path / "d", repo, TINY)
    targets = [f"results/builtin/metrics/{m}/{b}/per_image.csv" for m in DIFFUSION for b in ("10-20", "30-40")]
    killed_training = _run_until(work, torch_home, "results/builtin/models/*_state/state.pt", *targets)
    snakemake(work, "--unlock", torch_home=torch_home)  # what a user does after kill -9 (README)
    # three shards written: two jobs run at a time, so at least one of them had finished at the kill
    killed_inpainting = _run_until(work, torch_home, "results/builtin/inpaint/*/*/shard_?", *targets, count=3)
    snakemake(work, "--unlock", torch_home=torch_home)
    assert killed_training and killed_inpainting
    # Snakemake marks the outputs of jobs that were running at the kill as incomplete; those are redone
    import base64

    incomplete = set()
    for marker in (work / ".snakemake/incomplete").glob("*"):
        try:
            incomplete.add(base64.urlsafe_b64decode(marker.name).decode())
        except ValueError:  # other bookkeeping files
            pass
    # shard folders only: a job killed while it held its shard's lock leaves shard_<i>.lock, which the resumed run
    # takes over and removes
    finished = [p for p in sorted(work.glob("results/builtin/inpaint/*/*/shard_*"))
                if p.is_dir() and str(p.relative_to(work)) not in incomplete]
    assert finished
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    snakemake(work, *targets, "--rerun-incomplete", torch_home=torch_home)
    # finished shards were kept, not redone
    assert all(p.stat().st_mtime_ns == stamps[p] for p in finished)
    work_a, _ = request.getfixturevalue("classical_run")  # made meanwhile by another worker, or now
    a, d = _outputs(work_a, per_image=True), _outputs(work, per_image=True)
    assert not any("/inpaint/" in k and k.split("/")[3] not in DIFFUSION for k in d)  # the run stopped where asked
    assert len([k for k in d if k.endswith("per_image.csv")]) == len(targets) and len(d) > 30
    assert d.keys() <= a.keys() and [k for k in d if a[k] != d[k]] == []


def test_speed_options_reach_the_inpaint_jobs(tmp_path, request):
    """sampling.channels_last / compile / autocast / tf32 and train.amp become the jobs' flags (dry run)."""
    repo = Path(request.config.rootpath)
    fast = {**TINY, "sampling": {**TINY["sampling"], "channels_last": True, "compile": True, "autocast": "bf16"},
            "train": {**TINY["train"], "amp": "fp16"}}
    plain = {**TINY, "sampling": {**TINY["sampling"], "channels_last": False}}
    for name, config in (("fast", fast), ("plain", plain)):
        work = make_workdir(tmp_path / name, repo, config)
        res = snakemake(work, "-n", "-p", torch_home=tmp_path)
        inpaint = [line for line in res.stdout.splitlines() if "strdiffusion inpaint --method strdiffusion " in line]
        assert inpaint, res.stdout[-2000:]
        for line in inpaint:
            flags = line.split()
            if name == "fast":
                assert {"--channels-last", "--compile"} <= set(flags) and "--tf32" not in flags
                assert flags[flags.index("--autocast") + 1] == "bf16"
            else:  # every config-read setting is on the command line; switches only when on
                assert not {"--channels-last", "--compile", "--tf32"} & set(flags)
                assert flags[flags.index("--autocast") + 1] == "none"
        train = [line.split() for line in res.stdout.splitlines() if "strdiffusion train " in line]
        assert len(train) == 4, res.stdout[-2000:]
        assert all(flags[flags.index("--amp") + 1] == ("fp16" if name == "fast" else "none") for flags in train)


def test_workflow_passes_snakemake_lint(tmp_path, request):
    """`snakemake --lint` finds nothing in the Snakefile and the rule files (it exits 1 on any finding)."""
    work = make_workdir(tmp_path / "lint", Path(request.config.rootpath), TINY)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run([SNAKEMAKE, "--lint"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "Congratulations, your workflow is in a good condition!" in res.stdout + res.stderr


def test_parsing_the_workflow_writes_nothing(tmp_path, request):
    """A dry run parses every rule file: no temporary folder, and nothing in the work folder but Snakemake's
    own bookkeeping (.snakemake/)."""
    work = make_workdir(tmp_path / "parse", Path(request.config.rootpath), TINY)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    env = {**os.environ, "TMPDIR": str(scratch), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--configfile", "tiny.yaml"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    after = sorted(p.relative_to(work) for p in work.rglob("*") if ".snakemake" not in p.relative_to(work).parts)
    assert after == before and list(scratch.iterdir()) == []


def test_the_tiny_config_runs_from_its_catalog_folder(tmp_path, request):
    """`snakemake --directory .test`: the workflow reads .test/config/config.yaml, which extends the default."""
    repo = Path(request.config.rootpath)
    work = make_workdir(tmp_path / "clone", repo, TINY)
    shutil.copytree(repo / ".test", work / ".test", ignore=shutil.ignore_patterns("results", "logs", ".snakemake"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    res = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--directory", ".test"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    shards = [line for line in res.stdout.splitlines() if line.startswith("inpaint_shard ")]
    assert shards and int(shards[0].split()[1]) == len(TINY["methods"]) * 2 * 2  # 2 bins of 4 pairs, 2 per shard


def test_the_conda_environment_is_the_pinned_stack_without_relative_paths(request):
    repo = Path(request.config.rootpath)
    env = yaml.safe_load((repo / "workflow" / "envs" / "strdiffusion.yaml").read_text())
    (pip,) = [dep["pip"] for dep in env["dependencies"] if isinstance(dep, dict)]
    pinned = [line.split("#")[0].strip() for line in (repo / "requirements.txt").read_text().splitlines()]
    assert pip == [line for line in pinned if line]
    assert not [dep for dep in pip if dep.startswith("-") or "/" in dep]
