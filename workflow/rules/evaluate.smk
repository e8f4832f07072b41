rule evaluate:
    """Every task of a packed file on the plain backbone, the method's change applied
    (a mask baked in, PackNet's owners, a fine-tuned network); the backbone is built
    and the file read once. Beside the totals, each test image's label and top-5
    classes, from the same pass (docs/statistics.md)."""
    input:
        packed=packed_file("{arch}", "{series}", "{run}"),
        data=series_data,
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        result=evaluation("{arch}", "{series}", "{run}"),
        images=evaluation("{arch}", "{series}", "{run}", "images.tsv.gz"),
    log:
        f"{RESULTS}/logs/evaluate/{{arch}}/{{series}}/run{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{arch}}/{{series}}/run{{run}}.tsv"
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
        "--batch-size {params.batch_size} --workers {params.workers} "
        "--out {output.result} --images {output.images} {params.numerics} "
        "--threads {threads} > {log} 2>&1"


rule evaluate_source:
    """The source task (`source_task: true`: ImageNet, the demo's pretraining set) on
    the backbone with its own head, once per arch: the table's ImageNet row for every
    method that keeps the backbone."""
    input:
        data=prepared(SOURCE_TASK) if SOURCE_TASK else [],
        cache=source_task_cache,
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        result=source_evaluation("{arch}", "backbone"),
        images=source_evaluation("{arch}", "backbone", "images.tsv.gz"),
    log:
        f"{RESULTS}/logs/evaluate_source/{{arch}}/backbone.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_source/{{arch}}/backbone.tsv"
    threads: compute("evaluate", "threads")
    resources:
        gpu=compute("evaluate", "gpus"),
        mem_mb=compute("evaluate", "mem_mb"),
        runtime=compute("evaluate", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["evaluate_source"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        data=source_task_flags,
        start="",
        numerics=numerics_flag(),
        batch_size=EVAL_BATCH_SIZE,
        workers=WORKERS,
    shell:
        "{params.python} {params.script} {params.arch} {params.data} {params.start} "
        "--batch-size {params.batch_size} --workers {params.workers} "
        "--out {output.result} --images {output.images} {params.numerics} "
        "--threads {threads} > {log} 2>&1"


use rule evaluate_source as evaluate_start with:
    """The source task on a sequential method's start, per run (PackNet: the pruned
    backbone, retrained on the source task if the config says so): that method's
    ImageNet row, since its later tasks never change the weights the source owns."""
    input:
        data=prepared(SOURCE_TASK) if SOURCE_TASK else [],
        cache=source_task_cache,
        weights=lambda wildcards: weights_file(wildcards.arch),
        start=start_checkpoint("{arch}", "{method}", "{run}"),
    output:
        result=source_evaluation("{arch}", "{method}/run{run}"),
        images=source_evaluation("{arch}", "{method}/run{run}", "images.tsv.gz"),
    log:
        f"{RESULTS}/logs/evaluate_source/{{arch}}/{{method}}/run{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_source/{{arch}}/{{method}}/run{{run}}.tsv"
    params:
        start=start_flag,
