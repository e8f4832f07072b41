"""The report's figures, drawn from the files the pipeline writes.

Each figure function returns the figure and a tidy table of exactly the numbers it drew;
``src/plots.py`` writes that table beside the picture, so a test can hold a picture's
numbers against ``table.tsv`` and the files they came from. A record names one input
file and what it belongs to (arch, method, ordering, run, ...): the workflow knows the
file layout, this module does not. Torch is never imported: a figure job starts in a
second, not five.

One module per figure, and one entry in ``FIGURES``, the figure's only declaration: the
workflow makes its ``plot_<name>`` rule from it (its caption is
``workflow/report/<name>.rst``) and ``src/plots.py`` draws it. The entries name their
functions rather than import them, so that the workflow reads this table without
loading matplotlib.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

# What a figure reads when it draws the table's cells rather than records of files.
TABLE = "table"


@dataclass(frozen=True)
class Plot:
    """A figure: its function (``module.function`` in this package); what it reads first,
    ``TABLE`` (table.tsv) or the name of the records the workflow selects for it
    (``RECORDS`` in workflow/rules/common/records.smk); the config values it takes after
    that, in order (``tolerance``, ``classes``); and where the report files it."""

    function: str
    reads: str
    category: str
    label: str
    takes: tuple[str, ...] = ()

    def draw(self, *arguments: Any) -> tuple[Figure, pd.DataFrame]:
        """The figure and the numbers it shows; its module is imported only now."""
        module, name = self.function.rsplit(".", 1)
        return getattr(import_module(f"{__name__}.{module}"), name)(*arguments)


# In the report's order.
FIGURES = {
    "reference": Plot(
        "reference.reference_comparison",
        reads=TABLE,
        takes=("tolerance",),
        category="1. Results",
        label="errors against the published numbers",
    ),
    "paired_differences": Plot(
        "paired.paired_differences",
        reads=TABLE,
        category="1. Results",
        label="paired differences against Piggyback",
    ),
    "error_curves": Plot(
        "curves.error_curves",
        reads="training",
        takes=("classes",),
        category="2. Training",
        label="test error per epoch",
    ),
    "mask_density": Plot(
        "layers.mask_density",
        reads="mask_stats",
        category="3. Masks and owners",
        label="Piggyback: mask entries kept per layer",
    ),
    "ownership": Plot(
        "layers.ownership",
        reads="owner_stats",
        category="3. Masks and owners",
        label="PackNet: weights owned per layer",
    ),
    "storage": Plot(
        "storage.storage",
        reads="storage",
        category="4. Storage",
        label="storage per task",
    ),
    "runtimes": Plot(
        "runtimes.runtimes",
        reads="benchmark",
        category="5. Time",
        label="job wall time",
    ),
}
