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
        tsv=table_tsv(),
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


# Each figure of the report (FIGURES, src/piggyback/report/plots/__init__.py) is drawn by
# a rule of its own, `plot_<figure>`, made from its entry; its caption is
# workflow/report/<figure>.rst.
for figure, plot in FIGURES.items():

    rule:
        """Draw a figure of the report, and write the numbers it shows beside it."""
        name:
            f"plot_{figure}"
        input:
            plot_inputs(plot),
        output:
            figure=report(
                plot_file(figure),
                caption=f"../report/{figure}.rst",
                category=plot.category,
                labels={"result": plot.label},
            ),
            data=plot_file(figure, "tsv"),
        log:
            f"{RESULTS}/logs/plots/{figure}.log",
        params:
            python=PYTHON,
            script=SCRIPTS["plots"],
            figure=figure,
            flags=plot_flags(plot),
        shell:
            "{params.python} {params.script} {params.figure} {params.flags} "
            "--out {output.figure} --data {output.data} > {log} 2>&1"
