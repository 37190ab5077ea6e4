"""Read a torch checkpoint whose pickle names foreign classes, without running any of them.

Lightning checkpoints (solo-learn's among them) carry more than tensors: the
module's ``hyper_parameters`` (an OmegaConf ``DictConfig`` for every real
solo-learn run), loop and callback state, sometimes paths or enums. A plain
``torch.load(weights_only=True)`` refuses them, and ``weights_only=False``
would run whatever the pickle names. This module reads the zip archive
itself with a restricted :class:`pickle.Unpickler`:

- a global on torch's own ``weights_only`` allow-list (tensor rebuilders,
  storage types, ``OrderedDict``, ...) loads as usual;
- a global from a blocked module (``os``, ``sys``, ...) refuses the file;
- any other global becomes an inert :class:`Inert` placeholder that records
  its dotted name, the arguments and state the pickle gave it, and never
  calls anything. It behaves as a dict and a list so that the pickle's own
  item operations on it succeed.

Tensors are rebuilt from the archive's storage records. :func:`plain` turns
what was read (placeholders included; OmegaConf containers become the
dicts, lists and values they hold) into plain Python data.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import torch
from torch import _weights_only_unpickler as _wo

from repdiag.errors import UserError, reason


class Inert(dict):
    """An object of a class that was not loaded: its name, constructor arguments and state.

    A dict subclass so that the pickle's SETITEMS on it work (OmegaConf's and
    Lightning's containers are dict subclasses); list items go to ``items_``.
    """

    qualname = "?"

    def __init__(self, *args, **kwargs):  # REDUCE: called with the pickled arguments
        super().__init__()
        self.args = args

    def __setstate__(self, state):  # BUILD
        self.state = state

    def append(self, item):
        self.__dict__.setdefault("items_", []).append(item)

    def extend(self, items):
        self.__dict__.setdefault("items_", []).extend(items)

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


_PLACEHOLDERS: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    if qualname not in _PLACEHOLDERS:
        _PLACEHOLDERS[qualname] = type(f"Inert[{qualname}]", (Inert,), {"qualname": qualname})
    return _PLACEHOLDERS[qualname]


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, path: str):
        super().__init__(io.BytesIO(data), encoding="utf-8")
        self.archive, self.prefix, self.path = archive, prefix, path
        self.allowed = _wo._get_allowed_globals()

    def find_class(self, module: str, name: str):
        qualname = f"{module}.{name}"
        if module in ("__builtin__", "builtins"):
            qualname = f"builtins.{name}"
        if qualname in self.allowed:
            return self.allowed[qualname]
        if module.split(".")[0] in _wo._blocklisted_modules:
            raise UserError(f"{self.path}: refused, the file's pickle names {qualname}, which "
                            "could run code; it is not a checkpoint repdiag will read")
        return _placeholder(qualname)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UserError(f"{self.path}: unsupported storage record {pid!r:.60}")
        _, storage_type, key, _location, numel = pid
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        raw = self.archive.read(f"{self.prefix}data/{key}")
        nbytes = numel * torch._utils._element_size(dtype)
        if len(raw) != nbytes:
            raise UserError(f"{self.path}: storage record {key} holds {len(raw)} bytes, "
                            f"expected {nbytes}: the file is truncated or damaged")
        untyped = torch.frombuffer(bytearray(raw), dtype=torch.uint8).untyped_storage() \
            if raw else torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)


def load_inert(path: str | os.PathLike) -> Any:
    """The object saved in the torch zip archive ``path``, foreign classes as :class:`Inert`."""
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: not a torch zip archive ({e})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UserError(f"{path}: not a torch zip archive (no single data.pkl record)")
        prefix = pickles[0][: -len("data.pkl")]
        order = prefix + "byteorder"
        if order in archive.namelist() and archive.read(order).decode().strip() != "little":
            raise UserError(f"{path}: big-endian tensors are not supported")
        try:
            return _InertUnpickler(archive.read(pickles[0]), archive, prefix, path).load()
        except UserError:
            raise
        except Exception as e:  # a damaged pickle: any unpickling error is the file's fault
            raise UserError(f"{path}: damaged pickle in the torch archive "
                            f"({reason(e, typed=True, limit=80)})") from None


def plain(obj: Any, depth: int = 0) -> Any:
    """Plain Python data (dicts, lists, str, numbers, bool, None) from what was loaded.

    OmegaConf containers come out as the dicts/lists they hold and their value
    nodes as the values; other placeholders as their plain state (or their
    dotted class name when they carry none). Tensors are left as they are.
    """
    if depth > 50:
        return None
    if isinstance(obj, Inert):
        state = getattr(obj, "state", None)
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (__dict__, slots)
        if isinstance(state, dict):
            if "_content" in state:  # OmegaConf DictConfig / ListConfig
                return plain(state["_content"], depth + 1)
            if "_val" in state:  # OmegaConf value node
                return plain(state["_val"], depth + 1)
            return {str(k): plain(v, depth + 1) for k, v in state.items()}
        if len(obj):
            return {str(k): plain(v, depth + 1) for k, v in obj.items()}
        if "items_" in obj.__dict__:
            return [plain(v, depth + 1) for v in obj.__dict__["items_"]]
        args = getattr(obj, "args", ())  # absent when the pickle built it with NEWOBJ
        if args:
            return plain(args[0] if len(args) == 1 else list(args), depth + 1)
        return obj.qualname
    if isinstance(obj, type) and issubclass(obj, Inert):
        return obj.qualname
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (int, float, bool)) else k: plain(v, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, (str, int, float, bool, type(None), torch.Tensor)):
        return obj
    return str(obj)


def has_inert(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` (a nested container) holds any placeholder."""
    if depth > 50:
        return False
    if isinstance(obj, Inert) or (isinstance(obj, type) and issubclass(obj, Inert)):
        return True
    if isinstance(obj, dict):
        return any(has_inert(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(has_inert(v, depth + 1) for v in obj)
    return False
