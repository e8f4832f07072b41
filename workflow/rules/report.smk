rule aggregate:
    """The paper's table: every evaluation against the reference numbers."""
    input:
        results=evaluation_outputs(),
        reference=reference_inputs(),
    output:
        markdown=report(f"{RESULTS}/table.md", caption="../report/table.rst"),
        tsv=f"{RESULTS}/table.tsv",
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../../environment.yml"
    params:
        python=PYTHON,
        script=SCRIPTS["aggregate"],
        reference=reference_flags(),
        classes=classes_json(),
        archs=ARCHS,
        datasets=DATASETS,
        methods=METHODS,
        orderings=orderings_json(),
    shell:
        "{params.python} {params.script} {input.results} {params.reference} "
        "--classes {params.classes:q} --archs {params.archs} --datasets {params.datasets} "
        "--methods {params.methods} --orderings {params.orderings:q} --markdown {output.markdown} --tsv {output.tsv} "
        "2> {log} | tee -a {log}"
