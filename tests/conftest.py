import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, so metric backends find no pretrained weights (as on this machine)."""
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def pytest_configure(config):
    # Tests are CPU-only and must not depend on a user's thread settings.
    os.environ.setdefault("OMP_NUM_THREADS", "2")
