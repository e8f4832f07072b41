rule pretrain:
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
    conda:
        "../../environment.yml"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["train"],
        builder=lambda wildcards: config["archs"][wildcards.arch]["builder"],
        data=lambda wildcards: data_flags(config["pretrain"]["dataset"]),
        cache=cache_flag,
        hyperparameters=lambda wildcards: pretrain_flags(wildcards.arch),
        state=f"{RESULTS}/state/pretrain/{{arch}}",
        resume_every=RESUME_EVERY,
    shell:
        "{params.python} {params.script} --arch {wildcards.arch} --builder {params.builder} "
        "--weights random --method finetune {params.hyperparameters} {params.data} "
        "{params.cache} --seed 0 --out {output.checkpoint} --metrics {output.metrics} "
        "--export-backbone {output.weights} --state-dir {params.state} "
        "--resume-every {params.resume_every} --threads {threads} --no-progress "
        "> {log} 2>&1"


rule start:
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
    conda:
        "../../environment.yml"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["train"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        method=lambda wildcards: method_flags(wildcards.method),
        data=start_data_flags,
        cache=cache_flag,
        state=f"{RESULTS}/state/start/{{arch}}/{{method}}/run{{run}}",
        resume_every=RESUME_EVERY,
    shell:
        "{params.python} {params.script} --start {params.arch} {params.method} {params.data} "
        "{params.cache} --seed {wildcards.run} --out {output.checkpoint} "
        "--metrics {output.metrics} --state-dir {params.state} "
        "--resume-every {params.resume_every} --threads {threads} --no-progress "
        "> {log} 2>&1"


rule train:
    """One task of a series (an independent method's, or one link of a sequential
    method's chain, which starts from the task before it): the best checkpoint by test
    top-1 and metrics. Resume state lives outside the outputs, so a killed job
    continues where it was."""
    input:
        data=prepared("{dataset}"),
        cache=cached("{dataset}"),
        weights=lambda wildcards: weights_file(wildcards.arch),
        previous=previous_checkpoint,
    output:
        checkpoint=train_checkpoint("{arch}", "{series}", "{run}", "{dataset}"),
        metrics=f"{RESULTS}/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.metrics.tsv",
    log:
        f"{RESULTS}/logs/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    threads: compute("train", "threads")
    resources:
        gpu=compute("train", "gpus"),
        mem_mb=compute("train", "mem_mb"),
        runtime=compute("train", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["train"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        data=lambda wildcards: data_flags(wildcards.dataset),
        cache=cache_flag,
        classes=lambda wildcards: dataset_entry(wildcards.dataset)["classes"],
        method=lambda wildcards: method_flags(series_method(wildcards.series)),
        chain=chain_flags,
        state=f"{RESULTS}/state/train/{{arch}}/{{series}}/run{{run}}/{{dataset}}",
        resume_every=RESUME_EVERY,
    shell:
        "{params.python} {params.script} {params.arch} {params.method} {params.data} "
        "{params.cache} {params.chain} --classes {params.classes} --seed {wildcards.run} "
        "--out {output.checkpoint} --metrics {output.metrics} --state-dir {params.state} "
        "--resume-every {params.resume_every} --threads {threads} --no-progress "
        "> {log} 2>&1"
