"""The Snakemake workflow: the job matrix, config validation, lint, and the demo."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, workdir: Path, check=True):
    """Run Snakemake on this workflow in ``workdir`` (a copy of config/ and nothing else)."""
    if not (workdir / "config").exists():
        shutil.copytree(ROOT / "config", workdir / "config")
    result = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def paper_config(tmp_path, **experiment):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["experiment"].update(experiment)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_dry_run_of_the_paper_lists_the_full_matrix(tmp_path):
    result = snakemake("-n", "--cores", "8", "--resources", "gpu=1", workdir=tmp_path)
    archs, datasets, orderings, methods, runs = 3, 5, 2, 1, 1
    assert job_counts(result.stdout) == {
        "download": datasets,
        "prepare": datasets,
        "fetch_weights": archs,
        "train": archs * datasets * methods * runs,  # shared by both orderings
        "pack": archs * methods * orderings * runs,
        "evaluate": archs * methods * orderings * runs * datasets,
        "aggregate": 1,
        "all": 1,
        "total": 5 + 5 + 3 + 15 + 6 + 30 + 2,
    }


def test_dry_run_with_every_method_and_three_runs(tmp_path):
    config = paper_config(
        tmp_path, methods=["piggyback", "piggyback_ternary", "classifier_only", "finetune"], runs=3
    )
    result = snakemake("-n", "--cores", "8", "--configfile", str(config), workdir=tmp_path)
    counts = job_counts(result.stdout)
    assert counts["train"] == 3 * 5 * 4 * 3
    assert counts["pack"] == 3 * 4 * 2 * 3
    assert counts["evaluate"] == 3 * 4 * 2 * 3 * 5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["experiment"].update(archs=["vgg16", "vgg17"]),
            "experiment.archs[1] is 'vgg17'",
        ),
        (lambda c: c["experiment"].update(methods=["packnet"]), "packnet"),
        (lambda c: c["orderings"].update(forward=["flowers", "imagenet"]), "orderings.forward[1]"),
        (lambda c: c["orderings"].update(forward=["flowers", "flowers"]), "lists 'flowers' twice"),
        (lambda c: c["methods"]["piggyback"].update(lr=-1e-4), "lr"),
        (lambda c: c["methods"]["piggyback"].update(lr_heaad=1e-4), "lr_heaad"),
        (lambda c: c["datasets"]["flowers"].update(classes="102"), "classes"),
        (lambda c: c.pop("orderings"), "orderings"),
    ],
)
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, change, message):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(
        "-n", "--cores", "1", "--configfile", str(path), workdir=tmp_path, check=False
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr


def test_environment_yml_names_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_names = {_name(d) for d in project["dependencies"]}
    conda = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda_names = {_name(d) for d in conda if isinstance(d, str)} - {"python", "pip"}
    assert {"pytorch" if n == "torch" else n for n in pip_names} == conda_names


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0].lower()


def shrunk_demo_config(tmp_path) -> Path:
    """config/demo.yaml cut to one arch, two methods and few images: the same stages
    and file layout, in about a minute."""
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["experiment"].update(archs=["densenet121"], methods=["piggyback", "finetune"])
    for entry in config["datasets"].values():
        entry["source"]["per_class"] = 12
    config["pretrain"]["hyperparameters"]["epochs"] = 2
    for method in config["methods"].values():
        method["epochs"] = 1
    path = tmp_path / "demo-small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_demo_runs_end_to_end(tmp_path):
    config = shrunk_demo_config(tmp_path)
    result = snakemake("--cores", "2", "--configfile", str(config), workdir=tmp_path)
    out = result.stdout + result.stderr
    assert "piggyback: mean error" in out, "the verdict is printed"
    table = (tmp_path / "results" / "demo" / "table.tsv").read_text().splitlines()
    header = table[0].split("\t")
    assert header[:6] == ["method", "arch", "dataset", "error", "std", "n"]
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in table[1:]]
    assert {(r["method"], r["dataset"]) for r in rows} == {
        (m, d)
        for m in ("piggyback", "finetune")
        for d in ("digits_5to9", "digits_5to9_mirrored", "digits_5to9_rotated")
    }
    assert all(r["n"] == "2" for r in rows), "each cell averages the two orderings"
    assert all(r["reference"] == "" for r in rows), "the demo has no reference numbers"
    markdown = (tmp_path / "results" / "demo" / "table.md").read_text()
    assert "## piggyback" in markdown and "no reference" in markdown
    packed = tmp_path / "results" / "demo" / "packed" / "densenet121" / "piggyback"
    assert {p.name for p in packed.iterdir()} == {"forward", "reverse"}
    again = snakemake("--cores", "2", "--configfile", str(config), workdir=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_snakemake_lint_and_snakefmt_are_clean(tmp_path):
    lint = snakemake("--lint", "--configfile", str(ROOT / "config" / "demo.yaml"), workdir=tmp_path)
    assert "Congratulations" in lint.stdout + lint.stderr or not (lint.stdout + lint.stderr).strip()
    snakefmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert snakefmt.returncode == 0, snakefmt.stderr
