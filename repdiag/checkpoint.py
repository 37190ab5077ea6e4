"""repdiag's checkpoint format: plain types and tensors, written atomically.

A checkpoint is a dict that loads with ``torch.load(weights_only=True)``::

    {"format": "repdiag-checkpoint", "version": 1,
     "config": {...},                    # the full run config, plain types
     "model": {"backbone": {...}, "head": {...}},   # BackboneSpec / HeadSpec
     "backbone": state_dict, "head": state_dict,
     "epoch": int, "step": int,
     "optimizer": state_dict | None, "scheduler": state_dict | None,
     "rng": {"torch": ByteTensor, ...},
     "metrics": [ {epoch, loss, ...}, ... ],
     "extra": {...}}                     # scheme-specific state (plain types)

Loading never unpickles arbitrary objects: ``weights_only=True`` refuses any
pickled class that is not a tensor or a plain container, so a file that would
run code is rejected before anything in it runs.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import stat
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repdiag.errors import UserError, reason, user_error
from repdiag.files import atomic_write
from repdiag.importers import import_foreign
from repdiag.inert_pickle import has_inert, load_inert, plain
from repdiag.models import BackboneSpec, Head, HeadSpec, build_backbone, build_head

FORMAT = "repdiag-checkpoint"
VERSION = 1


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (temp file, fsync, rename)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_torch_load(path: str | os.PathLike, what: str = "file") -> object:
    """``torch.load(weights_only=True)`` on CPU with every failure as a one-line UserError.

    A Lightning checkpoint (solo-learn's, say) whose pickle names classes that
    ``weights_only`` refuses (an OmegaConf config in ``hyper_parameters``) is
    read with :func:`repdiag.inert_pickle.load_inert` instead: those classes
    become inert placeholders, never run, and only ``state_dict`` (tensors),
    plain ``hyper_parameters``, ``epoch`` and ``global_step`` are kept. Every
    record is checked against its CRC-32 first (:func:`verify_zip`); a legacy
    (non-zip) torch file has no such check and is refused (:func:`legacy_message`).
    """
    path = Path(path)
    check_regular_file(path, what)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise user_error(f"{path}: cannot read the {what}", e) from None
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise UserError(f"{path}: not a torch file (neither a torch.save zip archive nor a pickle)")
    if not magic.startswith(b"PK\x03\x04"):
        raise UserError(legacy_message(path, what))
    verify_zip(path, what)
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol is not the user's
            warnings.filterwarnings("ignore", message=".*pickle protocol")
            warnings.filterwarnings("ignore", message=".*sparse tensor invariants")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(e)
        if name is None:
            raise UserError(f"{path}: not a readable torch file ({reason(e)})") from None
        if magic.startswith(b"PK\x03\x04"):
            lightning = _lightning_parts(load_inert(path))
            if lightning is not None:
                return lightning
        raise UserError(
            f"{path}: refused: the file holds a pickled {name} object, and repdiag loads only "
            "tensors and plain data (and the state_dict of Lightning checkpoints) so that no "
            "code in a file can run; save the model's state_dict() instead") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        raise UserError(f"{path}: truncated or not a torch file ({reason(e)})") from None


def legacy_message(path: str | os.PathLike, what: str = "file") -> str:
    """The one line that refuses a legacy (non-zip) torch file, with how to convert it.

    torch wrote a bare pickle followed by raw tensor bytes before version 1.6 (and
    still does with ``_use_new_zipfile_serialization=False``). Nothing in that
    format checks the bytes, so a damaged tensor would be diagnosed as if intact;
    the zip format ``torch.save`` writes today stores a CRC-32 per record.
    """
    return (f"{path}: refused: a legacy torch {what} (a bare pickle, written before torch 1.6 "
            "or with _use_new_zipfile_serialization=False) carries no integrity check, so "
            "damage could not be detected; if you trust its bytes, convert it once to the "
            "zip format (a CRC-32 per record): python -c \"import sys, torch; torch.save("
            "torch.load(sys.argv[1], weights_only=True), sys.argv[2])\" OLD.pt NEW.pt")


def check_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse anything but an existing regular file (or a link to one) in one line.

    A FIFO or a device would block or stream forever when opened, a directory
    cannot be read: each is named, before the file is opened.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what}") from None
    except OSError as e:
        raise user_error(f"{path}: cannot read the {what}", e) from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device"
                if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise UserError(f"{path}: is {kind}, expected a {what} (a regular file)")


def verify_zip(path: str | os.PathLike, what: str = "file", chunk: int = 1 << 22) -> None:
    """Check every record of a zip archive (what ``torch.save`` writes) against its CRC-32.

    Each record is read through to its end, so :mod:`zipfile` compares the
    CRC-32 stored in the archive with the one of the bytes read; a damaged
    header, a truncated archive or one flipped byte in a tensor record raises
    a UserError naming the file and the record, before any tensor is used.
    """
    path = Path(path)
    record = None
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                record = info.filename
                with zf.open(info) as f:
                    while f.read(chunk):
                        pass
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        if record is None:  # no readable zip directory at the end: cut short, or not a zip
            raise UserError(f"{path}: truncated or not a torch file (its zip directory is "
                            f"unreadable: {reason(e)})") from None
        raise UserError(f"{path}: damaged {what}: record '{record}' fails its integrity check "
                        f"({reason(e)})") from None
    except OSError as e:
        raise user_error(f"{path}: cannot read the {what}", e) from None


def _lightning_parts(raw: object) -> dict | None:
    """The readable parts of a Lightning checkpoint loaded inertly, or None if it is not one."""
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), dict):
        return None
    state = raw["state_dict"]
    if has_inert(state) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    out = {"state_dict": dict(state), "pytorch-lightning_version":
           plain(raw.get("pytorch-lightning_version"))}
    for key in ("hyper_parameters", "epoch", "global_step"):
        if key in raw:
            out[key] = plain(raw[key])
    return out


def _refused_global(e: BaseException) -> str | None:
    """The dotted name of the class or function a weights_only load refused, if that was why."""
    text = str(e)
    m = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"unsupported global:? ([\w.]+)", text, re.I)
    if m:
        return m.group(1)
    if "weights_only" in text or "allowlisted" in text or "add_safe_globals" in text:
        return "Python"
    return None


@dataclass
class Checkpoint:
    """A loaded checkpoint: specs and weights to rebuild the model, plus run state."""

    path: str
    config: dict
    backbone_spec: BackboneSpec
    head_spec: HeadSpec
    backbone_state: dict
    head_state: dict
    epoch: int = 0
    step: int = 0
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: dict = field(default_factory=dict)
    metrics: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    source: str = FORMAT
    key_map: tuple = ()  # foreign files: the --map PREFIX=ROLE rules they were read with
    # foreign files: the file's key prefix of the backbone and head ("backbone.", ...), so
    # that errors name keys as the file does
    key_prefixes: dict = field(default_factory=dict)

    def build_backbone(self) -> torch.nn.Module:
        """The backbone with its trained weights, in eval mode, on CPU."""
        net = build_backbone(self.backbone_spec)
        _load_strict(net, self.backbone_state, f"{self.path}: backbone",
                     self.key_prefixes.get("backbone", ""))
        return net.eval()

    def build_head(self) -> Head:
        """The projection head with its trained weights, in eval mode, on CPU."""
        head = build_head(self.head_spec)
        _load_strict(head, self.head_state, f"{self.path}: head",
                     self.key_prefixes.get("head", ""), strip="net." if self.key_prefixes else "")
        return head.eval()

    @property
    def dataset(self) -> str | None:
        return self.config.get("data")


def _load_strict(module: torch.nn.Module, state: dict, what: str, prefix: str = "",
                 strip: str = "") -> None:
    """load_state_dict that names missing/unexpected keys and shape mismatches in one line,
    in the file's own key names (``prefix`` + key, with repdiag's ``strip`` removed)."""

    def named(key: str) -> str:
        return prefix + (key[len(strip):] if strip and key.startswith(strip) else key)

    own = module.state_dict()
    missing = [named(k) for k in own if k not in state]
    unexpected = [named(k) for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_short(unexpected)}")
        raise UserError(f"{what}: {'; '.join(parts)}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise UserError(
            f"{what}: shape mismatch for {named(k)}: the file has {tuple(state[k].shape)}, the "
            f"model {tuple(own[k].shape)}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    module.load_state_dict(state, strict=True)


def _short(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def make_checkpoint(*, config: dict, backbone_spec: BackboneSpec, head_spec: HeadSpec,
                    backbone: torch.nn.Module, head: torch.nn.Module, epoch: int, step: int = 0,
                    optimizer: dict | None = None, scheduler: dict | None = None,
                    rng: dict | None = None, metrics: list | None = None,
                    extra: dict | None = None) -> dict:
    """Assemble the checkpoint dict (CPU tensors, plain types) described in the module doc."""

    def cpu_state(m):
        return {k: v.detach().cpu().clone() for k, v in m.state_dict().items()}

    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "model": {"backbone": dataclasses.asdict(backbone_spec), "head": head_spec.to_dict()},
        "backbone": cpu_state(backbone),
        "head": cpu_state(head),
        "epoch": int(epoch),
        "step": int(step),
        "optimizer": _to_cpu(optimizer),
        "scheduler": scheduler,
        "rng": rng or {},
        "metrics": list(metrics or []),
        "extra": _to_cpu(extra or {}),
    }


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write a checkpoint dict atomically (temp file, fsync, rename)."""
    atomic_torch_save(ckpt, path)


def load_checkpoint(path: str | os.PathLike, key_map: tuple = (),
                    options: dict | None = None) -> Checkpoint:
    """Load a repdiag checkpoint (or a supported foreign one) as a :class:`Checkpoint`.

    Only tensors and plain types are unpickled. A missing, truncated or foreign
    file raises :class:`UserError` naming the file and the problem.
    """
    raw = safe_torch_load(path, "checkpoint")
    return checkpoint_from_dict(raw, str(path), key_map, options)


def check_format(raw: dict, path: str) -> None:
    """Refuse a checkpoint whose format tag or version this code does not read, naming both.

    The tag must be exactly ``repdiag-checkpoint`` and the version an integer
    from 1 to :data:`VERSION`: a file written by a newer repdiag is refused
    rather than misread (and so never rewritten as an older version).
    """
    tag, version = raw.get("format"), raw.get("version")
    mine = f"this repdiag reads format '{FORMAT}' up to version {VERSION}"
    if tag != FORMAT:
        raise UserError(f"{path}: unknown checkpoint format '{tag}'; {mine}")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{path}: checkpoint version {version!r} is not a positive integer; {mine}")
    if version > VERSION:
        raise UserError(f"{path}: checkpoint version {version} is newer than this repdiag "
                        f"(version {VERSION}); upgrade repdiag to read it")


def checkpoint_from_dict(raw: object, path: str, key_map: tuple = (),
                         options: dict | None = None) -> Checkpoint:
    """Interpret a loaded object as a checkpoint; foreign layouts go to the importers
    (``options``: see :func:`repdiag.importers.import_foreign`)."""
    if isinstance(raw, dict) and str(raw.get("format", "")).startswith("repdiag-checkpoint"):
        check_format(raw, path)
        try:
            model = raw["model"]
            config = raw.get("config", {})
            if not isinstance(config, dict):
                raise TypeError(f"'config' ({type(config).__name__}, expected a dict)")
            metrics = raw.get("metrics", [])
            if not isinstance(metrics, list) or not all(
                    isinstance(m, dict) and "epoch" in m for m in metrics):
                raise TypeError("'metrics' (expected a list of per-epoch dicts with 'epoch')")
            for key in ("backbone", "head"):
                if not isinstance(raw.get(key), dict):
                    raise TypeError(f"'{key}' ({type(raw.get(key)).__name__}, expected a "
                                    "state dict)")
            for key in ("epoch", "step"):
                value = raw.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise TypeError(f"'{key}' ({value!r}, expected a non-negative integer)")
            return Checkpoint(
                path=path,
                config=config,
                backbone_spec=BackboneSpec(**model["backbone"]),
                head_spec=HeadSpec.from_dict(model["head"]),
                backbone_state=raw["backbone"],
                head_state=raw["head"],
                epoch=int(raw.get("epoch", 0)),
                step=int(raw.get("step", 0)),
                optimizer=raw.get("optimizer"),
                scheduler=raw.get("scheduler"),
                rng=raw.get("rng", {}),
                metrics=metrics,
                extra=raw.get("extra", {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise UserError(f"{path}: damaged repdiag checkpoint (missing or bad {e})") from None
    # foreign layouts: torchvision/timm, solo-learn/Lightning, lightly, --map rules
    return Checkpoint(path=path, key_map=tuple(key_map),
                      **import_foreign(raw, path, key_map, options))
