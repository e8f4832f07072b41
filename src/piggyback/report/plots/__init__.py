"""The report's figures, drawn from the files the pipeline writes.

Each figure function returns the figure and a tidy table of exactly the numbers it drew;
``src/plots.py`` writes that table beside the picture, so a test can hold a picture's
numbers against ``table.tsv`` and the files they came from. A record names one input
file and what it belongs to (arch, method, ordering, run, ...): the workflow knows the
file layout, this module does not. Torch is never imported: a figure job starts in a
second, not five.

One module per figure; ``FIGURES`` names them for ``src/plots.py``.
"""

from piggyback.report.plots.curves import error_curves
from piggyback.report.plots.layers import mask_density, ownership
from piggyback.report.plots.paired import paired_differences
from piggyback.report.plots.reference import reference_comparison
from piggyback.report.plots.runtimes import runtimes
from piggyback.report.plots.storage import storage

FIGURES = {
    "error_curves": error_curves,
    "reference": reference_comparison,
    "paired_differences": paired_differences,
    "mask_density": mask_density,
    "ownership": ownership,
    "storage": storage,
    "runtimes": runtimes,
}
