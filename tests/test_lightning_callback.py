"""HeadDiagnostics in a real Lightning fit of lightly's SimCLR example module.

The module is lightly's example (``examples/pytorch_lightning/simclr.py``:
``backbone`` = a ResNet's children without the classifier,
``SimCLRProjectionHead``, ``NTXentLoss``) at a narrow width, trained for two
epochs on generated images. The logged values must equal what ``repdiag
rank`` and ``repdiag nullspace`` compute offline from the checkpoint that
Lightning's own ModelCheckpoint wrote at the same epoch (read through
repdiag's importer, a different code path), and a run with the callback must
end with the same parameters and RNG state as one without.
"""

import csv
import json
import warnings

import pytest
import torch
from torch import nn

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main
from repdiag.errors import UserError
from repdiag.features import FeatureSet, save_features

lightning = pytest.importorskip("lightning")
pytest.importorskip("lightly")
pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n, seed):
    """Images whose class (0-3) shifts the mean of one colour channel: kNN has something to find."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, 32, 32, generator=g)
    x[:, 0] += 0.5 * y[:, None, None]
    return x, y


def _simclr_module():
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    from repdiag.models import BackboneSpec, build_backbone

    class SimCLR(lightning.LightningModule):  # lightly's example, at width 1/8 (64-d h)
        def __init__(self):
            super().__init__()
            resnet = build_backbone(BackboneSpec("resnet18", 0.125, True))
            self.backbone = nn.Sequential(*list(resnet.children())[:-1])
            self.projection_head = SimCLRProjectionHead(64, 64, 16)
            self.criterion = NTXentLoss()

        def forward(self, x):
            return self.projection_head(self.backbone(x).flatten(start_dim=1))

        def training_step(self, batch, batch_index):
            (x0, x1), _ = batch
            return self.criterion(self.forward(x0), self.forward(x1))

        def validation_step(self, batch, batch_index):
            pass  # only so that Lightning runs the validation loop

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.06)

    return SimCLR()


class _TwoViews(torch.utils.data.Dataset):
    """Two noisy views per image, drawn from the global torch RNG (as torchvision transforms do)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return (x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)), self.y[i]


def _fit(tmp_path, callbacks, logger=False):
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    model = _simclr_module()
    x, y = _images(32, 1)
    loader = torch.utils.data.DataLoader(_TwoViews(x, y), batch_size=16, shuffle=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = lightning.Trainer(max_epochs=2, logger=logger, callbacks=[*callbacks, ckpt],
                                    enable_progress_bar=False, enable_model_summary=False,
                                    accelerator="cpu", num_sanity_val_steps=0)
        trainer.fit(model, loader)
    return model, torch.get_rng_state()


def _offline(ck_path, bank, queries, tmp_path, capsys):
    """repdiag rank / nullspace --json on the features of the checkpoint Lightning wrote."""
    ck = load_checkpoint(ck_path)
    backbone, head = ck.build_backbone().eval(), ck.build_head().eval()
    sets = []
    with torch.no_grad():
        for (x, y), split in ((bank, "train"), (queries, "test")):
            h = backbone(x)
            sets.append(FeatureSet(h=h, z=head(h), y=y, split=split,
                                   weight=ck.build_head().linear_map()[0]))
    path = tmp_path / f"{ck_path.stem}.features.pt"
    save_features(path, *sets)
    out = {}
    for cmd in ("rank", "nullspace"):
        assert main([cmd, str(path), "--json"]) == 0
        out[cmd] = json.loads(capsys.readouterr().out)
    return out


def test_logged_values_equal_offline_diagnostics_and_training_is_unchanged(tmp_path, capsys):
    from lightning.pytorch.loggers import CSVLogger

    from repdiag.lightning import HeadDiagnostics

    bank, queries = _images(128, 2), _images(96, 3)
    cb = HeadDiagnostics(bank, queries, jsonl=tmp_path / "head.jsonl")
    with_cb, rng_with = _fit(tmp_path / "with", [cb], CSVLogger(tmp_path / "logs", name="run"))
    without, rng_without = _fit(tmp_path / "without", [])
    # the callback changes nothing in training: same parameters, same RNG stream afterwards
    for (name, p), q in zip(with_cb.state_dict().items(), without.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(rng_with, rng_without)

    rows = list(csv.DictReader(open(next((tmp_path / "logs").rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("repdiag/rank_h")]
    assert len(logged) == 2 == len(cb.history)
    ckpts = sorted((tmp_path / "with" / "ckpt").glob("epoch=*.ckpt"))
    assert len(ckpts) == 2
    for row, line, ck_path in zip(logged, cb.history, ckpts, strict=True):
        off = _offline(ck_path, bank, queries, tmp_path, capsys)
        r, ns = off["rank"], off["nullspace"]
        assert int(float(row["repdiag/rank_h"])) == r["h"]["rank"]
        assert int(float(row["repdiag/rank_z"])) == r["z"]["rank"]
        assert int(float(row["repdiag/rank_deficit"])) == r["rank_deficit"]
        assert float(row["repdiag/rankme_h"]) == pytest.approx(r["h"]["effective_rank"], rel=1e-4)
        assert float(row["repdiag/rankme_z"]) == pytest.approx(r["z"]["effective_rank"], rel=1e-4)
        assert float(row["repdiag/energy_range"]) == pytest.approx(ns["energy_range"], rel=1e-4)
        for feat in ("h", "h_r", "z"):
            assert float(row[f"repdiag/knn_{feat}"]) == pytest.approx(ns["accuracy"][feat], abs=1e-6)
        # the 64x64 first layer has full column rank: h_n is 0, undefined, not logged
        assert ns["accuracy"]["h_n"] is None and not row.get("repdiag/knn_h_n")
        assert line["rank_h"] == r["h"]["rank"] and line["knn_h"] == ns["accuracy"]["h"]
    lines = [json.loads(s) for s in open(tmp_path / "head.jsonl")]
    assert [ln["epoch"] for ln in lines] == [1, 2]


def test_validation_data_split_in_two_when_no_bank_given(tmp_path):
    from repdiag.lightning import HeadDiagnostics

    torch.manual_seed(0)
    model = _simclr_module()
    x, y = _images(32, 1)
    vx, vy = _images(40, 4)
    cb = HeadDiagnostics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = lightning.Trainer(max_epochs=1, logger=False, callbacks=[cb],
                                    enable_progress_bar=False, enable_checkpointing=False,
                                    enable_model_summary=False, accelerator="cpu")
        trainer.fit(model, torch.utils.data.DataLoader(_TwoViews(x, y), batch_size=16),
                    torch.utils.data.DataLoader(torch.utils.data.TensorDataset(vx, vy),
                                                batch_size=16))
    assert torch.equal(cb.monitor.bank_x, vx[:20]) and torch.equal(cb.monitor.query_y, vy[20:])
    assert [ln["n_bank"] for ln in cb.history] == [20]


def test_module_without_backbone_is_one_line_error():
    from repdiag.lightning import HeadDiagnostics

    class Plain(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 2)

    class _Plain(Plain):
        def __init__(self):
            super().__init__()
            self.backbone, self.projector = nn.Identity(), nn.Linear(4, 2)

    cb = HeadDiagnostics((torch.rand(4, 4), torch.zeros(4, dtype=torch.long)),
                         (torch.rand(4, 4), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(UserError, match="Plain has no backbone under any of backbone, .*net"):
        cb.setup(None, Plain(), "fit")
    with pytest.raises(UserError, match="given no bank and queries, and _Plain has no "
                                        "validation_step"):
        HeadDiagnostics().setup(None, _Plain(), "fit")
    with pytest.raises(UserError, match="both bank and queries, or neither"):
        HeadDiagnostics(bank=(torch.rand(4, 4), torch.zeros(4)))
