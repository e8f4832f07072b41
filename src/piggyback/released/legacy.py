"""torch 0.2's legacy (pre-zip) ``torch.save`` format, read without running code.

Such a file is a pickle that rebuilds tensors, parameters and whole ``nn.Module`` objects,
followed by the raw bytes of every storage. Unpickling it with ``pickle`` or
``torch.load(weights_only=False)`` runs whatever callables the file names, so this module
reads the format itself: the pickle is loaded by a restricted unpickler
(``piggyback.files.restricted_pickle``) that admits only tensor rebuilders, ``OrderedDict`` and
a fixed list of torch.nn/torchvision module classes, and turns every module into an
inert ``PickledModule`` record of its pickled state. Any other global is refused before
it is called.
"""

from __future__ import annotations

import functools
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from piggyback.files.restricted_pickle import RefusedGlobal, RestrictedUnpickler

# torch's legacy serialisation: three header pickles, the object, the storage keys, data.
_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
    "ByteStorage": torch.uint8,
    "CharStorage": torch.int8,
    "ShortStorage": torch.int16,
    "IntStorage": torch.int32,
    "LongStorage": torch.int64,
    "HalfStorage": torch.float16,
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "BoolStorage": torch.bool,
}

# Module classes a pickled mask head or whole torchvision backbone (0.1.9 or today) holds.
_MODULE_CLASSES = frozenset(
    {
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.pooling.MaxPool2d",
        "torch.nn.modules.pooling.AvgPool2d",
        "torch.nn.modules.pooling.AdaptiveAvgPool2d",
        "torch.nn.modules.dropout.Dropout",
        "torch.nn.modules.container.Sequential",
        "torchvision.models.vgg.VGG",
        "torchvision.models.resnet.ResNet",
        "torchvision.models.resnet.Bottleneck",
        "torchvision.models.resnet.BasicBlock",
        "torchvision.models.densenet.DenseNet",
        "torchvision.models.densenet._DenseBlock",
        "torchvision.models.densenet._DenseLayer",
        "torchvision.models.densenet._Transition",
    }
)


class LegacyFileError(ValueError):
    """A file is not a readable legacy torch file, or names a global that is not admitted;
    the one-line message names the file."""


class PickledModule:
    """An ``nn.Module`` as a file pickled it: its class path and pickled attributes.

    Nothing of the module is constructed or run; the record only holds data.
    """

    class_path = ""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"{self.class_path} was pickled with a {type(state).__name__} state")
        self.state = state

    def section(self, name: str) -> dict:
        """One of the module's pickled dicts (``_parameters``, ``_buffers``, ``_modules``)."""
        value = self.__dict__.get("state", {}).get(name)
        return value if isinstance(value, dict) else {}


def read_legacy_file(path: str | Path) -> Any:
    """The object in a legacy-format ``torch.save`` file; modules come back as
    ``PickledModule`` records and nothing named by the file is run."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        raise LegacyFileError(
            f"{path} is a zip archive (torch >= 1.6 serialisation), not the legacy format "
            "torch 0.2 wrote"
        )
    storages: dict[str, _Storage] = {}
    try:
        with open(path, "rb") as stream:
            header = [_NoCodeUnpickler(stream, storages).load()]
            if header[0] == _MAGIC_NUMBER:
                header += [_NoCodeUnpickler(stream, storages).load() for _ in range(2)]
            if header[:2] != [_MAGIC_NUMBER, _PROTOCOL_VERSION]:
                raise LegacyFileError(f"{path} is not a legacy torch file (no magic number)")
            if not isinstance(header[2], dict) or not header[2].get("little_endian", False):
                raise LegacyFileError(f"{path} was not written on a little-endian machine")
            content = _NoCodeUnpickler(stream, storages).load()
            keys = _NoCodeUnpickler(stream, storages).load()
            _read_storages(path, stream, keys, storages)
        return _materialise(content, set())
    except RefusedGlobal as refused:
        raise LegacyFileError(
            f"refused global {refused.name} in {path}: only tensors, storages, OrderedDict and "
            "torch.nn/torchvision module classes are admitted; nothing from the file was run"
        ) from None
    except LegacyFileError:
        raise
    except EOFError:
        raise LegacyFileError(f"{path} ends early: truncated?") from None
    except Exception as error:  # any other failure of a malformed pickle or tensor
        detail = str(error).splitlines()[0] if str(error) else ""
        raise LegacyFileError(
            f"{path} is not a readable legacy torch file: {type(error).__name__}: {detail}"
        ) from None


@dataclass
class _Storage:
    """One storage of the file: its element type and count, then its bytes."""

    dtype: torch.dtype
    numel: int
    data: torch.Tensor | None = None


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _StorageView:
    storage: _Storage
    offset: int


@dataclass(frozen=True)
class _TensorRecord:
    """A tensor the pickle asked for, made once the storage bytes have been read."""

    view: _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:
        raise TypeError("a tensor was given pickled state")

    def tensor(self) -> torch.Tensor:
        return self.view.storage.data.as_strided(
            self.size, self.stride, self.view.offset + self.offset
        )


class _LegacyParameter:
    """torch 0.2 pickled a Parameter as ``Parameter(data)`` plus (requires_grad,
    volatile, hooks) state; only the data is kept."""

    def __init__(self, data: Any):
        if not isinstance(data, _TensorRecord):
            raise TypeError(f"a Parameter of a {type(data).__name__}")
        self.data = data

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple):
            raise TypeError(f"a Parameter was pickled with a {type(state).__name__} state")


def _tensor_record(storage, storage_offset, size, stride, *_ignored) -> _TensorRecord:
    """Stands in for torch._utils._rebuild_tensor and _rebuild_tensor_v2."""
    if not isinstance(storage, _StorageView):
        raise TypeError(f"a tensor over a {type(storage).__name__}, not a storage")
    numbers = (storage_offset, *size, *stride)
    if not all(isinstance(n, int) for n in numbers) or len(size) != len(stride):
        raise TypeError(f"a tensor with size {size!r} and stride {stride!r}")
    return _TensorRecord(storage, storage_offset, tuple(size), tuple(stride))


def _parameter_record(data, *_ignored) -> _TensorRecord:
    """Stands in for torch._utils._rebuild_parameter: a parameter is its data."""
    if not isinstance(data, _TensorRecord):
        raise TypeError(f"a parameter of a {type(data).__name__}")
    return data


def _no_backend() -> None:
    """Stands in for torch 0.2's THNN backend, which every pickled module referred to."""


_ADMITTED_CALLABLES = {
    "torch._utils._rebuild_tensor": _tensor_record,
    "torch._utils._rebuild_tensor_v2": _tensor_record,
    "torch._utils._rebuild_parameter": _parameter_record,
    "torch.nn.parameter.Parameter": _LegacyParameter,
    "torch.nn.backends.thnn._get_thnn_function_backend": _no_backend,
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
}


@functools.cache
def _stand_in(class_path: str) -> type[PickledModule]:
    """One inert ``PickledModule`` subclass per admitted module class."""
    name = class_path.rpartition(".")[2]
    return type(name, (PickledModule,), {"class_path": class_path, "__module__": __name__})


class _NoCodeUnpickler(RestrictedUnpickler):
    """Admits the globals above, answers torch's persistent ids, refuses the rest."""

    admitted = _ADMITTED_CALLABLES

    def __init__(self, stream, storages: dict[str, _Storage]):
        super().__init__(stream)
        self._storages = storages

    def admit(self, class_path: str) -> Any | None:
        if class_path in _MODULE_CLASSES:
            return _stand_in(class_path)
        module, _, name = class_path.rpartition(".")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return super().admit(class_path)

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0] if isinstance(pid, tuple) and pid else None
        if kind == "module" and len(pid) == 4 and _is_stand_in(pid[1]):
            # ('module', class, source file, source): torch compared the source; we need not.
            return pid[1]
        if kind == "storage" and len(pid) == 6:
            return self._storage_view(*pid[1:])
        raise TypeError(f"unexpected persistent id {str(pid)[:80]}")

    def _storage_view(self, storage_type, key, _location, numel, view) -> _StorageView:
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise TypeError(f"storage {key!r} of {storage_type!r} with {numel!r} elements")
        storage = self._storages.setdefault(key, _Storage(storage_type.dtype, numel))
        if (storage.dtype, storage.numel) != (storage_type.dtype, numel):
            raise TypeError(f"storage {key!r} is declared twice, differently")
        if view is None:
            return _StorageView(storage, 0)
        # torch 0.2 could save a view into a larger storage: (view key, offset, size).
        _view_key, offset, size = view
        if not (offset >= 0 and offset + size <= numel):
            raise TypeError(f"a view of storage {key!r} out of its bounds")
        return _StorageView(storage, offset)


def _is_stand_in(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, PickledModule)


def _read_storages(path: Path, stream, keys: Any, storages: dict[str, _Storage]) -> None:
    """Each storage's bytes: an int64 element count, then the elements, little-endian."""
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise LegacyFileError(f"{path}: the list of storages does not match the pickle")
    for key in keys:
        storage = storages[key]
        count = stream.read(8)
        if len(count) < 8:
            raise LegacyFileError(f"{path} ends early: storage {key} is missing (truncated?)")
        (numel,) = struct.unpack("<q", count)
        if numel != storage.numel:
            raise LegacyFileError(
                f"{path}: storage {key} holds {numel} elements, not {storage.numel}"
            )
        buffer = bytearray(numel * storage.dtype.itemsize)
        got = stream.readinto(buffer)
        if got < len(buffer):
            raise LegacyFileError(
                f"{path} ends early: storage {key} needs {len(buffer)} bytes, "
                f"the file has {got} left (truncated?)"
            )
        storage.data = (
            torch.frombuffer(buffer, dtype=storage.dtype)
            if buffer
            else torch.empty(0, dtype=storage.dtype)
        )


def _materialise(obj: Any, seen: set[int]) -> Any:
    """The unpickled object with every tensor record turned into a tensor."""
    if isinstance(obj, _TensorRecord):
        return obj.tensor()
    if isinstance(obj, _LegacyParameter):
        return obj.data.tensor()
    if isinstance(obj, PickledModule):
        if id(obj) not in seen:
            seen.add(id(obj))
            obj.state = _materialise(obj.__dict__.get("state", {}), seen)
        return obj
    if isinstance(obj, dict):
        return type(obj)((key, _materialise(value, seen)) for key, value in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_materialise(value, seen) for value in obj)
    return obj
