"""analyses/choose_cpu_config.py at the smoke scale (generated data, seconds): the held-out
bank and queries avoid every image a run trains on, the test split is never read, and the
chosen configuration is the grid's best mean."""

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def choose():
    sys.path.insert(0, str(ROOT / "analyses"))
    try:
        yield importlib.import_module("choose_cpu_config")
    finally:
        sys.path.remove(str(ROOT / "analyses"))


def test_training_indices_are_the_images_load_dataset_keeps(choose):
    from repdiag.data import load_dataset

    for seed in (0, 3):
        full = load_dataset("synthetic", seed=seed, val_fraction=0).train
        idx = choose.training_indices(full.labels, 100, (seed,))
        kept = load_dataset("synthetic", seed=seed, val_fraction=0, limit=100).train
        # the same images (as sets of rows; load_dataset keeps them in index order)
        assert torch.equal(full.images[idx], kept.images)
        assert torch.equal(full.labels[idx], kept.labels)
    both = choose.training_indices(full.labels, 100, (0, 3))
    one = set(choose.training_indices(full.labels, 100, (0,)).tolist())
    assert one < set(both.tolist())  # the two seeds' subsets differ; both are excluded


def test_heldout_sets_are_disjoint_and_stratified(choose):
    labels = torch.arange(4).repeat(50)  # 200 images, 4 classes
    exclude = torch.arange(0, 200, 3)
    q, b = choose.heldout_indices(labels, exclude, 40, 60)
    sq, sb, se = set(q.tolist()), set(b.tolist()), set(exclude.tolist())
    assert len(sq) == 40 and len(sb) == 60 and not (sq & sb) and not (sq & se) and not (sb & se)
    assert torch.bincount(labels[q], minlength=4).tolist() == [10] * 4
    with pytest.raises(choose.common.UserError, match="exceed the 133 training images"):
        choose.heldout_indices(labels, exclude, 100, 100)


def test_choice_is_the_best_mean_and_the_test_split_is_never_read(choose, monkeypatch, tmp_path):
    import repdiag.data
    import train.trainer
    from repdiag.data.base import Dataset

    class NoTest(Dataset):
        """A Dataset whose test split raises when read."""

        @property
        def test(self):
            raise AssertionError("the test split was read")

        @test.setter
        def test(self, value):
            self._test = value

    real = repdiag.data.load_dataset

    def guarded(*a, **kw):
        ds = real(*a, **kw)
        return NoTest(**{f.name: getattr(ds, f.name)
                         for f in dataclasses.fields(ds)})

    monkeypatch.setattr(repdiag.data, "load_dataset", guarded)
    monkeypatch.setattr(train.trainer, "load_dataset", guarded)
    monkeypatch.setattr(choose, "LRS", (1e-3, 1e-2))  # 4 grid points keep the test short
    smoke = choose.common.SCALE_TABLE["smoke"]  # synthetic: 512 training images, 200 trained on
    monkeypatch.setitem(choose.common.SCALE_TABLE, "smoke", dataclasses.replace(
        smoke, g_set=smoke.g_set + ("data_limit=200", "val_fraction=0")))
    rc = choose.main(["--scale", "smoke", "--seeds", "0", "--quiet", "--queries", "60",
                      "--bank", "120", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "fig")])
    assert rc == 0
    out = tmp_path / "fig" / "smoke"
    meta = json.loads((out / "choose_cpu_config.json").read_text())
    table = pd.read_csv(out / "choose_cpu_config.csv")
    assert len(table) == 4 and meta["heldout"] == {"queries": 60, "bank": 120, "trained_on": 200,
                                                   "select_seed": choose.SELECT_SEED}
    means = [r["mean"] for r in meta["grid"]]
    best = meta["grid"][means.index(max(means))]
    assert meta["choice"] == {"lr": best["lr"], "temperature": best["temperature"]}
    assert table.loc[table["chosen"] == "yes", "mean (%)"].item() == round(100 * max(means), 2)
    assert all(0 <= m <= 1 for m in means)
