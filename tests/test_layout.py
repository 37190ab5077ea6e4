import subprocess
import sys


def test_library_never_imports_the_trainer():
    code = ("import sys, repdiag, repdiag.features, repdiag.diagnose, repdiag.commands; "
            "print([m for m in sys.modules if m == 'train' or m.startswith('train.')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_entry_points_show_help():
    for mod in ("repdiag", "train"):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage:" in r.stdout


def _declared_commands() -> dict:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).parent.parent / "pyproject.toml"
    return tomllib.loads(pyproject.read_text())["project"]["entry-points"]["repdiag.commands"]


def _listed(parser) -> list[str]:
    import argparse

    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_the_trainer_registers_its_commands_through_the_entry_point_group():
    from importlib.metadata import EntryPoint

    import train.cli
    from repdiag.cli import COMMANDS_GROUP, command_providers

    assert _declared_commands() == {"train": "train.cli:add_commands"}
    assert EntryPoint("train", "train.cli:add_commands", COMMANDS_GROUP).load() is train.cli.add_commands
    # installed metadata (a fresh `pip install -e .`) or, before a reinstall, the source tree's
    assert [(ep.name, ep.value) for ep in command_providers()] == [("train", "train.cli:add_commands")]


def test_repdiag_lists_the_trainer_commands_first_then_the_diagnostics():
    import argparse

    from repdiag.cli import build_parser
    from repdiag.commands import add_diagnostic_parsers

    diagnostics = argparse.ArgumentParser().add_subparsers()
    add_diagnostic_parsers(diagnostics)
    assert _listed(build_parser()) == ["train", "train-ae", "sweep", *diagnostics.choices]


def test_installed_command_providers_win_over_the_source_tree(monkeypatch):
    from importlib.metadata import EntryPoint

    import repdiag.cli as cli

    installed = [EntryPoint("b", "json:dumps", cli.COMMANDS_GROUP),
                 EntryPoint("a", "json:loads", cli.COMMANDS_GROUP)]
    monkeypatch.setattr(cli, "entry_points", lambda group: installed if group == cli.COMMANDS_GROUP else [])
    assert [ep.name for ep in cli.command_providers()] == ["a", "b"]  # sorted by name
    monkeypatch.setattr(cli, "entry_points", lambda group: [])  # metadata predating the group
    assert [ep.value for ep in cli.command_providers()] == list(_declared_commands().values())


def test_a_provider_whose_package_is_absent_is_left_out(monkeypatch):
    from importlib.metadata import EntryPoint

    import repdiag.cli as cli

    absent = EntryPoint("gone", "repdiag_absent_plugin.cli:add", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "command_providers", lambda: [absent])
    assert _listed(cli.build_parser())[0] == "spectrum"  # only the library's own commands


def test_device_names_are_resolved_in_one_place(monkeypatch):
    import pytest
    import torch

    from repdiag.devices import resolve_device
    from repdiag.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(UserError, match="^unknown device 'mps'; use cpu, cuda or cuda:N$"):
        resolve_device("mps")
    with pytest.raises(UserError, match="^--device 'cuda:1': no CUDA device is available"):
        resolve_device("cuda:1", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    with pytest.raises(UserError, match="this machine has 1 CUDA device"):
        resolve_device("cuda:1")
