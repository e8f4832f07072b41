"""Series (what one packed file holds), their methods, orderings and tasks."""

from piggyback.methods.registry import METHODS as METHOD_REGISTRY


def is_sequential(method):
    return METHOD_REGISTRY[method].sequential


def series_of(method, ordering=None):
    """A series is what one packed file holds: an independent method's tasks, or a
    sequential method's chain of tasks in one ordering ("packnet/forward")."""
    return f"{method}/{ordering}" if is_sequential(method) else method


def series_method(series):
    return series.split("/")[0]


def series_ordering(series):
    """The ordering of a sequential method's series; None for an independent method."""
    return series.partition("/")[2] or None


def series_tasks(series):
    """The tasks of a series, in file order: the ordering's for a sequential method,
    every dataset of the experiment for an independent one."""
    ordering = series_ordering(series)
    return config["orderings"][ordering] if ordering else DATASETS


SERIES = list(
    dict.fromkeys(
        series_of(method, ordering) for method in METHODS for ordering in ORDERINGS
    )
)
