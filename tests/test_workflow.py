"""The Snakemake workflow: the job matrix, config validation, lint, and the digits setting
end to end."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from piggyback.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
# Without the local profile (profiles/default): a test names every flag it relies on.
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--workflow-profile", "none"]


def lint_workflow(*args, workdir: Path):
    """`snakemake --lint` as `make lint` runs it (tools/lint_workflow.py), in ``workdir``."""
    if not (workdir / "config").exists():
        shutil.copytree(ROOT / "config", workdir / "config")
    lint = [sys.executable, str(ROOT / "tools" / "lint_workflow.py"), "--workflow-profile", "none"]
    result = subprocess.run(
        [*lint, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"the lint failed:\n{result.stdout}\n{result.stderr}"
    return result


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


PLOTS = (
    "reference",
    "paired_differences",
    "error_curves",
    "mask_density",
    "ownership",
    "storage",
    "runtimes",
)


def expected_jobs(archs, datasets, orderings, independent, sequential, runs) -> dict[str, int]:
    """Independent methods train each task once per arch and run, and pack and evaluate
    them as one file; a sequential method does so once per ordering, after one start
    per arch and run."""
    series = independent + sequential * orderings
    counts = {
        "download": datasets,
        "prepare": datasets,
        "fetch_weights": archs,
        "start": archs * sequential * runs,
        "train": archs * series * datasets * runs,
        "pack": archs * series * runs,
        "evaluate": archs * series * runs,  # one job per packed file, every task in it
        "aggregate": 1,
        **{f"plot_{figure}": 1 for figure in PLOTS},
        "all": 1,
    }
    counts = {rule: count for rule, count in counts.items() if count}
    return {**counts, "total": sum(counts.values())}


def distinct_commands(output: str, script: str) -> tuple[int, int]:
    """How many jobs run ``script``, and how many distinct computations they are: the
    command with its output, log and state paths taken out."""
    commands = [line for line in output.splitlines() if f"src/{script} " in line]
    outputs = r"--(out|metrics|state-dir|stats) \S+|> \S+ 2>&1"
    return len(commands), len({re.sub(outputs, "", command) for command in commands})


def test_dry_run_of_the_paper_lists_the_whole_comparison_without_duplicates(tmp_path):
    result = snakemake("-n", "-p", "--cores", "8", "--resources", "gpu=1", workdir=tmp_path)
    assert job_counts(result.stdout) == expected_jobs(3, 5, 2, 3, 1, 1)
    for script in ("train.py", "pack.py", "evaluate.py"):
        jobs, distinct = distinct_commands(result.stdout, script)
        assert jobs == distinct, f"{jobs - distinct} {script} jobs repeat another's work"


def test_export_writes_every_task_of_every_packed_file_outside_the_default_target(tmp_path):
    demo = str(ROOT / "config" / "demo.yaml")
    result = snakemake("export", "-n", "-p", "--cores", "2", "--configfile", demo, workdir=tmp_path)
    exports = set(re.findall(r"export\.py (\S+) .*?--task (\S+) .*?--out (\S+)", result.stdout))
    config = yaml.safe_load(Path(demo).read_text())
    tasks = set(config["orderings"]["forward"])
    series = ["classifier_only", "finetune", "packnet/forward", "packnet/reverse", "piggyback"]
    assert exports == {
        (f"results/demo/packed/{arch}/{s}/run0.safetensors", task,
         f"results/demo/export/{arch}/{s}/run0/{task}")
        for arch in config["experiment"]["archs"] for s in series for task in tasks
    }  # fmt: skip
    default = snakemake("-n", "--cores", "2", "--configfile", demo, workdir=tmp_path)
    assert "export_task" not in default.stdout


def test_dry_run_with_every_method_and_three_runs(tmp_path):
    config = paper_config(tmp_path, methods=list(METHODS), runs=3)
    result = snakemake("-n", "--cores", "8", "--configfile", str(config), workdir=tmp_path)
    sequential = sum(entry.sequential for entry in METHODS.values())
    independent = len(METHODS) - sequential
    assert job_counts(result.stdout) == expected_jobs(3, 5, 2, independent, sequential, 3)


def test_piggyback_alone_is_one_overlay_away(tmp_path):
    """The README's command for Piggyback alone."""
    result = snakemake(
        "-n",
        "--cores",
        "8",
        "--configfile",
        "config/config.yaml",
        "config/piggyback-only.yaml",
        workdir=tmp_path,
    )
    assert job_counts(result.stdout) == expected_jobs(3, 5, 2, 1, 0, 1)
    assert "results/piggyback/table.md" in result.stdout


def test_a_packnet_chain_follows_its_ordering(tmp_path):
    """Task k of an ordering starts from task k-1's checkpoint, the first from the start;
    only the last is marked as such (not pruned)."""
    result = snakemake("-n", "-p", "--cores", "8", workdir=tmp_path)
    order = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["orderings"]["reverse"]
    commands = {
        re.search(r"--dataset (\w+)", line)[1]: line
        for line in result.stdout.splitlines()
        if "src/train.py" in line and "packnet/reverse/run0" in line and "--arch vgg16" in line
    }
    assert set(commands) == set(order)
    for position, dataset in enumerate(order):
        previous = re.search(r"--previous (\S+)", commands[dataset])[1]
        expected = (
            f"train/vgg16/packnet/reverse/run0/{order[position - 1]}.pt"
            if position
            else "start/vgg16/packnet/run0.pt"
        )
        assert previous.endswith(expected)
        assert ("--last-in-ordering" in commands[dataset]) == (dataset == order[-1])


def test_each_packnet_task_gets_its_positions_fraction_and_a_folder_is_read_where_it_is(
    tmp_path,
):
    """prune_fraction as a list: task k of each ordering is trained with its k-th value
    and the start with none of them; a `folder` dataset's jobs read the user's folder
    and check it against its prepared.json."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    fractions = [0.75, 0.6, 0.5, 0.4, -1]
    config["methods"]["packnet"]["prune_fraction"] = fractions
    folder = tmp_path / "datasets" / "flowers"
    config["datasets"]["flowers"]["source"] = {"route": "folder", "path": str(folder)}
    path = tmp_path / "lists.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "-p", "--cores", "8", "--configfile", str(path), workdir=tmp_path)
    lines = [line for line in result.stdout.splitlines() if "src/train.py" in line]
    for name in ("forward", "reverse"):
        for position, dataset in enumerate(config["orderings"][name]):
            (command,) = (
                line
                for line in lines
                if f"packnet/{name}/run0/{dataset}.pt --metrics" in line and "--arch vgg16" in line
            )
            assert f"--prune-fraction {fractions[position]} " in command, (name, dataset)
    starts = [line for line in lines if "src/train.py --start " in line]
    assert starts and all("--prune-fraction " not in line for line in starts)
    trained = [line for line in lines if "--dataset flowers" in line]
    assert trained and all(f"--data {folder} " in line for line in trained)
    assert all(re.search(r"--prepared \S*data/flowers/prepared\.json", line) for line in trained)
    evaluated = [line for line in result.stdout.splitlines() if "src/evaluate.py" in line]
    assert evaluated and all(f'"data": "{folder}"' in line for line in evaluated)
    assert all(
        re.search(r'"prepared": "\S*data/flowers/prepared\.json"', line) for line in evaluated
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c["experiment"].update(archs=["vgg16", "vgg17"]),
            "experiment.archs[1] is 'vgg17'",
        ),
        (lambda c: c["experiment"].update(methods=["packnett"]), "experiment.methods[0]"),
        (
            lambda c: c["methods"]["packnet"].update(start_dataset="imagenet"),
            "methods.packnet.start_dataset[0] is 'imagenet'",
        ),
        (lambda c: c["methods"]["packnet"].update(mask_init="1s"), "'mask_init' was unexpected"),
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


def digits_run_config(tmp_path) -> Path:
    """config/digits.yaml cut to DenseNet-121, Piggyback and a shorter PackNet: every
    stage (the pretrain stage and the source task's row too) and the file layout, in
    under two minutes, offline."""
    config = yaml.safe_load((ROOT / "config" / "digits.yaml").read_text())
    config["experiment"].update(archs=["densenet121"], methods=["piggyback", "packnet"])
    config["methods"]["packnet"]["epochs"] = 1
    path = tmp_path / "demo-small.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_the_digits_setting_runs_end_to_end(digits_run):
    config, results = digits_run.config, digits_run.results
    assert "piggyback: mean error" in digits_run.output, "the verdict is printed"
    table = (results / "table.tsv").read_text().splitlines()
    header = table[0].split("\t")
    assert header[:8] == ["method", "ordering", "arch", "dataset", "position", "error", "std", "n"]
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in table[1:]]
    tasks = ("digits_5to9", "digits_5to9_rotated", "digits_0to4")  # the last: the ImageNet row
    assert {(r["method"], r["ordering"], r["dataset"]) for r in rows} == {
        ("piggyback", "", d) for d in tasks
    } | {("packnet", o, d) for o in ("forward", "reverse") for d in tasks}
    trained = [r for r in rows if r["source_task"] == "False"]
    piggyback = [r for r in trained if r["method"] == "piggyback"]
    assert all(float(r["mask_density"]) < 1.0 for r in piggyback), "the masks never moved"
    assert all(float(r["error"]) < float(r["chance_error"]) - 30 for r in piggyback)
    assert all(r["n"] == "1" for r in rows), "one run: a cell is one evaluation"
    assert all(r["reference"] == "" for r in rows), "the digits setting has no reference numbers"
    markdown = (results / "table.md").read_text()
    assert "## Piggyback (piggyback)" in markdown and "no reference" in markdown
    assert "ordering reverse: digits_5to9_rotated → digits_5to9" in markdown
    assert "± 0.00" not in markdown
    packed = results / "packed" / "densenet121"
    assert {p.name for p in packed.iterdir()} >= {"piggyback", "packnet"}
    assert {p.name for p in (packed / "packnet").iterdir()} == {"forward", "reverse"}
    again = snakemake("--cores", "2", "--configfile", str(config), workdir=digits_run.workdir)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_snakemake_lint_and_snakefmt_are_clean(tmp_path):
    lint = lint_workflow("--configfile", str(ROOT / "config" / "demo.yaml"), workdir=tmp_path)
    assert "Congratulations" in lint.stdout + lint.stderr or not (lint.stdout + lint.stderr).strip()
    snakefmt = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert snakefmt.returncode == 0, snakefmt.stderr
