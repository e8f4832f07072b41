rule aggregate:
    """The paper's table: every evaluation with its interval, the paired comparisons
    with Piggyback from the per-image files, the verdict against the reference
    numbers, and the storage row (from the files the storage figure reads)."""
    input:
        results=evaluation_outputs(),
        images=evaluation_outputs("images.tsv.gz"),
        reference=reference_inputs(),
        storage=record_files(storage_records()),
    output:
        markdown=report(
            f"{RESULTS}/table.md",
            caption="../report/table.rst",
            category="1. Results",
            labels={"result": "table of top-1 test errors"},
        ),
        tsv=f"{RESULTS}/table.tsv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    params:
        python=PYTHON,
        script=SCRIPTS["aggregate"],
        reference=reference_flags(),
        classes=classes_json(),
        archs=ARCHS,
        datasets=DATASETS,
        methods=METHODS,
        orderings=orderings_json(),
        storage=records_json(storage_records()),
    shell:
        "{params.python} {params.script} {input.results} {params.reference} "
        "--classes {params.classes:q} --archs {params.archs} --datasets {params.datasets} "
        "--methods {params.methods} --orderings {params.orderings:q} "
        "--storage-records {params.storage:q} --markdown {output.markdown} --tsv {output.tsv} "
        "2> {log} | tee -a {log}"


rule plot_reference:
    """Every cell of the table beside its published number."""
    input:
        table=f"{RESULTS}/table.tsv",
    output:
        figure=report(
            plot_file("reference"),
            caption="../report/reference.rst",
            category="1. Results",
            labels={"result": "errors against the published numbers"},
        ),
        data=plot_file("reference", "tsv"),
    log:
        f"{RESULTS}/logs/plots/reference.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        tolerance=tolerance_flag(),
    shell:
        "{params.python} {params.script} reference --table {input.table} {params.tolerance} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_paired_differences:
    """Each method minus Piggyback on the same test images, with its interval."""
    input:
        table=f"{RESULTS}/table.tsv",
    output:
        figure=report(
            plot_file("paired_differences"),
            caption="../report/paired_differences.rst",
            category="1. Results",
            labels={"result": "paired differences against Piggyback"},
        ),
        data=plot_file("paired_differences", "tsv"),
    log:
        f"{RESULTS}/logs/plots/paired_differences.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
    shell:
        "{params.python} {params.script} paired_differences --table {input.table} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_error_curves:
    """Test error per epoch of every training job, the kept epoch marked."""
    input:
        record_files(training_records()),
    output:
        figure=report(
            plot_file("error_curves"),
            caption="../report/error_curves.rst",
            category="2. Training",
            labels={"result": "test error per epoch"},
        ),
        data=plot_file("error_curves", "tsv"),
    log:
        f"{RESULTS}/logs/plots/error_curves.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        records=records_json(training_records()),
        classes=classes_json(),
    shell:
        "{params.python} {params.script} error_curves --records {params.records:q} "
        "--classes {params.classes:q} --out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_mask_density:
    """Piggyback: the share of each layer's weights a task's mask keeps."""
    input:
        record_files(mask_stats_records()),
    output:
        figure=report(
            plot_file("mask_density"),
            caption="../report/mask_density.rst",
            category="3. Masks and owners",
            labels={"result": "Piggyback: mask entries kept per layer"},
        ),
        data=plot_file("mask_density", "tsv"),
    log:
        f"{RESULTS}/logs/plots/mask_density.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        records=records_json(mask_stats_records()),
    shell:
        "{params.python} {params.script} mask_density --records {params.records:q} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_ownership:
    """PackNet: the share of each layer's weights each task owns, per ordering."""
    input:
        record_files(owner_stats_records()),
    output:
        figure=report(
            plot_file("ownership"),
            caption="../report/ownership.rst",
            category="3. Masks and owners",
            labels={"result": "PackNet: weights owned per layer"},
        ),
        data=plot_file("ownership", "tsv"),
    log:
        f"{RESULTS}/logs/plots/ownership.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        records=records_json(owner_stats_records()),
    shell:
        "{params.python} {params.script} ownership --records {params.records:q} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_storage:
    """Megabytes and bits per weight that one more task costs, per method."""
    input:
        record_files(storage_records()),
    output:
        figure=report(
            plot_file("storage"),
            caption="../report/storage.rst",
            category="4. Storage",
            labels={"result": "storage per task"},
        ),
        data=plot_file("storage", "tsv"),
    log:
        f"{RESULTS}/logs/plots/storage.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        records=records_json(storage_records()),
    shell:
        "{params.python} {params.script} storage --records {params.records:q} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"


rule plot_runtimes:
    """Where the time went: the benchmarked jobs' wall time per rule and arch."""
    input:
        record_files(benchmark_records()),
    output:
        figure=report(
            plot_file("runtimes"),
            caption="../report/runtimes.rst",
            category="5. Time",
            labels={"result": "job wall time"},
        ),
        data=plot_file("runtimes", "tsv"),
    log:
        f"{RESULTS}/logs/plots/runtimes.log",
    params:
        python=PYTHON,
        script=SCRIPTS["plots"],
        records=records_json(benchmark_records()),
    shell:
        "{params.python} {params.script} runtimes --records {params.records:q} "
        "--out {output.figure} --data {output.data} > {log} 2>&1"
