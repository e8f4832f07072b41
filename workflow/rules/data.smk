localrules:
    download,
    fetch_weights,


rule download:
    """Fetch and verify a dataset's archives (or check the manual ones are in place);
    runs on the submitting host, so compute nodes never need the internet."""
    output:
        f"{DOWNLOADS}/{{dataset}}.downloaded",
    params:
        source=source_json,
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    conda:
        "../../environment.yml"
    shell:
        "{PYTHON} {SCRIPTS[download]} --dataset {wildcards.dataset} "
        "--source-json {params.source:q} --downloads {DOWNLOADS} --done {output} "
        "> {log} 2>&1"


rule prepare:
    """Unpack (and crop, split) a dataset into train/<class>/ and test/<class>/."""
    input:
        f"{DOWNLOADS}/{{dataset}}.downloaded",
    output:
        prepared("{dataset}"),
    params:
        source=source_json,
        classes=lambda wildcards: dataset_entry(wildcards.dataset)["classes"],
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    conda:
        "../../environment.yml"
    shell:
        "{PYTHON} {SCRIPTS[prepare]} --dataset {wildcards.dataset} "
        "--source-json {params.source:q} --downloads {DOWNLOADS} "
        "--classes {params.classes} --out {DATA}/{wildcards.dataset} > {log} 2>&1"


rule fetch_weights:
    """Fetch torchvision weights into the resources folder, sha256 verified."""
    output:
        f"{RESOURCES}/weights/{{builder}}.{{weights}}.pth",
    params:
        url=lambda wildcards: next(
            (
                f"--url {entry['weights_url']}"
                for entry in config["archs"].values()
                if entry["builder"] == wildcards.builder and "weights_url" in entry
            ),
            "",
        ),
    log:
        f"{RESULTS}/logs/fetch_weights/{{builder}}.{{weights}}.log",
    conda:
        "../../environment.yml"
    shell:
        "{PYTHON} {SCRIPTS[fetch_weights]} --builder {wildcards.builder} "
        "--weights {wildcards.weights} --out {output} {params.url} > {log} 2>&1"
