"""Each wildcard matches only names the config or the method registry defines: a series
holds a slash ("packnet/forward"), and a path must split into wildcards one way only."""

import re

from piggyback.methods.registry import METHODS as METHOD_REGISTRY


def alternatives(names):
    return "|".join(re.escape(name) for name in names)


wildcard_constraints:
    arch=alternatives(config["archs"]),
    dataset=alternatives(config["datasets"]),
    method=alternatives(METHOD_REGISTRY),
    series=alternatives(
        series_of(method, ordering)
        for method in METHOD_REGISTRY
        for ordering in config["orderings"]
    ),
    run=r"\d+",
    size=r"\d+",
    transforms=r"[a-z0-9_]+\.[A-Z0-9_]+",
