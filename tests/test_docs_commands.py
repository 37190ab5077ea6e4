"""The commands and links shown in the documentation exist.

Every shell command in README.md, docs/*.md, figures/README.md and bench/README.md
code blocks that runs ``repdiag``, ``python -m train`` (or ``torchrun ... -m train``),
``python analyses/X.py``, ``python bench/X.py`` or ``python scripts/X.py`` is parsed, never run: its
sub-command must exist and every ``--flag`` must be an option of that
sub-command's own argparse parser (built in-process: repdiag's from
:func:`repdiag.cli.build_parser`, a script's by calling its ``main`` with
``ArgumentParser.parse_args`` intercepted), and the whole argument list must
parse. Every relative link in those pages must point to an existing file, and
every file named in the README's layout must exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from repdiag.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
         ROOT / "figures" / "README.md", ROOT / "bench" / "README.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PYTHON = re.compile(r"^(\S*/)?python3?$")


# --------------------------------------------------------------------------- finding commands
def code_lines(text: str) -> list[str]:
    """The lines of fenced code blocks and of 4-space-indented blocks, continuations joined."""
    lines = [ln for block in FENCE.findall(text) for ln in block.splitlines()]
    outside = FENCE.sub("", text)
    lines += [ln[4:] for ln in outside.splitlines() if ln.startswith("    ") and ln.strip()]
    joined, cur = [], ""
    for ln in lines:
        if ln.rstrip().endswith("\\"):
            cur += ln.rstrip()[:-1] + " "
            continue
        joined.append(cur + ln)
        cur = ""
    return joined


def command_of(line: str) -> tuple[str, list[str]] | None:
    """``(program, argv)`` for a line that runs repdiag, the trainer or a script; else None.

    ``program`` is ``"repdiag"`` (argv starts with the sub-command) or the path of
    the script relative to the repository root.
    """
    line = line.strip()
    if line.startswith("$ "):
        line = line[2:]
    try:  # shell operators become tokens of their own: the command ends at the first one
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return None
    ops = [i for i, t in enumerate(tokens) if t and set(t) <= set("();<>|&")]
    tokens = tokens[:ops[0]] if ops else tokens
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if not tokens:
        return None
    head = tokens[0]
    if head == "repdiag":
        return "repdiag", tokens[1:]
    if head == "torchrun" or PYTHON.match(head):
        if "-m" in tokens:
            i = tokens.index("-m")
            if i + 1 < len(tokens) and tokens[i + 1] in ("train", "repdiag"):
                rest = tokens[i + 2:]
                return "repdiag", (["train", *rest] if tokens[i + 1] == "train" else rest)
            return None
        if PYTHON.match(head) and len(tokens) > 1 and re.fullmatch(
                r"(analyses|bench|scripts)/\w+\.py", tokens[1]):
            return tokens[1], tokens[2:]
    return None


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, program, argv)`` for every command shown in the documentation pages."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            cmd = command_of(line)
            if cmd is not None:
                found.append((f"{page.relative_to(ROOT)}: {line.strip()}", *cmd))
    return found


# --------------------------------------------------------------------------- their parsers
class _Captured(Exception):
    def __init__(self, parser):
        self.parser = parser


def script_parser(path: str, monkeypatch) -> argparse.ArgumentParser:
    """The argparse parser a script's ``main`` builds, caught at its ``parse_args`` call."""
    file = ROOT / path
    assert file.is_file(), f"{path}: no such script"
    monkeypatch.syspath_prepend(str(file.parent))

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    spec = importlib.util.spec_from_file_location(f"_docs_{file.parent.name}_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Captured) as caught:
        module.main()
    monkeypatch.undo()
    return caught.value.parser


def repdiag_subparser(name: str) -> argparse.ArgumentParser:
    """The parser of ``repdiag NAME``; a one-line failure if there is no such sub-command."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert name in sub.choices, f"repdiag has no sub-command {name!r} (it has {', '.join(sub.choices)})"
    return sub.choices[name]


def check_arguments(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    """Every ``--flag`` in argv is an option of parser (exactly, no abbreviation), and argv parses."""
    for token in argv:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in parser._option_string_actions, \
                f"{where}: {parser.prog} has no option {flag}"
    try:
        parser.parse_args(argv)
    except SystemExit as e:
        assert e.code == 0, f"{where}: {parser.prog} refuses these arguments"


def check_command(where: str, program: str, argv: list[str], monkeypatch, capsys) -> None:
    if program == "repdiag":
        assert argv, f"{where}: no sub-command"
        parser, argv = repdiag_subparser(argv[0]), argv[1:]
    else:
        parser = script_parser(program, monkeypatch)
    check_arguments(parser, argv, where)
    capsys.readouterr()


COMMANDS = documented_commands()


def test_the_pages_show_commands_of_every_kind():
    programs = {program.split("/")[0] for _, program, _ in COMMANDS}
    assert {"repdiag", "analyses", "bench"} <= programs
    assert any(argv[:1] == ["train"] and "-m train" in where for where, _, argv in COMMANDS)


@pytest.mark.parametrize("where,program,argv", COMMANDS, ids=[w[:90] for w, _, _ in COMMANDS])
def test_documented_command_parses(where, program, argv, monkeypatch, capsys):
    check_command(where, program, argv, monkeypatch, capsys)


# --------------------------------------------------------------------------- the check itself
def test_a_made_up_flag_fails(monkeypatch, capsys):
    snippet = "Run it:\n\n```bash\nrepdiag nullspace runs/lin/last.pt --probe knn --no-such-flag 3\n```\n"
    [line] = code_lines(snippet)
    where, (program, argv) = "snippet", command_of(line)
    with pytest.raises(AssertionError, match="repdiag nullspace has no option --no-such-flag"):
        check_command(where, program, argv, monkeypatch, capsys)


def test_a_made_up_sub_command_and_script_flag_fail(monkeypatch, capsys):
    program, argv = command_of("repdiag nullspcae runs/lin/last.pt")
    with pytest.raises(AssertionError, match="no sub-command 'nullspcae'"):
        check_command("snippet", program, argv, monkeypatch, capsys)
    program, argv = command_of("    .venv/bin/python analyses/probe_nesting.py ck.pt --limt 10")
    with pytest.raises(AssertionError, match="has no option --limt"):
        check_command("snippet", program, argv, monkeypatch, capsys)
    program, argv = command_of("torchrun --nproc_per_node=2 -m train --config x --outt runs/x")
    with pytest.raises(AssertionError, match="repdiag train has no option --outt"):
        check_command("snippet", program, argv, monkeypatch, capsys)


def test_commands_are_found_in_fences_indented_blocks_and_continuations():
    text = ("```bash\nrepdiag rank a.pt \\\n  --json   # comment --not-a-flag\n```\n\n"
            "    python bench/bench_tsne.py --n 10\n\nprose repdiag --x\n")
    cmds = [command_of(ln) for ln in code_lines(text)]
    assert cmds == [("repdiag", ["rank", "a.pt", "--json"]), ("bench/bench_tsne.py", ["--n", "10"])]


# --------------------------------------------------------------------------- links and layout
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", t)
            and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    missing = [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files: {missing}"


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[ok](p.md) [web](https://x.org/a) [anchor](#x) [bad](docs/nothing.md#y)")
    assert [t for t in relative_links(page) if not (page.parent / t.split("#")[0]).exists()] == \
        ["docs/nothing.md#y"]


def layout_paths(readme: str) -> list[str]:
    """Paths named in the README's Layout block: top-level folders and the files under them."""
    block = readme.split("## Layout", 1)[1]
    block = FENCE.search(block).group(1)
    paths, top = [], None
    for line in block.splitlines():
        m = re.match(r"(\S+/)\s", line + " ")
        if m:
            top = m.group(1)
            paths.append(top)
        if top is None:
            continue
        sub = re.match(r"  (\S+/)\s", line)
        base = top + sub.group(1) if sub else top
        if sub:
            paths.append(base)
        for name in re.findall(r"(?<![\w/.])([a-z_][a-z0-9_]*\.(?:py|sh|ipynb)|[a-z]+/)(?=[\s,;)]|$)", line):
            if name != top and name != (sub.group(1) if sub else None):
                paths.append(top + name)
    return paths


def test_every_file_named_in_the_readme_layout_exists():
    paths = layout_paths((ROOT / "README.md").read_text())
    assert len(paths) > 20
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"README layout names missing paths: {missing}"


# --------------------------------------------------------------------------- flags named in prose
INLINE = re.compile(r"`([^`\n]+)`")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def inline_flags(text: str) -> list[str]:
    """The ``--flags`` in inline code spans (not in code blocks) of a page."""
    prose = FENCE.sub("", text)
    return [f for span in INLINE.findall(prose) for f in FLAG.findall(span)]


def known_flags(monkeypatch) -> set[str]:
    """Every option of every repdiag sub-command and of the analysis scripts."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {f for p in sub.choices.values() for f in p._option_string_actions}
    return flags | set(script_parser("analyses/main_job.py", monkeypatch)._option_string_actions)


def test_flags_named_in_the_prose_exist(monkeypatch):
    known = known_flags(monkeypatch)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    unknown = {(str(p.relative_to(ROOT)), f) for p in pages
               for f in inline_flags(p.read_text()) if f not in known}
    assert not unknown, f"flags in the documentation that no command takes: {sorted(unknown)}"


def test_the_prose_check_sees_a_made_up_flag(monkeypatch):
    text = "Use `repdiag rank --json` or `--checkpoint best|last`, not `--made-up`.\n```\n--fenced\n```\n"
    assert inline_flags(text) == ["--json", "--checkpoint", "--made-up"]
    assert [f for f in inline_flags(text) if f not in known_flags(monkeypatch)] == ["--made-up"]
