"""The ``repdiag`` command line: a thin layer over the library.

User mistakes (:class:`repdiag.errors.UserError`, bad arguments) print one
line on stderr and exit with code 2; no traceback.

Sub-commands come from two places: the library's own diagnostics
(:func:`repdiag.commands.add_diagnostic_parsers`) and providers declared in the
``repdiag.commands`` entry-point group.  The trainer (package ``train``, same
distribution) registers ``train``, ``train-ae`` and ``sweep`` that way in
pyproject.toml, so the library never imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
import warnings
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from repdiag.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):
        if _wants_json(sys.argv[1:] if _ARGV is None else _ARGV):
            print(json.dumps({"error": f"{self.prog}: {message}"}))
        self.exit(2, f"{self.prog}: error: {message}\n")


_ARGV: list[str] | None = None


def _wants_json(argv) -> bool:
    return "--json" in (argv or ())


#: entry-point group of sub-command providers: each is a function ``add(subparsers)``
COMMANDS_GROUP = "repdiag.commands"


def command_providers() -> list[EntryPoint]:
    """The ``repdiag.commands`` entry points, sorted by name.

    Read from the installed metadata.  A source tree whose installed metadata
    does not declare the group yet (an editable install made before it, not
    reinstalled) reads it from the ``pyproject.toml`` beside the package.
    """
    eps = {(ep.name, ep.value): ep for ep in entry_points(group=COMMANDS_GROUP)}
    if not eps:
        eps = {(ep.name, ep.value): ep for ep in _declared_in_source_tree()}
    return sorted(eps.values(), key=lambda ep: ep.name)


def _declared_in_source_tree() -> list[EntryPoint]:
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return []
    if project.get("name") != "repdiag":
        return []
    group = project.get("entry-points", {}).get(COMMANDS_GROUP, {})
    return [EntryPoint(name, value, COMMANDS_GROUP) for name, value in group.items()]


def build_parser() -> argparse.ArgumentParser:
    """The ``repdiag`` parser: the providers' sub-commands (the trainer's first), then the
    library's diagnostics."""
    parser = _Parser(prog="repdiag", description=(
        "repdiag: what is your projection head doing to your representation? "
        "Train SimCLR/SimSiam with any head, then measure spectra, ranks, the head's "
        "null space and probe accuracies on h, h_r, h_n and z."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for ep in command_providers():
        try:
            add = ep.load()
        except ModuleNotFoundError as e:  # the provider's package is not installed
            if e.name is None or not (ep.module + ".").startswith(e.name + "."):
                raise
            continue
        add(sub)
    from repdiag.commands import add_diagnostic_parsers

    add_diagnostic_parsers(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line, no source location."""
    print(f"repdiag: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``repdiag`` console script; returns the exit code."""
    global _ARGV
    warnings.showwarning = _show_warning
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(_ARGV)
    except SystemExit as e:  # --help, or a usage error already reported in one line
        return int(e.code or 0)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        message = " ".join(str(e).split())  # one line, whatever the message held
        if getattr(args, "json", False):
            print(json.dumps({"error": message}))
        print(f"repdiag: {message}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("repdiag: interrupted", file=sys.stderr)
        return 130
