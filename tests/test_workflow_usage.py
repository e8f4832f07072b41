"""How a user runs the workflow: the local profile that Snakemake applies by itself, the
README's rule graph, and the usage files that the Snakemake workflow catalog reads."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml
from test_workflow import ROOT, snakemake


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_the_local_profile_applies_unnamed_and_prints_a_failed_jobs_error(tmp_path, where):
    """The README's command, no profile named, without the data: the job's one-line error
    reaches the console, run from the checkout or from another folder."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--cores", "1", "downloads/flowers.downloaded"]
    if where == "checkout":
        cwd, command = ROOT, [*command, "--directory", str(tmp_path)]
    else:
        cwd = tmp_path
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert re.search(r"Using workflow specific profile \S*profiles/default for", output)
    assert "error: downloads/flowers.zip is missing: download 'flowers.zip'" in output


def mermaid_graph(text: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The rules and edges of a `--rulegraph mermaid-js` graph, by rule name (node
    numbers and the order of lines are not part of the graph)."""
    names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]$", text, re.MULTILINE))
    edges = re.findall(r"^\s*(id\d+) --> (id\d+)$", text, re.MULTILINE)
    return set(names.values()), {(names[source], names[target]) for source, target in edges}


def test_the_readme_shows_the_current_rule_graph(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```mermaid\n(.*?)^```$", readme, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, "the README has one mermaid block, the rule graph"
    graph = snakemake("--rulegraph", "mermaid-js", "--forceall", workdir=tmp_path).stdout
    rules, edges = mermaid_graph(graph)
    assert {"download", "train", "pack", "evaluate", "aggregate"} <= rules and edges
    assert mermaid_graph(blocks[0]) == (rules, edges), "out of date: run `make rulegraph`"


def test_config_readme_describes_every_config_file_and_top_level_key():
    readme = (ROOT / "config" / "README.md").read_text()
    files = sorted(p.name for p in (ROOT / "config").iterdir() if p.suffix in (".yaml", ".tsv"))
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert "workflow/schemas/config.schema.yaml" in readme
    assert [name for name in files if f"`{name}`" not in readme] == []
    assert [key for key in schema["properties"] if f"| `{key}` |" not in readme] == []


def test_the_catalog_file_has_the_keys_the_catalog_reads():
    usage = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}
    assert set(usage["software-stack-deployment"]) <= {"conda", "apptainer", "apptainer+conda"}


def test_the_slurm_profile_sends_every_gpu_job_and_only_those_to_the_gpu_partition(tmp_path):
    """A dry run through workflow/profiles/slurm of the digits setting (PackNet's start and the
    ImageNet rows included) with one GPU per GPU job: a rule missing from the profile's
    `set-resources` lands on the CPU partition asking for a GPU, which a cluster refuses
    or never schedules. tests/test_slurm.py runs the profile for real, where SLURM is."""
    gpus = tmp_path / "gpus.yaml"
    gpus.write_text(
        yaml.safe_dump({"compute": {stage: {"gpus": 1} for stage in ("train", "evaluate")}})
    )
    configs = [str(ROOT / "config" / "digits.yaml"), str(gpus)]
    output = snakemake(
        "-n", "--forceall", "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm"),
        "--configfile", *configs, workdir=tmp_path,
    ).stdout  # fmt: skip
    jobs = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", output, re.MULTILINE)
    placement = {}
    for rule, resources in jobs:
        partition = re.search(r"slurm_partition=(\w+)", resources)[1]
        gpu = re.search(r"\bgpu=(\d+)", resources)
        placement.setdefault(rule, set()).add((partition, int(gpu[1]) if gpu else 0))
    assert {"start", "train", "evaluate", "evaluate_source", "evaluate_start", "pack"} <= set(
        placement
    )
    wrong = {
        rule: p for rule, p in placement.items() if any((part == "gpu") != (n > 0) for part, n in p)
    }
    assert wrong == {}, "GPU jobs off the GPU partition, or CPU jobs on it"


def rule_blocks(workdir) -> dict[str, str]:
    """Every rule's text (rule and checkpoint), by name, from the workflow's files; a rule
    made in a loop (`rule:` with `name: f"<prefix>{...}"`) under each name that Snakemake
    lists with that prefix."""
    files = [ROOT / "Snakefile", *sorted((ROOT / "workflow").rglob("*.smk"))]
    files.append(ROOT / "workflow" / "Snakefile")
    blocks, made = {}, {}
    for path in files:
        parts = re.split(
            r"^ *(?:rule|checkpoint)(?: (\w+))?:$", path.read_text(), flags=re.MULTILINE
        )
        for name, text in zip(parts[1::2], parts[2::2], strict=True):
            if name:
                blocks[name] = text
            else:
                made[re.search(r'^ +name:\s+f"(\w+)\{', text, re.MULTILINE)[1]] = text
    listed = snakemake("--list-rules", workdir=workdir).stdout
    for name in re.findall(r"^(\w+)", listed, re.MULTILINE):
        for prefix, text in made.items():
            if name.startswith(prefix):
                blocks[name] = text
    return blocks


def test_no_rule_names_a_conda_environment_while_jobs_run_the_host_python(tmp_path):
    """A rule's `conda:` would tell `--sdm conda` users their job runs in that environment,
    but every job's shell runs `{params.python}`, the Python that runs Snakemake: such a
    directive would silently do nothing. The README and the catalog file say how the
    environment is provided instead."""
    blocks = rule_blocks(tmp_path)
    assert len(blocks) > 20
    host_python = {name for name, text in blocks.items() if "{params.python}" in text}
    with_conda = {name for name, text in blocks.items() if re.search(r"^\s+conda:", text, re.M)}
    assert host_python, "no rule runs {params.python}: the check would test nothing"
    assert not with_conda & host_python, f"rules with a conda: directive: {sorted(with_conda)}"
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    assert catalog["usage"]["software-stack-deployment"]["conda"] is False
