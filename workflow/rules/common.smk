"""The helpers the rule files read (the Snakemake workflow template's common.smk, one file
per concern): the config as constants, series, wildcard constraints, the files and the
input functions that choose them, the scripts' flags, and the figures' records. Each
file reads only what the ones above it define."""


include: "common/constants.smk"
include: "common/series.smk"
include: "common/wildcards.smk"
include: "common/paths.smk"
include: "common/flags.smk"
include: "common/records.smk"
