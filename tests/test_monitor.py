"""HeadMonitor in a plain loop: numbers against independent computations, no side effects."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from repdiag.errors import UserError
from repdiag.monitor import HeadMonitor, read_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 12, generator=g) + 2.0 * nn.functional.one_hot(y, 12).float()
    return x, y


def _model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(12, 10), nn.Dropout(0.5), nn.BatchNorm1d(10))
    # first layer 10 -> 4: a 6-dimensional null space, so h_n is defined
    head = nn.Sequential(nn.Linear(10, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    return backbone, head


def _cos_knn(bank, yb, q, yq, k=200, T=0.5):
    """Brute-force weighted kNN (cosine, vote exp(sim/T)), numpy, sample by sample."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    hits = 0
    for i in range(len(q)):
        sim = bank @ q[i]
        top = np.argsort(-sim)[:k]
        votes = np.zeros(int(yb.max()) + 1)
        np.add.at(votes, yb[top], np.exp(sim[top] / T))
        hits += int(np.argmax(votes) == yq[i])
    return hits / len(q)


def test_step_matches_independent_numbers_and_leaves_model_alone(tmp_path):
    backbone, head = _model()
    backbone.train()
    head.eval()
    head[1].train()  # a mixed state must come back exactly as it was
    flags = [m.training for m in [*backbone.modules(), *head.modules()]]
    bank, queries = _data(90, 1), _data(60, 2)
    mon = HeadMonitor(backbone, head, bank, queries, jsonl=tmp_path / "m.jsonl", every=2)
    rng = torch.get_rng_state()
    assert mon.step(1) == {}  # not due
    line = mon.step(2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in [*backbone.modules(), *head.modules()]] == flags

    backbone.eval()
    head.eval()
    with torch.no_grad():
        hq, hb = backbone(queries[0]), backbone(bank[0])
        zq, zb = head(hq), head(hb)
    assert line["rank_h"] == int(torch.linalg.matrix_rank(hq)) == 10
    assert line["rank_z"] == int(torch.linalg.matrix_rank(zq))
    assert line["rank_deficit"] == line["rank_h"] - line["rank_z"]
    s = torch.linalg.svdvals(hq.double())
    p = s / s.sum() + 1e-7
    assert line["rankme_h"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-5)
    Q = scipy.linalg.orth(head[0].weight.detach().double().numpy().T)  # row space of A
    H = hq.double().numpy()
    assert line["energy_range"] == pytest.approx(
        np.linalg.norm(H @ Q) ** 2 / np.linalg.norm(H) ** 2, rel=1e-5)
    Hr = H @ Q @ Q.T
    yb, yq = bank[1].numpy(), queries[1].numpy()
    for key, b, q in (("knn_h", hb.numpy(), H), ("knn_z", zb.numpy(), zq.numpy()),
                      ("knn_h_r", hb.double().numpy() @ Q @ Q.T, Hr),
                      ("knn_h_n", hb.double().numpy() @ (np.eye(10) - Q @ Q.T), H - Hr)):
        assert line[key] == pytest.approx(_cos_knn(b, yb, q, yq), abs=1e-9), key
    assert read_jsonl(tmp_path / "m.jsonl") == [json.loads(json.dumps(line))]


def test_dataloader_input_and_caps():
    backbone, head = _model()
    x, y = _data(50, 3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    mon = HeadMonitor(backbone, head, loader, torch.utils.data.TensorDataset(x, y),
                      max_bank=40, max_queries=30)
    assert torch.equal(mon.bank_x, x[:40]) and torch.equal(mon.query_y, y[:30])


def test_bad_input_is_one_line_error(tmp_path):
    backbone, head = _model()
    good = _data(20, 1)
    with pytest.raises(UserError, match="labels must have shape"):
        HeadMonitor(backbone, head, (good[0], good[1][:5]), good)
    with pytest.raises(UserError, match="bank images have shape"):
        HeadMonitor(backbone, head, good, (torch.rand(20, 7), good[1]))
    with pytest.raises(UserError, match="every must be a positive integer"):
        HeadMonitor(backbone, head, good, good, every=0)
    with pytest.raises(UserError, match="unknown kNN preset 'nope'"):
        HeadMonitor(backbone, head, good, good, preset="nope")
    with pytest.raises(UserError, match="queries is empty"):
        HeadMonitor(backbone, head, good, (torch.rand(0, 12), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(UserError, match="must be \\(images, labels\\) tensors"):
        HeadMonitor(backbone, head, good, 3)


def test_directclr_head_splits_h_by_its_coordinate_selection():
    from repdiag.models import Head, HeadSpec

    backbone, _ = _model()
    head = Head(HeadSpec("directclr", in_dim=10, d0=4))  # z = h[:, :4]: no nn.Linear at all
    bank, queries = _data(60, 1), _data(40, 2)
    line = HeadMonitor(backbone, head, bank, queries).step(0)
    backbone.eval()
    with torch.no_grad():
        h = backbone(queries[0]).double()
    assert line["energy_range"] == pytest.approx(float(h[:, :4].square().sum() / h.square().sum()),
                                                 rel=1e-6)
    assert line["rank_z"] == 4 and line["rank_deficit"] == 6 and line["knn_h_n"] is not None


def _ddp_worker(rank, world_size, root):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank,
                            world_size=world_size)
    try:
        backbone, head = _model()
        data = _data(30, 1)
        line = HeadMonitor(backbone, head, data, data).step(0)
        dist.barrier()  # rank 1 returned at once and waits here for rank 0
        torch.save(line, f"{root}/line{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_under_torch_distributed_only_rank_zero_measures(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    line0 = torch.load(tmp_path / "line0.pt", weights_only=True)
    assert torch.load(tmp_path / "line1.pt", weights_only=True) == {}
    backbone, head = _model()
    data = _data(30, 1)
    single = HeadMonitor(backbone, head, data, data).step(0)  # the same as one process alone
    assert {k: v for k, v in line0.items() if k != "seconds"} == \
        {k: v for k, v in single.items() if k != "seconds"}
