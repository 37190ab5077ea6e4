"""The ``repdiag`` command line: a thin layer over the library.

User mistakes (:class:`repdiag.errors.UserError`, bad arguments) print one
line on stderr and exit with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repdiag", description=(
        "repdiag: what is your projection head doing to your representation? "
        "Train SimCLR/SimSiam with any head, then measure spectra, ranks, the head's "
        "null space and probe accuracies on h, h_r, h_n and z."))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    try:  # the trainer ships in the same distribution; the library itself never imports it
        from train.cli import add_train_parser
    except ImportError:  # pragma: no cover - only when train/ was removed
        add_train_parser = None
    if add_train_parser is not None:
        add_train_parser(sub)
        from train.cli import add_sweep_parser, add_train_ae_parser

        add_train_ae_parser(sub)
        add_sweep_parser(sub)
    from repdiag.commands import add_diagnostic_parsers, add_layers_parser

    add_diagnostic_parsers(sub)
    add_layers_parser(sub)
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
