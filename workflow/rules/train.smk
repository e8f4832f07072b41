rule train:
    """One task of a series (an independent method's, or one link of a sequential
    method's chain, which starts from the task before it): the best checkpoint by test
    top-1 and metrics. Resume state lives outside the outputs, so a killed job
    continues where it was."""
    input:
        data=prepared("{dataset}"),
        cache=train_cache,
        weights=lambda wildcards: weights_file(wildcards.arch),
        previous=previous_checkpoint,
    output:
        checkpoint=train_checkpoint("{arch}", "{series}", "{run}", "{dataset}"),
        metrics=f"{RESULTS}/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.metrics.tsv",
    log:
        f"{RESULTS}/logs/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.tsv"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["train"],
        job=train_job_flags,
        outputs=output_flags,
        state=f"{RESULTS}/state/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}",
        resume_every=RESUME_EVERY,
    shell:
        "{params.python} {params.script} {params.job} {params.outputs} "
        "--state-dir {params.state} --resume-every {params.resume_every} "
        "--threads {threads} --no-progress > {log} 2>&1"


use rule train as start with:
    """The state a sequential method's first task starts from, once per arch and run
    (PackNet: the backbone pruned by magnitude, retrained on the method's
    `start_dataset` if the config names one)."""
    input:
        weights=lambda wildcards: weights_file(wildcards.arch),
        data=start_data,
        cache=start_cache,
    output:
        checkpoint=start_checkpoint("{arch}", "{method}", "{run}"),
        metrics=f"{RESULTS}/start/{{arch}}/{{method}}/run{{run}}.metrics.tsv",
    log:
        f"{RESULTS}/logs/start/{{arch}}/{{method}}/run{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/start/{{arch}}/{{method}}/run{{run}}.tsv"
    params:
        job=start_job_flags,
        state=f"{RESULTS}/state/start/{{arch}}/{{method}}/run{{run}}",


use rule train as pretrain with:
    """Train an arch from random initialisation on the `pretrain:` dataset, for
    backbones that cannot be downloaded (the demo) or that a user brings."""
    input:
        data=prepared(config["pretrain"]["dataset"]) if "pretrain" in config else [],
        cache=cached(config["pretrain"]["dataset"]) if "pretrain" in config else [],
    output:
        weights=f"{RESULTS}/pretrain/{{arch}}.pth",
        checkpoint=f"{RESULTS}/pretrain/{{arch}}.pt",
        metrics=f"{RESULTS}/pretrain/{{arch}}.metrics.tsv",
    log:
        f"{RESULTS}/logs/pretrain/{{arch}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{arch}}.tsv"
    params:
        job=pretrain_job_flags,
        outputs=pretrain_output_flags,
        state=f"{RESULTS}/state/pretrain/{{arch}}",
