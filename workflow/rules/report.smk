rule aggregate:
    """The paper's table: every evaluation against the reference numbers."""
    input:
        results=evaluation_outputs(),
        reference=reference_inputs(),
    output:
        markdown=report(f"{RESULTS}/table.md", caption="../report/table.rst"),
        tsv=f"{RESULTS}/table.tsv",
    params:
        reference=reference_flags(),
        classes=classes_json(),
        archs=ARCHS,
        datasets=DATASETS,
        methods=METHODS,
    log:
        f"{RESULTS}/logs/aggregate.log",
    conda:
        "../../environment.yml"
    shell:
        "{PYTHON} {SCRIPTS[aggregate]} {input.results} {params.reference} "
        "--classes {params.classes:q} --archs {params.archs} --datasets {params.datasets} "
        "--methods {params.methods} --markdown {output.markdown} --tsv {output.tsv} "
        "2> {log} | tee -a {log}"
