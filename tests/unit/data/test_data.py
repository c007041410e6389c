import numpy as np
import pandas as pd
import pytest
from PIL import Image

from strdiffusion.data import prepare as data
from strdiffusion.io.errors import UserError
from strdiffusion.io.images import read_image_rgb


def test_builtin_is_deterministic_and_large_enough(tmp_path):
    m1 = data.prepare(tmp_path / "a", "builtin", 64, seed=0)
    m2 = data.prepare(tmp_path / "b", "builtin", 64, seed=0)
    assert m1.equals(m2)
    counts = m1.split.value_counts()
    assert counts["train"] >= 300 and counts["test"] >= 32
    for image_id in m1[m1.split == "test"].id[:5]:
        assert (tmp_path / "a/test" / f"{image_id}.png").read_bytes() == (tmp_path / "b/test" / f"{image_id}.png").read_bytes()
    img = read_image_rgb(tmp_path / "a/train" / f"{m1.id.iloc[0]}.png")
    assert img.shape == (64, 64, 3)


def test_builtin_split_has_no_test_pixel_in_training(tmp_path, monkeypatch):
    """Paint each photograph's test band magenta: test crops must be all magenta, train crops have none."""
    original = data.load_builtin

    def painted(name):
        img = original(name).copy()
        cut = int(round(img.shape[0] * (1 - data.TEST_BAND)))
        img[cut:] = (255, 0, 255)
        return img

    monkeypatch.setattr(data, "load_builtin", painted)
    for image_id, _, split, crop in data.builtin_crops(32):
        magenta = np.all(crop == (255, 0, 255), axis=-1)
        if split == "test":
            assert magenta.all(), image_id
        else:
            # resampling may blend at most the one boundary row; a leak would be whole rows
            assert magenta.sum() == 0, image_id


def _write_variants(folder):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((80, 96), 128, np.uint8)])).save(folder / "rgba.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "sub").mkdir()
    Image.fromarray(rgb[:20, :20]).save(folder / "sub" / "small.webp")  # smaller than the working size
    return rgb


def test_folder_source_converts_every_mode_to_rgb(tmp_path):
    _write_variants(tmp_path / "imgs")
    manifest = data.prepare(tmp_path / "out", "folder", 32, seed=3, path=str(tmp_path / "imgs"), test_fraction=0.5)
    assert len(manifest) == 7 and set(manifest.status) == {"ok"}
    for row in manifest.itertuples():
        img = np.asarray(Image.open(tmp_path / "out" / row.split / f"{row.id}.png"))
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    # the 16-bit image keeps its full range after conversion (not clipped to white)
    deep = np.asarray(Image.open(next((tmp_path / "out").rglob("deep16.png"))))
    assert 30 < deep.mean() < 225
    csv = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(csv.columns) == ["id", "source", "split", "width", "height", "status"]
    assert "sub__small" in set(csv.id)


def test_folder_split_is_deterministic_and_stable_when_files_are_added(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(40):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(root / f"{i:03d}.png")
    first = dict(data.folder_files(root, seed=0, test_fraction=0.25))
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "new.png")
    second = dict(data.folder_files(root, seed=0, test_fraction=0.25))
    assert all(second[k] == v for k, v in first.items())
    assert 3 <= sum(v == "test" for v in first.values()) <= 18
    assert dict(data.folder_files(root, seed=1, test_fraction=0.25)) != first


def test_bad_file_stops_with_its_name_or_is_skipped(tmp_path):
    root = tmp_path / "imgs"
    _write_variants(root)
    (root / "broken.png").write_text("this is not an image")
    with pytest.raises(UserError, match="broken.png"):
        data.prepare(tmp_path / "out", "folder", 32, seed=0, path=str(root), test_fraction=0.5)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    manifest = data.prepare(tmp_path / "out", "folder", 32, seed=0, path=str(root), test_fraction=0.5,
                            skip_bad_files=True)
    skipped = manifest[manifest.status != "ok"]
    assert list(skipped.source.map(lambda s: s.split("/")[-1])) == ["broken.png"]


def test_skipped_file_log_line_does_not_ask_for_skip_bad_files(tmp_path, caplog):
    root = tmp_path / "imgs"
    _write_variants(root)
    (root / "broken.png").write_text("this is not an image")
    with caplog.at_level("WARNING", logger="strdiffusion.data.prepare"):
        data.prepare(tmp_path / "out", "folder", 32, seed=0, path=str(root), test_fraction=0.5, skip_bad_files=True)
    lines = [r.getMessage() for r in caplog.records if "broken.png" in r.getMessage()]
    assert len(lines) == 1 and "cannot decode image" in lines[0]
    assert "set skip_bad_files: true" not in lines[0] and "undecodable" in lines[0]


def test_empty_or_missing_folder_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        data.prepare(tmp_path / "o", "folder", 32, 0, path=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not found"):
        data.prepare(tmp_path / "o", "folder", 32, 0, path=str(tmp_path / "missing"))


def test_file_list_cannot_escape_the_data_folder(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "outside.png")
    (tmp_path / "test.txt").write_text("../outside.png\n")
    with pytest.raises(UserError, match="outside the data folder"):
        data.folder_files(root, 0, 0.1, test_list=str(tmp_path / "test.txt"))


def test_fit_to_size_policies():
    img = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    for policy in ("center_crop", "resize", "random_crop"):
        out = data.fit_to_size(img, 32, policy, np.random.default_rng(0))
        assert out.shape == (32, 32, 3)
    small = data.fit_to_size(img[:10, :10], 32, "center_crop")
    assert small.shape == (32, 32, 3)


def test_separate_test_folder(tmp_path):
    for sub, n in (("train", 3), ("eval", 2)):
        (tmp_path / sub).mkdir()
        for i in range(n):
            Image.fromarray(np.full((20, 20, 3), i * 40, np.uint8)).save(tmp_path / sub / f"{i}.png")
    manifest = data.prepare(tmp_path / "out", "folder", 16, 0, path=str(tmp_path / "train"),
                            test_path=str(tmp_path / "eval"))
    assert manifest.split.value_counts().to_dict() == {"train": 3, "test": 2}
    assert all(not i.startswith(".") for i in manifest.id)


def test_n_test_with_fewer_test_images_is_one_line_error_at_the_data_stage(tmp_path, capsys):
    """40 photos and the default test_fraction 0.1 give a test split smaller than n_test 8: the data stage stops with
    both counts and the keys to change, and writes nothing; n_test within the split passes."""
    from strdiffusion.cli import main as cli

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(photos / f"IMG_{i:04d}.png")
    n = sum(split == "test" for _, split in data.folder_files(photos, 0, 0.1))
    assert 0 < n < 8
    out = tmp_path / "data"
    argv = ["data", "--out", str(out), "--source", "folder", "--path", str(photos), "--size", "32"]
    assert cli([*argv, "--n-test", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    images = f"{n} image{'' if n == 1 else 's'}"
    assert err == [f"error: {photos}: the test split has {images} but n_test is 8; set the data set's n_test key to "
                   f"{n} or less, or give it more test images (test_fraction, 0.1 now; test_path; test_list)"]
    assert not out.exists() and not list(tmp_path.glob(".data*"))
    assert cli([*argv, "--n-test", str(n)]) == 0
    assert (pd.read_csv(out / "manifest.csv").split == "test").sum() == n


def test_n_test_fewer_check_reads_the_config_of_folder_data_sets_only(repo_root):
    """A folder data set's data job carries its n_test; the builtin default's command line (and so its run) does
    not change."""
    import yaml

    from strdiffusion.settings.config import validate
    from strdiffusion.settings.jobs import job_options

    config = validate(yaml.safe_load((repo_root / "config" / "config.yaml").read_text()))
    assert "--n-test" not in job_options("data", config, dataset="builtin")
    mine = {**config["datasets"]["builtin"], "source": "folder", "path": "my_photos", "n_test": 8}
    assert "--n-test 8" in job_options("data", {**config, "datasets": {"mine": mine}}, dataset="mine")
