rule evaluate:
    """One task from a packed file, on the plain backbone with its mask baked in."""
    input:
        packed=f"{RESULTS}/packed/{{arch}}/{{method}}/{{ordering}}/run{{run}}.safetensors",
        data=prepared("{dataset}"),
        cache=cached("{dataset}"),
        weights=lambda wildcards: weights_file(wildcards.arch),
    output:
        f"{RESULTS}/eval/{{arch}}/{{method}}/{{ordering}}/run{{run}}/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{arch}}/{{method}}/{{ordering}}/run{{run}}/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{arch}}/{{method}}/{{ordering}}/run{{run}}/{{dataset}}.tsv"
    conda:
        "../../environment.yml"
    threads: compute("evaluate", "threads", 4)
    resources:
        gpu=compute("evaluate", "gpus", 1),
        mem_mb=compute("evaluate", "mem_mb", 8000),
        runtime=compute("evaluate", "runtime", 60),
    params:
        python=PYTHON,
        script=SCRIPTS["evaluate"],
        arch=lambda wildcards: arch_flags(wildcards.arch),
        data=lambda wildcards: data_flags(wildcards.dataset),
        cache=cache_flag,
        batch_size=config.get("eval_batch_size", 64),
    shell:
        "{params.python} {params.script} {input.packed} {params.arch} {params.data} "
        "{params.cache} --batch-size {params.batch_size} --out {output} --threads {threads} "
        "> {log} 2>&1"
