"""scripts/concepts_figure.py, the README's picture: its numbers against closed forms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "concepts_figure.py"


def _load():
    spec = importlib.util.spec_from_file_location("concepts_figure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_split_and_the_rank_deficit_drawn_are_the_closed_forms():
    c = _load().concepts()
    a, h = c["a"], c["h"]
    h_r = (a @ h) / (a @ a) * a                          # projection onto the row space of a 1 x m A
    torch.testing.assert_close(c["h_r"], h_r, atol=1e-12, rtol=0)
    torch.testing.assert_close(c["h_n"], h - h_r, atol=1e-12, rtol=0)
    assert abs(float(a @ c["h_n"])) < 1e-12              # A h_n = 0: the head cannot see h_n
    assert (c["rank_h"], c["rank_z"], c["deficit"]) == (16, 6, 10)
    eig_z = torch.as_tensor(c["eig_z"])
    assert eig_z[5] > 1e6 * eig_z[6:].abs().max()        # six non-zero eigenvalues, then round-off


def test_the_script_writes_its_png(tmp_path):
    out = tmp_path / "fig" / "concepts.png"
    assert _load().main(["--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
