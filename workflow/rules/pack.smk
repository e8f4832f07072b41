rule pack:
    """Every task of one ordering into one file: 1 bit per mask weight, or less with
    `pack_encoding: entropy`."""
    input:
        ordering_checkpoints,
    output:
        packed=f"{RESULTS}/packed/{{arch}}/{{method}}/{{ordering}}/run{{run}}.safetensors",
        stats=f"{RESULTS}/packed/{{arch}}/{{method}}/{{ordering}}/run{{run}}.stats.tsv",
    log:
        f"{RESULTS}/logs/pack/{{arch}}/{{method}}/{{ordering}}/run{{run}}.log",
    conda:
        "../../environment.yml"
    threads: compute("pack", "threads", 1)
    resources:
        mem_mb=compute("pack", "mem_mb", 8000),
        runtime=compute("pack", "runtime", 30),
    params:
        python=PYTHON,
        script=SCRIPTS["pack"],
        encoding=config.get("pack_encoding", "bits"),
    shell:
        "{params.python} {params.script} {input} --out {output.packed} --stats {output.stats} "
        "--encoding {params.encoding} > {log} 2>&1"
