"""Methods as units: one file per method, one torch-free registry that names them.

``piggyback.methods.registry`` lists every method with its defaults and whether it is
sequential; ``piggyback.methods.base`` says what a method does for the training loop,
packing and evaluation. Importing this package imports no torch.
"""

from piggyback.methods.registry import (
    METHODS,
    Hyperparameters,
    MethodError,
    load_method,
    method_entry,
)

__all__ = ["METHODS", "Hyperparameters", "MethodError", "load_method", "method_entry"]
