"""examples/diagnose.ipynb runs top to bottom on the CPU, and prints what the CLI prints.

The notebook is executed by nbclient in a kernel started from this interpreter
(a kernel spec written to a temporary JUPYTER_PATH), with its temporary files
and the feature cache under pytest's tmp_path. Its kNN accuracies on h, h_r, h_n
and z must equal those of ``repdiag nullspace --probe knn --json`` on the
checkpoint it trained, and its ranks those of ``repdiag rank --json``.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "diagnose.ipynb"
KERNEL = "repdiag-test-python"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert any("import repdiag" in c.source for c in code)


def _outputs(cell) -> str:
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.get("text", ""))
        elif o.output_type == "execute_result":  # the value of the cell's last expression
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_notebook_executes_on_the_cpu_and_agrees_with_the_cli(tmp_path, monkeypatch, capsys):
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "repdiag test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("REPDIAG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parent.parent))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=60, startup_timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.monotonic() - start < 60
    text = [_outputs(c) for c in nb.cells if c.cell_type == "code"]

    run = Path(json.loads(next(t for t in text if '"out"' in t).strip().splitlines()[-1])["out"])
    assert run.parent.parent == tmp_path and (run / "last.pt").is_file()
    acc = ast.literal_eval(next(t for t in text if "'h_r'" in t))  # the dict it shows, in %
    ranks = re.search(r"rank\(H\) = (\d+), rank\(Z\) = (\d+), rank deficit = (-?\d+)", "\n".join(text))
    assert ranks, text
    assert {p.name for p in run.parent.iterdir()} >= {"fig4.png", "fig4.pdf", "spectrum.png",
                                                      "spectrum.pdf"}
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)

    from repdiag.cli import main

    capsys.readouterr()
    assert main(["nullspace", str(run / "last.pt"), "--probe", "knn", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["accuracy"]
    assert acc == {k: round(100 * cli[k], 2) for k in ("h", "h_r", "h_n", "z")}
    assert main(["rank", str(run / "last.pt"), "--split", "test", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    h, z, deficit = (int(g) for g in ranks.groups())
    assert (h, z, deficit) == (cli["h"]["rank"], cli["z"]["rank"], cli["rank_deficit"])
