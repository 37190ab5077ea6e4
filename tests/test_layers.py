"""The layer walk through the head: ranks known by construction, every head kind, lightly's heads."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main
from repdiag.features import FeatureSet, save_features
from repdiag.layers import layer_outputs, layer_report
from repdiag.models import Head, HeadSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _cos_knn(bank, yb, q, yq, k=200, T=0.5):
    """Brute-force weighted kNN (cosine, vote exp(sim/T)), sample by sample in numpy."""
    bank = bank / np.maximum(np.linalg.norm(bank, axis=1, keepdims=True), 1e-12)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    hits = 0
    for i in range(len(q)):
        sim = bank @ q[i]
        top = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(int(yb.max()) + 1)
        np.add.at(votes, yb[top], np.exp(sim[top] / T))
        hits += int(np.argmax(votes) == yq[i])
    return hits / len(q)


def _known_head():
    """Linear 8 -> 6 whose rows 0-3 have rank 3 (positive, so the ReLU keeps them) and whose
    rows 4-5 are 0 with bias -1 (always negative: the ReLU zeroes them); then Linear 6 -> 2."""
    g = torch.Generator().manual_seed(0)
    first = nn.Linear(8, 6)
    with torch.no_grad():
        first.weight.zero_()
        first.weight[:4] = torch.rand(4, 3, generator=g) @ torch.rand(3, 8, generator=g)
        first.bias.copy_(torch.tensor([0.0, 0, 0, 0, -1, -1]))
    return nn.Sequential(first, nn.ReLU(), nn.Linear(6, 2))


def test_ranks_known_by_construction():
    g = torch.Generator().manual_seed(1)
    y_tr, y_te = torch.arange(80) % 4, torch.arange(60) % 4
    h_tr = torch.rand(80, 8, generator=g) + nn.functional.one_hot(y_tr, 8)
    h_te = torch.rand(60, 8, generator=g) + nn.functional.one_hot(y_te, 8)
    head = _known_head()
    rows = layer_report(h_tr, y_tr, h_te, y_te, head)
    assert [r["stage"] for r in rows] == ["h", "1 linear", "2 relu", "3 linear = z"]
    assert [r["dim"] for r in rows] == [8, 6, 6, 2]
    # rank 3 from the rank-3 rows plus the constant column -1 (the rank is uncentred);
    # the ReLU zeroes that column: 3; the last layer maps onto 2 dimensions
    assert [r["rank"] for r in rows] == [8, 4, 3, 2]
    assert rows[1]["layer_rank"] == 3 and rows[3]["layer_rank"] == 2
    # each Linear's input energy in its row space, against scipy's orthonormal basis
    with torch.no_grad():
        a1 = head[0](h_te)
        outs_te = [h_te, a1, head[1](a1), head(h_te)]
        a1_tr = head[0](h_tr)
        outs_tr = [h_tr, a1_tr, head[1](a1_tr), head(h_tr)]
    for row, x, lin in ((rows[1], h_te, head[0]), (rows[3], outs_te[2], head[2])):
        # cut-off at float32 precision: the float32 product of rank 3 has a 4th value near 1e-8
        Q = scipy.linalg.orth(lin.weight.detach().double().numpy().T,
                              rcond=8 * np.finfo(np.float32).eps)
        X = x.double().numpy()
        assert row["input_energy_range"] == pytest.approx(
            np.linalg.norm(X @ Q) ** 2 / np.linalg.norm(X) ** 2, rel=1e-6)
    for row, tr, te in zip(rows, outs_tr, outs_te, strict=True):
        assert row["knn"] == pytest.approx(_cos_knn(tr.numpy(), y_tr.numpy(), te.numpy(),
                                                    y_te.numpy()), abs=1e-9), row["stage"]
        s = np.linalg.svd(te.double().numpy(), compute_uv=False)
        p = s / s.sum() + 1e-7
        assert row["rankme"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-4)


@pytest.mark.parametrize("spec,types", [
    (HeadSpec("none", in_dim=8), ["input"]),
    (HeadSpec("linear", in_dim=8, out_dim=4), ["input", "linear"]),
    (HeadSpec("mlp", in_dim=8, hidden_dim=6, out_dim=4), ["input", "linear", "bn", "relu", "linear"]),
    (HeadSpec("mlp", in_dim=8, hidden_dim=6, out_dim=4, num_layers=3, last_bn=True,
              activation="tanh"),
     ["input", "linear", "bn", "tanh", "linear", "bn", "tanh", "linear", "bn"]),
    (HeadSpec("ae", in_dim=8, hidden_dim=6, out_dim=4, activation="sigmoid"),
     ["input", "linear", "sigmoid", "linear"]),
    (HeadSpec("directclr", in_dim=8, d0=3), ["input", "directclr"]),
    (HeadSpec("sequential", in_dim=8, layers=[
        {"type": "linear", "in": 8, "out": 6, "bias": False}, {"type": "bn", "dim": 6, "affine": True},
        {"type": "silu"}, {"type": "linear", "in": 6, "out": 4, "bias": True}]),
     ["input", "linear", "bn", "silu", "linear"]),
])
def test_walk_of_every_head_kind_ends_at_z(spec, types):
    torch.manual_seed(0)
    head = Head(spec)
    head.train()  # the walk runs in eval mode and gives the mode back
    for m in head.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    h = torch.randn(20, 8)
    stages = layer_outputs(head, h)
    assert [s[1] for s in stages] == types
    assert head.training
    with torch.no_grad():
        torch.testing.assert_close(stages[-1][3][0], head.eval()(h))


def _lightly_vicreg(tmp_path):
    from lightly.models.modules.heads import VICRegProjectionHead

    from repdiag.models import BackboneSpec, build_backbone

    class Model(nn.Module):  # the pattern of lightly's examples
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(build_backbone(
                BackboneSpec("resnet18", 0.125, True)).children())[:-1])
            self.projection_head = VICRegProjectionHead(64, 32, 16)  # 3 Linear layers

    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():
        for m in model.projection_head.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path / "vicreg.pt"
    torch.save(model.state_dict(), path)
    return model, path


def test_lightly_vicreg_head_layer_by_layer_through_the_importer(tmp_path):
    pytest.importorskip("lightly")
    model, path = _lightly_vicreg(tmp_path)
    head = load_checkpoint(path).build_head()
    h = torch.randn(12, 64)
    lightly_layers = list(model.projection_head.layers.eval())
    expected, x = [], h
    with torch.no_grad():
        for layer in lightly_layers:  # lightly's own modules, one after the other
            x = layer(x)
            expected.append(x)
    stages = layer_outputs(head, h)[1:]
    assert [s[1] for s in stages] == ["linear", "bn", "relu", "linear", "bn", "relu", "linear"]
    for (name, _, _, (got,)), want in zip(stages, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


def test_cli_layers_json_figure_and_refusals(tmp_path, capsys):
    pytest.importorskip("lightly")
    _, path = _lightly_vicreg(tmp_path)
    out = tmp_path / "figs"
    code = main(["layers", str(path), "--data", "synthetic", "--limit", "96", "--json",
                 "--probe", "linear", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rep = json.loads(captured.out)
    stages = rep["stages"]
    assert [s["dim"] for s in stages] == [64, 32, 32, 32, 32, 32, 32, 16]
    assert all(0 <= s["knn"] <= 1 and 0 <= s["linear"] <= 1 for s in stages)
    assert [s["stage"] for s in stages if "input_energy_range" in s] == \
        ["1 linear", "4 linear", "7 linear = z"]
    assert (out / "layers.png").stat().st_size > 0 and (out / "layers.pdf").exists()
    # z of the walk is repdiag's z: the last stage's rank is `repdiag rank`'s rank of z
    assert main(["rank", str(path), "--data", "synthetic", "--limit", "96", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["z"]["rank"] == stages[-1]["rank"]

    feats = tmp_path / "f.pt"
    fs = FeatureSet(h=torch.randn(10, 4), y=torch.arange(10) % 2)
    save_features(feats, fs, fs)
    assert main(["layers", str(feats)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "layers needs a checkpoint" in err
    assert main(["layers", str(path), "--preset", "nope"]) == 2
    assert "unknown kNN preset 'nope'" in capsys.readouterr().err


def test_layers_figure_draws_each_model_against_depth():
    from repdiag.plots import layers_figure

    def rows(n, linear):
        return [{"depth": d, "stage": f"{d} linear", "layer": "input" if d == 0 else "linear",
                 "rank": 10 - d, "rankme": 5.0 - d, "knn": 0.9 - 0.1 * d,
                 **({"linear": 0.8} if linear else {})} for d in range(n)]

    fig = layers_figure({"mlp": rows(4, True), "linear": rows(2, False)})
    acc_ax, rank_ax = fig.axes
    # kNN for both, the linear probe for the one that has it; rank and RankMe for both
    assert [ln.get_label() for ln in acc_ax.lines] == ["mlp (knn)", "mlp (linear)", "linear (knn)"]
    assert len(rank_ax.lines) == 4
    np.testing.assert_allclose(acc_ax.lines[0].get_ydata(), [90, 80, 70, 60])
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["h", "linear", "linear", "linear = z"]
