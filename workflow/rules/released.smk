"""The authors' released masks (config `released:`): each arch's file, put in the downloads
folder by hand, is verified and imported as exactly the packed file that `evaluate`
reads, so evaluation and the table follow as for trained tasks and nothing is trained
(docs/released-masks.md)."""


localrules:
    verify_released,


ruleorder: import_released > pack


rule verify_released:
    """Check, on the submitting host, that a released file is in place (and is the file
    its sha256 says); a missing one stops the run, naming it and the Box folder."""
    output:
        f"{DOWNLOADS}/{{name}}.verified",
    log:
        f"{RESULTS}/logs/verify_released/{{name}}.log",
    wildcard_constraints:
        name=alternatives(entry["file"] for entry in RELEASED.values()),
    params:
        python=PYTHON,
        script=RELEASED_SCRIPTS["verify_released"],
        path=lambda wildcards: f"{DOWNLOADS}/{wildcards.name}",
        sha256=released_sha256_flag,
    shell:
        "{params.python} {params.script} {params.path} {params.sha256} --done {output} "
        "2>&1 | tee {log}"


rule import_released:
    """An arch's released masks and heads as its packed file, keyed by torchvision
    weight names, over the same backbone weights `evaluate` is given."""
    input:
        verified=released_marker,
        released=released_if_present,
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        packed=packed_file("{arch}", "{series}", "{run}"),
        stats=f"{RESULTS}/packed/{{arch}}/{{series}}/run{{run}}.stats.tsv",
    log:
        f"{RESULTS}/logs/import_released/{{arch}}/{{series}}/run{{run}}.log",
    wildcard_constraints:
        arch=alternatives(RELEASED),
        series=alternatives(released_methods()),
    threads: compute("pack", "threads")
    resources:
        mem_mb=compute("pack", "mem_mb"),
        runtime=compute("pack", "runtime"),
    params:
        python=PYTHON,
        script=RELEASED_SCRIPTS["import_released"],
        path=lambda wildcards: released_file(wildcards.arch),
        kind=lambda wildcards: RELEASED[wildcards.arch]["kind"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        datasets=DATASETS,
        encoding=PACK_ENCODING,
    shell:
        "{params.python} {params.script} {params.path} --kind {params.kind} {params.arch} "
        "--method {wildcards.series} --datasets {params.datasets} --encoding {params.encoding} "
        "--out {output.packed} --stats {output.stats} > {log} 2>&1"
