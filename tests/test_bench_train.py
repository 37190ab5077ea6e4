"""bench/bench_train.py runs end to end on a few generated images (1 step per contestant)."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("lightly")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_train.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_writes_all_three_contestants(tmp_path, one_thread):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    result = bench.main(["--device", "cpu", "--data", "synthetic", "--images", "8", "--batch", "4",
                         "--steps", "1", "--warmup", "0", "--workers", "0", "--json", str(out)])
    written = json.loads(out.read_text())
    assert written["results"].keys() == result["results"].keys() == {"ours", "lightly", "reference"}
    for r in written["results"].values():
        assert r["pairs_per_s"] > 0 and r["seconds_per_epoch"] > 0
    assert written["epoch_steps"] == 2 and written["timed_steps"] == 1
    assert set(written["ratios"]) >= {"ours_pairs_per_s_over_reference", "ours_pairs_per_s_over_lightly"}
    for key in ("command", "date", "torch", "git", "machine"):
        assert written[key]
