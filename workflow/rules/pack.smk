rule pack:
    """Every task of a series into one file: Piggyback at 1 bit per mask weight (or less
    with `pack_encoding: entropy`), PackNet's network with each weight's owner."""
    input:
        series_checkpoints,
    output:
        packed=packed_file("{arch}", "{series}", "{run}"),
        stats=f"{RESULTS}/packed/{{arch}}/{{series}}/run{{run}}.stats.tsv",
    log:
        f"{RESULTS}/logs/pack/{{arch}}/{{series}}/run{{run}}.log",
    threads: compute("pack", "threads")
    resources:
        mem_mb=compute("pack", "mem_mb"),
        runtime=compute("pack", "runtime"),
    params:
        python=PYTHON,
        script=SCRIPTS["pack"],
        encoding=PACK_ENCODING,
        ordering=ordering_flag,
    shell:
        "{params.python} {params.script} {input} --out {output.packed} --stats {output.stats} "
        "--encoding {params.encoding} {params.ordering} > {log} 2>&1"
