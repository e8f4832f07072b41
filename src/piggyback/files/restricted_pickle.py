"""Pickles read without running code: unpicklers that admit a fixed table of globals
and refuse any other by name, before it is called.

A pickle names the callables that rebuild its objects, and ``pickle.load`` calls
whatever a file names (``os.system`` included). Files from the internet are read with
these instead: torch 0.2 files (``released/legacy.py``) and pickled NumPy arrays
(weights shipped in a package, ``load_numpy_pickle``).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

# Python 2 pickles (and protocol-2 pickles written by Python 3) use the old module names.
_PY2_MODULE_NAMES = {"__builtin__": "builtins"}


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global that is not admitted; ``name`` is its dotted path."""

    def __init__(self, name: str):
        super().__init__(f"refused global {name}")
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves a global only through ``admit`` (by default the ``admitted`` table);
    any other is refused with ``RefusedGlobal``. Persistent ids are refused unless a
    subclass answers them."""

    admitted: Mapping[str, Any] = {}

    def __init__(self, stream):
        # latin1: Python 2 pickles of arrays hold their bytes as str
        super().__init__(stream, encoding="latin1")

    def find_class(self, module: str, name: str) -> Any:
        class_path = f"{_PY2_MODULE_NAMES.get(module, module)}.{name}"
        found = self.admit(class_path)
        if found is None:
            raise RefusedGlobal(class_path)
        return found

    def admit(self, class_path: str) -> Any | None:
        return self.admitted.get(class_path)


class NumpyPickleError(ValueError):
    """A pickle is not a readable pickle of NumPy arrays, or names a global that is not
    admitted; the one-line message names the file."""


def _ndarray_rebuilder():
    """NumPy's ``_reconstruct``, as this NumPy pickles arrays: ``numpy.core`` in
    NumPy 1, ``numpy._core`` in NumPy 2 (where the old path is a deprecated alias)."""
    return np.empty(0).__reduce__()[0]


class _NdarrayType:
    """Stands in for ``numpy.ndarray``, which a pickle names only as the type that
    ``_reconstruct`` builds: not callable, so that the file cannot call ndarray's
    constructor itself (with a buffer, strides or an object dtype of its choosing)."""


_NDARRAY = _NdarrayType()


def _array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Stands in for ``_reconstruct``: a plain ndarray only, never a subclass."""
    if subtype is not _NDARRAY:
        raise TypeError(f"an array of type {subtype!r}")
    return _ndarray_rebuilder()(np.ndarray, shape, dtype)


def _dtype(*args: Any) -> np.dtype:
    """Stands in for ``numpy.dtype``: numbers only, since an object array's elements
    would be pickled objects. Every dtype of the file is made here (a structured one's
    fields too), so no array of objects can be made."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise TypeError(f"an array of Python objects ({dtype})")
    return dtype


class _NumpyUnpickler(RestrictedUnpickler):
    # The spelling a file was written with (NumPy 1's `numpy.core`, NumPy 2's
    # `numpy._core`) is the writer's; both name the same function.
    admitted = {
        "numpy.core.multiarray._reconstruct": _array,
        "numpy._core.multiarray._reconstruct": _array,
        "numpy.ndarray": _NDARRAY,
        "numpy.dtype": _dtype,
    }


def load_numpy_pickle(data: bytes, what: str) -> Any:
    """The object in a pickle of NumPy arrays (in dicts, lists and tuples, with numbers
    and strings), read with NumPy's array rebuilder, ``ndarray`` and ``dtype`` as the
    only globals: nothing else the file names is called. ``what`` names it in errors."""
    try:
        obj = _NumpyUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as refused:
        raise NumpyPickleError(
            f"refused global {refused.name} in {what}: only NumPy's _reconstruct, ndarray "
            "and dtype are admitted; nothing from the file was run"
        ) from None
    except Exception as error:  # any failure of a malformed pickle
        detail = str(error).splitlines()[0] if str(error) else ""
        raise NumpyPickleError(
            f"{what} is not a readable pickle of arrays: {type(error).__name__}: {detail}"
        ) from None
    return obj
