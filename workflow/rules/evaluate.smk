rule evaluate:
    """Every task of a packed file on the plain backbone, the method's change applied
    (a mask baked in, PackNet's owners, a fine-tuned network); the backbone is built
    and the file read once."""
    input:
        packed=packed_file("{arch}", "{series}", "{run}"),
        data=series_data,
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        f"{RESULTS}/eval/{{arch}}/{{series}}/run{{run}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{arch}}/{{series}}/run{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{arch}}/{{series}}/run{{run}}.tsv"
    conda:
        "../../environment.yml"
    threads: compute("evaluate", "threads")
    resources:
        gpu=compute("evaluate", "gpus"),
        mem_mb=compute("evaluate", "mem_mb"),
        runtime=compute("evaluate", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["evaluate"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        tasks=tasks_json,
        image_size=IMAGE_SIZE,
        batch_size=EVAL_BATCH_SIZE,
        workers=WORKERS,
        numerics=numerics_flag(),
    shell:
        "{params.python} {params.script} {input.packed} {params.arch} "
        "--tasks-json {params.tasks:q} --image-size {params.image_size} "
        "--batch-size {params.batch_size} --workers {params.workers} --out {output} "
        "{params.numerics} --threads {threads} > {log} 2>&1"
