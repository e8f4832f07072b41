"""Shared fixtures: small real image tasks from scikit-learn's digits, and one run of the
shrunk demo for every test that only reads what the workflow wrote."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from piggyback.data.digits import write_digits_task


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory):
    """Digits 0-4, the 'source task' a backbone is first trained on."""
    root = tmp_path_factory.mktemp("digits_source")
    write_digits_task(root, [0, 1, 2, 3, 4], per_class=120)
    return root


@pytest.fixture(scope="session")
def digits_target(tmp_path_factory):
    """Digits 5-9, mirrored: a new task for the backbone."""
    root = tmp_path_factory.mktemp("digits_target")
    write_digits_task(root, [5, 6, 7, 8, 9], view="mirrored", per_class=60)
    return root


@pytest.fixture(scope="session")
def shrunk_demo(tmp_path_factory):
    """The shrunk demo (tests/test_workflow.py) run once, with what Snakemake printed: the
    end-to-end test and the report's tests read the same outputs, and each run costs
    minutes of training. A reader that changes a file puts it back as it was."""
    from test_workflow import shrunk_demo_config, snakemake

    workdir = tmp_path_factory.mktemp("shrunk_demo")
    config = shrunk_demo_config(workdir)
    run = snakemake("--cores", "2", "--configfile", str(config), workdir=workdir)
    return SimpleNamespace(
        workdir=workdir,
        config=config,
        results=workdir / "results" / "demo",
        output=run.stdout + run.stderr,
    )


# The longest units first, so that with several workers (make test: pytest -n 2) they
# start at once instead of one of them ending the run alone.
LONGEST = ("shrunk_demo", "test_slurm")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """For `pytest -n N --dist loadgroup`: a module's tests stay on one worker, so that
    its module-scoped fixtures are built once, and every module that reads the shrunk
    demo joins one group, so that the demo runs once. Before xdist reads the groups."""
    readers = {item.module.__name__ for item in items if "shrunk_demo" in item.fixturenames}

    def group(item) -> str:
        return "shrunk_demo" if item.module.__name__ in readers else item.module.__name__

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    rank = {name: index for index, name in enumerate(LONGEST)}
    items.sort(key=lambda item: rank.get(group(item), len(LONGEST)))
