# Piggyback, reproduced: `snakemake --cores N --resources gpu=G [--configfile ...]`.
# The rules live in workflow/; the default target is declared here because Snakemake
# ignores `default_target` in included files.


include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        table_outputs(),
        plot_outputs(),
