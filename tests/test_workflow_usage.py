"""How a user runs the workflow: the local profile that Snakemake applies by itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from test_workflow import ROOT


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
