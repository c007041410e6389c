"""Bad-input matrix: each case gives one clear error line (or works / is a documented skip),
names the file or key, prints no traceback, and leaves no partial output behind."""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from strdiffusion.models.checkpoints import build_network, save_checkpoint

RGB = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
TINY_NET = {"nf": 4, "depth": 2}
SDE = {"T": 10, "max_sigma": 30.0, "schedule": "cosine", "eps": 0.005}


def run_cli(*args, cwd=None):
    env = dict(os.environ, STRDIFFUSION_LOG="WARNING")
    return subprocess.run([sys.executable, "-m", "strdiffusion", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def assert_user_error(res, *needles):
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def leftovers(folder: Path):
    return [p for p in folder.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def image_folder(tmp_path, writer):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(8):
        Image.fromarray(np.roll(RGB, i, axis=0)).save(root / f"ok{i}.png")
    writer(root)
    return root


BAD_FILES = {
    "truncated_jpeg": lambda root: (root / "cut.jpg").write_bytes(_jpeg_bytes()[: len(_jpeg_bytes()) // 3]),
    "text_named_png": lambda root: (root / "note.png").write_text("not an image at all"),
}


def _jpeg_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_input_undecodable_file(tmp_path, case):
    root = image_folder(tmp_path, BAD_FILES[case])
    bad = next(p for p in root.iterdir() if not p.name.startswith("ok"))
    out = tmp_path / "out"
    res = run_cli("data", "--source", "folder", "--path", root, "--size", 32, "--test-fraction", 0.5, "--out", out)
    assert_user_error(res, bad.name, "skip_bad_files")
    assert not out.exists() and not leftovers(tmp_path)
    # the documented skip: listed in the log and the manifest
    res = run_cli("data", "--source", "folder", "--path", root, "--size", 32, "--test-fraction", 0.5, "--out", out,
                  "--skip-bad-files")
    assert res.returncode == 0, res.stderr
    manifest = (out / "manifest.csv").read_text()
    assert bad.name in manifest and "undecodable" in manifest and bad.name in res.stderr


MODES = {
    "grayscale": lambda: Image.fromarray(RGB[..., 0]),
    "rgba": lambda: Image.fromarray(np.dstack([RGB, np.full(RGB.shape[:2], 90, np.uint8)])),
    "palette": lambda: Image.fromarray(RGB).convert("P"),
    "16bit": lambda: Image.fromarray(RGB[..., 1].astype(np.uint16) * 257),
    "cmyk": lambda: Image.fromarray(RGB).convert("CMYK"),
    "smaller_than_size": lambda: Image.fromarray(RGB[:12, :20]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bad_input_image_modes_convert_to_rgb(tmp_path, mode):
    ext = "jpg" if mode == "cmyk" else "png"
    root = image_folder(tmp_path, lambda r: MODES[mode]().save(r / f"special.{ext}"))
    out = tmp_path / "out"
    res = run_cli("data", "--source", "folder", "--path", root, "--size", 32, "--test-fraction", 0.5, "--out", out)
    assert res.returncode == 0, res.stderr
    special = next(out.rglob("special.png"))
    img = np.asarray(Image.open(special))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 0


@pytest.mark.parametrize("case", ["empty", "missing"])
def test_bad_input_data_folder(tmp_path, case):
    if case == "empty":
        (tmp_path / "imgs").mkdir()
    res = run_cli("data", "--source", "folder", "--path", tmp_path / "imgs", "--size", 32, "--out", tmp_path / "out")
    assert_user_error(res, str(tmp_path / "imgs"), "'path'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("size", [0, -8])
def test_bad_input_size(tmp_path, size):
    res = run_cli("data", "--size", size, "--out", tmp_path / "out")
    assert_user_error(res, "image_size")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bins", ["0.5:1.5", "-0.1:0.2", "0.4:0.2"])
def test_bad_input_hole_ratio_bin(tmp_path, bins):
    res = run_cli("masks", "generate", "--protocol", "lama_medium", "--size", 32, f"--bins={bins}", "--count", 2,
                  "--seed", 0, "--out", tmp_path / "m")
    assert_user_error(res, bins.split(":")[1])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("edit, key", [
    ({"datasets": {"builtin": {"n_tset": 3}}}, "datasets.builtin.n_tset"),
    ({"sampling": {"jumpp": 2}}, "sampling.jumpp"),
    ({"image_size": "big"}, "image_size"),
    ({"image_size": 0}, "image_size"),
    ({"datasets": {"builtin": {"masks": {"bins": [[0.2, 1.2]]}}}}, "bins"),
])
def test_bad_input_config_key(tmp_path, repo_root, edit, key):
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(edit))
    res = run_cli("check-config", repo_root / "config" / "config.yaml", tmp_path / "override.yaml")
    assert_user_error(res, key)


def _pair(tmp_path, mask):
    Image.fromarray(RGB).save(tmp_path / "img.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "img.png", tmp_path / "mask.png"


def test_bad_input_mask_of_another_size(tmp_path):
    img, mask = _pair(tmp_path, np.zeros((20, 20), np.uint8))
    res = run_cli("inpaint", "--method", "telea", "--image", img, "--mask", mask, "--out", tmp_path / "o.png")
    assert_user_error(res, "mask.png", "20x20", "48x40")
    assert not (tmp_path / "o.png").exists()


def test_bad_input_mask_all_known_copies_the_image(tmp_path):
    img, mask = _pair(tmp_path, np.zeros(RGB.shape[:2], np.uint8))
    res = run_cli("inpaint", "--method", "telea", "--image", img, "--mask", mask, "--out", tmp_path / "o.png")
    assert res.returncode == 0 and "no hole" in res.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), RGB)


def test_bad_input_mask_all_hole_is_warned(tmp_path):
    img, mask = _pair(tmp_path, np.full(RGB.shape[:2], 255, np.uint8))
    res = run_cli("inpaint", "--method", "telea", "--image", img, "--mask", mask, "--out", tmp_path / "o.png")
    assert res.returncode == 0 and "no known pixel" in res.stderr
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == RGB.shape


def _checkpoints(folder: Path, sde=SDE, **changes):
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for kind, kwargs in (("structure", TINY_NET), ("texture", TINY_NET), ("critic", {"ngf": 4})):
        save_checkpoint(folder / f"{kind}.pt", build_network(kind, **kwargs), kind, kwargs, sde)
    return folder


def _inpaint_with(tmp_path, ckpt_dir, *extra):
    img, mask = _pair(tmp_path, np.pad(np.full((8, 8), 255, np.uint8), ((16, 16), (20, 20))))
    return run_cli("inpaint", "--image", img, "--mask", mask, "--checkpoints", ckpt_dir, "--out", tmp_path / "o.png",
                   "--device", "cpu", *extra)


def test_bad_input_checkpoint_wrong_T(tmp_path):
    res = _inpaint_with(tmp_path, _checkpoints(tmp_path / "ck"), "--T", 100)
    assert_user_error(res, "T=10", "T=100")
    assert not (tmp_path / "o.png").exists()


def test_bad_input_checkpoint_wrong_architecture(tmp_path):
    ck = _checkpoints(tmp_path / "ck")
    state = build_network("texture", nf=8, depth=2).state_dict()  # a bare state dict of another width
    torch.save(state, ck / "texture.pt")
    res = _inpaint_with(tmp_path, ck, "--T", 10)
    assert_user_error(res, "texture.pt")
    assert not (tmp_path / "o.png").exists()


def test_bad_input_checkpoint_missing_keys(tmp_path):
    ck = _checkpoints(tmp_path / "ck")
    payload = torch.load(ck / "structure.pt", weights_only=True)
    dropped = sorted(payload["state_dict"])[0]
    del payload["state_dict"][dropped]
    torch.save(payload, ck / "structure.pt")
    res = _inpaint_with(tmp_path, ck, "--T", 10)
    assert_user_error(res, "structure.pt", dropped)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_bad_input_non_tensor_pickle(tmp_path):
    ck = _checkpoints(tmp_path / "ck")
    with open(ck / "critic.pt", "wb") as fh:
        pickle.dump({"state_dict": _Evil()}, fh)
    res = _inpaint_with(tmp_path, ck, "--T", 10)
    assert_user_error(res, "critic.pt")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_bad_input_in_a_workflow_job_names_the_config_key(tmp_path):
    """The workflow renders its jobs' options from the config, so there a bad value is named by its config key;
    typed on the command line, by its option."""
    argv = [sys.executable, "-m", "strdiffusion", "train", "--net", "irsde", "--images", "i", "--structure", "s",
            "--masks", "m", "--out", "o.pt", "--state-dir", "st", "--iterations", "10", "--milestones", "1.5"]
    shell = {k: v for k, v in os.environ.items() if k != "STRDIFFUSION_WORKFLOW_JOB"}
    typed = subprocess.run(argv, cwd=tmp_path, env=shell, capture_output=True, text=True, timeout=120)
    env = dict(shell, STRDIFFUSION_WORKFLOW_JOB="1")
    job = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert typed.returncode == job.returncode == 2
    assert typed.stderr.startswith("error: --milestones are fractions of --iterations in (0, 1), got 1.5")
    assert job.stderr.startswith("error: config key 'train.lr_milestones' (--milestones) are fractions of config key "
                                 "'train.iterations' (--iterations) in (0, 1), got 1.5")
    assert len(job.stderr.strip().splitlines()) == 1


def test_bad_input_a_failed_job_says_why_on_the_drivers_console(tmp_path):
    """A job that stops on a user error: Snakemake's console names only its log; the workflow adds the log's
    one-line error (`strdiffusion: <log>: error: ...`), here a folder data set with fewer test images than n_test."""
    import shutil

    root = Path(__file__).resolve().parents[2]
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(root / "Snakefile", work / "Snakefile")
    for item in ("workflow", "config"):
        shutil.copytree(root / item, work / item)
    photos = work / "my_photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(np.roll(RGB, i, axis=1)).save(photos / f"p{i}.png")
    (work / "mine.yaml").write_text(yaml.safe_dump({"run_datasets": ["mine"], "datasets": {"mine": {
        "source": "folder", "path": "my_photos", "n_test": 50,
        "masks": {"protocol": "lama_medium", "bins": [[0.1, 0.2]], "per_bin": 4}}}}))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    res = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "results/mine/data/manifest.csv",
                          "--cores", "1", "--configfile", "mine.yaml"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1
    said = [line for line in res.stderr.splitlines() if line.startswith("strdiffusion: ")]
    assert len(said) == 1 and said[0].startswith("strdiffusion: logs/mine/prepare_data.log: error: my_photos: the "
                                                 "test split has "), res.stderr[-3000:]
    assert "but n_test is 50" in said[0] and not (work / "results/mine/data").exists()


def test_bad_input_failed_job_lines_come_from_each_failed_jobs_log(tmp_path):
    from strdiffusion.runtime.environment import failed_job_errors

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/a.log").write_text("INFO start\nerror: data/x.png: cannot decode; replace the file\n\n")
    (tmp_path / "logs/b.log").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n")
    (tmp_path / "logs/ok.log").write_text("error: not this one: the job succeeded\n")
    run = tmp_path / "run.snakemake.log"
    run.write_text("rule a:\n    log: logs/ok.log\n\nError in rule a:\n    jobid: 1\n    log: logs/a.log (check log "
                   "file(s) for error details)\n\nError in rule b:\n    log: logs/b.log, logs/missing.log (check log "
                   "file(s) for error details)\n    shell: ...\n")
    assert failed_job_errors([str(run)], tmp_path) == [
        "logs/a.log: error: data/x.png: cannot decode; replace the file", "logs/b.log: RuntimeError: CUDA out of memory"]
    assert failed_job_errors(str(tmp_path / "absent.log"), tmp_path) == []
