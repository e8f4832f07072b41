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
    threads: compute("train", "threads", 4)
    resources:
        gpu=compute("train", "gpus", 1),
        mem_mb=compute("train", "mem_mb", 16000),
        runtime=compute("train", "runtime", 720),
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


rule train:
    """One task, one method, one run: the best checkpoint by test top-1 and metrics.
    Resume state lives outside the outputs, so a killed job continues where it was."""
    input:
        data=prepared("{dataset}"),
        cache=cached("{dataset}"),
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        checkpoint=f"{RESULTS}/train/{{arch}}/{{method}}/run{{run}}/{{dataset}}.pt",
        metrics=f"{RESULTS}/train/{{arch}}/{{method}}/run{{run}}/{{dataset}}.metrics.tsv",
    log:
        f"{RESULTS}/logs/train/{{arch}}/{{method}}/run{{run}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{arch}}/{{method}}/run{{run}}/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    threads: compute("train", "threads", 4)
    resources:
        gpu=compute("train", "gpus", 1),
        mem_mb=compute("train", "mem_mb", 16000),
        runtime=compute("train", "runtime", 720),
    params:
        python=PYTHON,
        script=SCRIPTS["train"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        data=lambda wildcards: data_flags(wildcards.dataset),
        cache=cache_flag,
        classes=lambda wildcards: dataset_entry(wildcards.dataset)["classes"],
        method=lambda wildcards: method_flags(wildcards.method),
        state=f"{RESULTS}/state/train/{{arch}}/{{method}}/run{{run}}/{{dataset}}",
        resume_every=RESUME_EVERY,
    shell:
        "{params.python} {params.script} {params.arch} {params.method} {params.data} "
        "{params.cache} --classes {params.classes} --seed {wildcards.run} "
        "--out {output.checkpoint} --metrics {output.metrics} --state-dir {params.state} "
        "--resume-every {params.resume_every} --threads {threads} --no-progress "
        "> {log} 2>&1"
