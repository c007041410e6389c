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
    # Idle OpenMP threads sleep instead of spinning, as the stage commands set for their jobs: the workers and
    # their subprocesses share two cores, and spinning threads would burn the CPU the others wait for.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The longest chains of tests first (the SLURM clusters, mostly waiting; the tiny workflow's run, the resume test's
# run beside it, and the stand-in GPU folder), so that pytest-xdist's workers start them at once and the short
# tests fill the other workers around them; a stable sort, so each group keeps its order.
FIRST_GROUPS = ("slurm", "workflow", "resume", "gpu_slots")


def _groups(item) -> list[str]:
    return sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                   for m in item.iter_markers("xdist_group")})


KINDS = ("unit", "workflow", "slurm", "gpu", "shape")  # the folders under tests/, each its marker


def pytest_itemcollected(item):
    """Each test carries the marker of its folder, before ``-m`` selects."""
    kind = Path(str(item.path)).relative_to(Path(__file__).resolve().parent).parts[0]
    if kind in KINDS:
        item.add_marker(getattr(pytest.mark, kind))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    groups = {id(item): _groups(item) for item in items}
    items.sort(key=lambda item: min((FIRST_GROUPS.index(g) for g in groups[id(item)] if g in FIRST_GROUPS),
                                    default=len(FIRST_GROUPS)))
    # `--dist loadgroup` sends the tests of one xdist_group to one worker by a suffix on their node ids, which
    # pytest-xdist 3.8 writes where pytest 9 no longer reads it: without this, every worker would build each
    # group's shared fixture (a SLURM cluster, a workflow run) for itself. A no-op where the suffix took.
    if getattr(config.option, "loadgroup", False):
        from _pytest.nodeid import NodeId

        for item in items:
            names = groups[id(item)]
            if names and "@" not in item.nodeid.rsplit("]", 1)[-1]:
                item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")
