"""YAML read as data: no aliases or anchors, no duplicate keys, bounded size and depth.

Config files, grid files and ``--set`` values are YAML. Plain ``yaml.safe_load``
expands aliases (a few hundred bytes of ``&a [*a, *a, ...]`` grow into
gigabytes), lets the last of two equal keys win silently and recurses without
limit on deep nesting. :func:`load_yaml` refuses all three, and every problem
is one :class:`UserError` line naming the file (or ``--set`` key) and the
line and column where YAML saw it.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from repdiag.errors import UserError, reason

#: the largest config or grid file read; the shipped ones are under 2 KiB
MAX_BYTES = 1 << 20
#: the deepest nesting accepted (a run config is 2 levels deep)
MAX_DEPTH = 50


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases/anchors and with duplicate mapping keys refused."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, f"alias *{event.anchor} refused (aliases and anchors are not "
                "accepted: write the value out)", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, f"anchor &{event.anchor} refused (aliases and anchors are not "
                "accepted: write the value out)", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _describe(e: yaml.YAMLError) -> str:
    """A YAML error as one short phrase with its position."""
    problem = getattr(e, "problem", None) or getattr(e, "context", None)
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    if problem is None:
        problem = reason(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def load_yaml(text: str, where: str):
    """Parse one YAML document as plain data; ``where`` names the source in errors.

    Refused, each as one UserError line: syntax errors, aliases and anchors,
    duplicate keys, nesting deeper than :data:`MAX_DEPTH`.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"{where}: not valid YAML ({_describe(e)})") from None
    except RecursionError:
        raise UserError(f"{where}: not valid YAML (nested too deeply)") from None


def read_yaml_file(path: str | os.PathLike, what: str = "YAML file"):
    """Read and parse a YAML file, refusing folders, special files, binary and huge files.

    Never opens anything but a regular file (a FIFO would block), and names the
    file and the reason in one UserError line.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a {what}")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file, expected a {what}")
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise UserError(f"{path}: {size} bytes is too large for a {what} "
                            f"(at most {MAX_BYTES} bytes)")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({reason(e)})") from None
    if b"\0" in data:
        raise UserError(f"{path}: a binary file, not a {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text, so not a {what}") from None
    return load_yaml(text, str(path))
