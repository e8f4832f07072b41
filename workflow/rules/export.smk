rule export:
    """Every task of every packed file as a plain torchvision model (not part of `all`:
    `snakemake export`)."""
    input:
        export_outputs(),


rule export_task:
    """One task of a packed file as a plain torchvision model: the weights with its mask
    (or method's change) multiplied in and its head in the builder's slot, and the
    builder, classes, preprocessing and source digests beside them."""
    input:
        packed=packed_file("{arch}", "{series}", "{run}"),
        weights=lambda wildcards: weights_file(wildcards.arch),
        class_data=export_class_data,
    output:
        model=exported("{arch}", "{series}", "{run}", "{dataset}", "model.safetensors"),
        config=exported("{arch}", "{series}", "{run}", "{dataset}", "config.json"),
    log:
        f"{RESULTS}/logs/export/{{arch}}/{{series}}/run{{run}}/{{dataset}}.log",
    threads: compute("pack", "threads")
    resources:
        mem_mb=compute("pack", "mem_mb"),
        runtime=compute("pack", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["export"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        flags=export_flags,
        out=lambda wildcards, output: Path(output.config).parent,
    shell:
        "{params.python} {params.script} {input.packed} {params.arch} "
        "--task {wildcards.dataset} {params.flags} --out {params.out} "
        "--threads {threads} > {log} 2>&1"
