"""The authors' released mask files (config `released:`), their scripts, and the inputs
and flags of the rules in released.smk, which is included only with `released:`."""

from pathlib import Path

from piggyback.methods.registry import released_methods

RELEASED = config["released"]
RELEASED_SCRIPTS = {
    name: str(Path(workflow.basedir) / "src" / f"{name}.py")
    for name in ("verify_released", "import_released")
}


def released_file(arch):
    """The authors' mask file of an arch (config `released:`), in the downloads folder."""
    return f"{DOWNLOADS}/{config['released'][arch]['file']}"


def released_marker(wildcards):
    """Input: the marker `verify_released` writes once the arch's file is in place."""
    return f"{released_file(wildcards.arch)}.verified"


def released_if_present(wildcards):
    """Input: the file itself once it is there, so that replacing it imports it again
    (while it is missing, its marker's job stops the run with where to get it)."""
    path = released_file(wildcards.arch)
    return path if Path(path).is_file() else []


def released_sha256_flag(wildcards):
    """Param: `--sha256 HEX` where the config knows the released file's sha256."""
    entries = config["released"].values()
    sha256 = next(e["sha256"] for e in entries if e["file"] == wildcards.name)
    return f"--sha256 {sha256}" if sha256 else ""
