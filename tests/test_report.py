"""``repdiag report``: the page's content, and a real headless Chromium that loads it."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from repdiag.cli import main
from train.config import load_config
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=96", "width=0.125", "batch_size=32", "knn_subset=64",
        "knn_k=20", "head.kind=linear", "head.out_dim=8", "epochs=2"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    Trainer(load_config("fmnist-tiny", TINY + ["save_every=1"]), base / "run", quiet=True).run()
    out = base / "out"
    code = main(["report", str(base / "run" / "last.pt"),
                 str(base / "run" / "checkpoints" / "epoch_000.pt"), "--out", str(out),
                 "--tsne-points", "80", "--json"])
    assert code == 0
    return out


def test_report_holds_g_diagnostics_and_a_markdown_twin(report_dir):
    page = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    data = json.loads((report_dir / "report.json").read_text())
    assert [d["label"] for d in data] == ["last.pt", "epoch_000.pt"]
    for d in data:  # the table's numbers are the diagnostics' own
        assert f"<td>{d['rank']['h']['rank']}</td>" in page
        assert d["rank"]["z"]["dim"] == 8 and d["probes"]["head_rank"] == 8
        assert 0 <= d["cka_hz"] <= 1 and len(d["metrics"]) == (2 if d["label"] == "last.pt" else 0)
        # the layer panel: h, then the linear head's output z, with z's rank and RankMe
        assert [s["stage"] for s in d["layers"]] == ["h", "1 linear = z"]
        assert d["layers"][-1]["rank"] == d["rank"]["z"]["rank"]
        assert d["layers"][0]["knn"] == d["probes"]["accuracy"]["h"]
    images = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert len(images) == 1 + 2 + 1 + 1 + 1 + 4  # curves, 2 spectra, rank, probes, layers, 4 t-SNE
    assert all(src.startswith("data:image/png;base64,") for src in images)  # self-contained
    assert "http://" not in page and "https://" not in page and "<script" not in page
    linked = re.findall(r"\(report_files/([^)]+\.png)\)", md)
    assert len(linked) == len(images) and all((report_dir / "report_files" / f).is_file()
                                              for f in linked)
    assert "| model | rank h | rank z | deficit |" in md


def _chromium_check(html_file: Path, tmp_path: Path) -> tuple[dict, str]:
    """Load a page in headless Chromium; the number of images that decoded, and the console."""
    probe = tmp_path / "probe.html"
    checker = ("<script>window.addEventListener('load',function(){var i=Array.from(document.images);"
               "document.body.setAttribute('data-check',JSON.stringify({images:i.length,decoded:"
               "i.filter(function(x){return x.complete&&x.naturalWidth>0}).length}));});</script>")
    probe.write_text(html_file.read_text().replace("</body>", checker + "</body>"))
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    m = re.search(r"data-check=\"([^\"]+)\"", r.stdout)
    assert m, r.stdout[-500:] + r.stderr[-2000:]
    check = json.loads(m.group(1).replace("&quot;", '"'))
    console = "\n".join(line for line in r.stderr.splitlines() if "CONSOLE" in line)
    return check, console


def test_report_loads_in_headless_chromium_with_every_image_decoded(report_dir, tmp_path):
    if CHROMIUM is None:  # scripts/test.sh installs it as root; it says so when it cannot
        if os.environ.get("REPDIAG_SKIP_BROWSER") == "1":
            pytest.skip("chromium could not be installed (REPDIAG_SKIP_BROWSER=1)")
        pytest.fail("Debian's chromium is needed: apt-get install chromium (scripts/test.sh does)")
    check, console = _chromium_check(report_dir / "report.html", tmp_path)
    assert check == {"images": 10, "decoded": 10}
    assert "error" not in console.lower(), console
    # the check itself sees a broken image and a console error
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='data:image/png;base64,AAAA'>"
                   "<script>console.error('boom')</script></body></html>")
    check, console = _chromium_check(bad, tmp_path)
    assert check == {"images": 1, "decoded": 0} and "boom" in console


def test_report_draws_the_monitor_curves(report_dir, tmp_path):
    import torch

    from repdiag.checkpoint import load_checkpoint
    from repdiag.features import FeatureSource
    from repdiag.monitor import HeadMonitor
    from repdiag.report import build_report, write_report

    last = report_dir.parent / "run" / "last.pt"
    ck = load_checkpoint(last)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(60, 3, 28, 28, generator=g), torch.arange(60) % 3)
    mon = HeadMonitor(ck.build_backbone(), ck.build_head(), images, images)
    lines = [mon.step(e) for e in (1, 2)]
    reports = build_report([FeatureSource(last)], ["run"], tsne_points=0, layers=False,
                           monitor={"run": lines})
    written = write_report(reports, tmp_path / "page")
    assert reports[0].monitor == lines and reports[0].layers == []
    md = (tmp_path / "page" / "report.md").read_text()
    assert "(report_files/monitor.png)" in md and "(report_files/layers.png)" not in md
    assert written["figures"] == 1 + 1 + 1 + 1 + 1  # curves, spectrum, rank, probes, monitor
