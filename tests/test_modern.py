"""config/modern.yaml, layered over the paper's: the paper's comparison on ViT-B/16,
ConvNeXt-T and EfficientNet-B0, their transforms following their weights."""

from __future__ import annotations

import re

import yaml
from test_workflow import ROOT, distinct_commands, expected_jobs, job_counts, snakemake

MODERN = ("--configfile", "config/config.yaml", "config/modern.yaml")
WEIGHTS = {
    "vit_b_16": "vit_b_16.IMAGENET1K_V1",
    "convnext_tiny": "convnext_tiny.IMAGENET1K_V1",
    "efficientnet_b0": "efficientnet_b0.IMAGENET1K_V1",
}


def test_dry_run_lists_the_modern_comparison_without_duplicates(tmp_path):
    result = snakemake("-n", "-p", "--cores", "8", *MODERN, workdir=tmp_path)
    assert job_counts(result.stdout) == expected_jobs(3, 5, 2, 3, 1, 1)
    assert "results/modern/table.md" in result.stdout
    for script in ("train.py", "pack.py", "evaluate.py"):
        jobs, distinct = distinct_commands(result.stdout, script)
        assert jobs == distinct, f"{jobs - distinct} {script} jobs repeat another's work"
    trains = [line for line in result.stdout.splitlines() if "src/train.py " in line]
    assert len(trains) == 75 + 3  # the tasks, and PackNet's starts (no data: no transforms)
    for line in trains:
        if "--start" in line:
            continue
        arch = re.search(r"--arch (\w+)", line)[1]
        assert f"--weights-transforms {WEIGHTS[arch]}" in line, line
    evaluations = [line for line in result.stdout.splitlines() if "src/evaluate.py " in line]
    assert all(
        f'"weights_transforms": "{WEIGHTS["convnext_tiny"]}"' in line
        for line in evaluations
        if "--arch convnext_tiny" in line
    )


def test_the_cached_pipeline_refuses_a_bicubic_arch_before_any_job(tmp_path):
    cached = tmp_path / "cached.yaml"
    cached.write_text(yaml.safe_dump({"compute": {"data_pipeline": "cached"}}))
    result = snakemake("-n", "--cores", "8", *MODERN, str(cached), workdir=tmp_path, check=False)
    assert result.returncode != 0
    assert "archs.efficientnet_b0 resizes with bicubic" in result.stdout + result.stderr


def test_bilinear_archs_read_caches_resized_as_their_weights_were_trained(tmp_path):
    overlay = {"compute": {"data_pipeline": "cached"}, "experiment": {"archs": ["convnext_tiny"]}}
    cached = tmp_path / "cached.yaml"
    cached.write_text(yaml.safe_dump(overlay))
    result = snakemake("-n", "-p", "--cores", "8", *MODERN, str(cached), workdir=tmp_path)
    assert job_counts(result.stdout)["cache_for_weights"] == 5
    caches = re.findall(r"src/cache.py .*--out (\S+) --weights-transforms (\S+)", result.stdout)
    assert {(out.split("/")[-1], weights) for out, weights in caches} == {
        (f"cache-224-{WEIGHTS['convnext_tiny']}.safetensors", WEIGHTS["convnext_tiny"])
    }
    tasks = [line for line in result.stdout.splitlines() if "src/train.py --arch" in line]
    assert len(tasks) == 25
    assert all(f"-{WEIGHTS['convnext_tiny']}.safetensors" in line for line in tasks)


def test_an_arch_following_weights_needs_torchvision_weights(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "modern.yaml").read_text())
    config["archs"]["vit_b_16"]["weights"] = "weights/vit.pth"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(
        "-n",
        "--cores",
        "1",
        "--configfile",
        "config/config.yaml",
        str(bad),
        workdir=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    assert "archs.vit_b_16.transforms is 'weights'" in result.stdout + result.stderr
