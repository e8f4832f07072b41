"""Shared fixtures: small real image tasks from scikit-learn's digits, and one run of the
digits run (config/digits.yaml shrunk) for every test that only reads what the workflow
wrote."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from piggyback.data.digits import write_digits_task


@pytest.fixture(autouse=True)
def _few_threads():
    """Two threads, or one per worker where pytest-xdist runs two workers on the two
    cores: four spinning OpenMP threads on two cores made every worker's step wait."""
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


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
def digits_run(tmp_path_factory):
    """The digits setting shrunk (tests/test_workflow.py) run once, with what Snakemake printed: the
    end-to-end test and the report's tests read the same outputs, and each run costs
    minutes of training. A reader that changes a file puts it back as it was."""
    from test_workflow import digits_run_config, snakemake

    workdir = tmp_path_factory.mktemp("digits_run")
    config = digits_run_config(workdir)
    run = snakemake("--cores", "2", "--configfile", str(config), workdir=workdir)
    return SimpleNamespace(
        workdir=workdir,
        config=config,
        results=workdir / "results" / "digits",
        output=run.stdout + run.stderr,
    )


# With `pytest -n 2 --dist loadscope --no-loadscope-reorder` (make test), a module's tests
# run on one worker, so that its module-scoped fixtures are built once; the modules that
# read the digits run share one worker, so that it runs once and no reader's edit (put
# back afterwards) is seen by another. The units are handed out in this order, longest
# first, so that no long one starts last and ends the run alone: serial seconds on 2
# cores, 2026-12-06: the digits run and its readers 198, SLURM 127, then 69 down to 5.
# (xdist's own reordering, by number of tests, would start the one-test SLURM module
# last; --no-loadscope-reorder keeps this order.)
DIGITS_READERS = ("tests/test_report.py", "tests/test_workflow.py")
LONGEST = (
    "digits_run",
    "test_slurm.py",
    "test_learning.py",
    "test_workflow_released.py",
    "test_reliability.py",
    "test_packnet.py",
    "test_training.py",
    "test_workflow_data.py",
    "test_released.py",
    "test_gpu_check.py",
    "test_folders.py",
    "test_packing_entropy.py",
    "test_export.py",
    "test_fastdata.py",
    "test_modern.py",
    "test_zoo.py",
    "test_predict.py",
    "test_bench.py",
    "test_workflow_usage.py",
    "test_fashion_mnist.py",
    "test_masks.py",
    "test_packing.py",
    "test_crops.py",
    "test_tables.py",
    "test_package_weights.py",
    "test_speed.py",
)


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope(nodeid: str) -> str:
    return "digits_run" if _module(nodeid) in DIGITS_READERS else _module(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndTheDigitsRun(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    return ModulesAndTheDigitsRun(config, log)


def pytest_collection_modifyitems(items):
    unlisted = {
        _module(item.nodeid)
        for item in items
        if "digits_run" in item.fixturenames and _module(item.nodeid) not in DIGITS_READERS
    }
    if unlisted:
        raise pytest.UsageError(
            f"{', '.join(sorted(unlisted))} read the digits run: add them to DIGITS_READERS in "
            "tests/conftest.py, so that they run on the worker that runs it"
        )

    def rank(item) -> int:
        scope = _scope(item.nodeid)
        return next((i for i, name in enumerate(LONGEST) if scope.endswith(name)), len(LONGEST))

    items.sort(key=rank)
