import copy
import json
import warnings

import numpy as np
import pytest
import torch

from repdiag.checkpoint import load_checkpoint
from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head
from train.config import load_config
from train.losses import nt_xent
from train.monitor import embed
from train.schemes import build_scheme, frozen_stats
from train.schemes.pca import PCAWarning
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=40", "width=0.125", "batch_size=32", "knn_every=0",
        "head.hidden_dim=32", "head.out_dim=16", "scheme.pca_subset=64", "scheme.slow_subset=64",
        "scheme.slow_max_steps=20"]


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(*extra):
    return load_config("fmnist-tiny", TINY + list(extra))


COMBOS = [
    ("joint", ["head.kind=mlp"]),
    ("fixed", ["head.kind=linear", "head.init=glorot"]),
    ("fixed", ["head.kind=mlp", "head.init=glorot"]),
    ("fixed", ["head.kind=directclr", "head.d0=24"]),
    ("pca-top", ["head.kind=linear"]),
    ("pca-bottom", ["head.kind=linear"]),
    ("slow-single", ["head.kind=linear"]),
    ("slow-single", ["head.kind=mlp"]),
    ("slow-optimal", ["head.kind=linear"]),
    ("slow-optimal", ["head.kind=mlp"]),
    ("bilevel", ["head.kind=linear"]),
    ("bilevel", ["head.kind=mlp", "scheme.inner_steps=2", "scheme.lam=0.1"]),
    ("joint", ["method=simsiam", "head.num_layers=3", "head.last_bn=true"]),
    ("fixed", ["method=simsiam", "head.kind=mlp"]),
    ("bilevel", ["method=simsiam", "head.num_layers=3", "head.last_bn=true"]),
]


@pytest.mark.parametrize("kind,extra", COMBOS, ids=[f"{k}-{'-'.join(e)}" for k, e in COMBOS])
def test_every_scheme_trains_to_a_loadable_checkpoint(tmp_path, kind, extra):
    cfg = tiny_config("epochs=1", "save_every=1", f"scheme.kind={kind}", *extra)
    final = Trainer(cfg, tmp_path, quiet=True).run()
    assert np.isfinite(final["loss"])
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck.config["scheme"]["kind"] == kind and ck.extra["scheme"] == kind
    assert ck.config["method"] == cfg.method and ck.config["head"] == cfg.to_dict()["head"]
    z = ck.build_head().eval()(ck.build_backbone().eval()(torch.rand(2, 3, 32, 32)))
    assert z.shape[0] == 2 and torch.isfinite(z).all()
    if kind == "fixed":  # the head's whole state is bitwise unchanged
        ck0 = load_checkpoint(tmp_path / "checkpoints" / "epoch_000.pt")
        assert ck0.head_state.keys() == ck.head_state.keys()
        for k in ck.head_state:
            assert torch.equal(ck0.head_state[k], ck.head_state[k]), k
        b0, b1 = ck0.backbone_state, ck.backbone_state
        assert any(not torch.equal(b0[k], b1[k]) for k in b1)  # while the backbone trained


def test_directclr_z_is_first_d0_coordinates(tmp_path):
    cfg = tiny_config("epochs=1", "scheme.kind=fixed", "head.kind=directclr", "head.d0=24")
    Trainer(cfg, tmp_path, quiet=True).run()
    ck = load_checkpoint(tmp_path / "last.pt")
    h = ck.build_backbone().eval()(torch.rand(4, 3, 32, 32))
    assert torch.equal(ck.build_head()(h), h[:, :24])


def test_pretrained_head_is_loaded_and_frozen(tmp_path):
    Trainer(tiny_config("epochs=1", "head.kind=linear"), tmp_path / "a", quiet=True).run()
    src = load_checkpoint(tmp_path / "a" / "last.pt")
    cfg = tiny_config("epochs=1", "head.kind=linear", "scheme.kind=fixed", "seed=5",
                      f"head.pretrained={tmp_path / 'a' / 'last.pt'}")
    Trainer(cfg, tmp_path / "b", quiet=True).run()
    ck = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in src.head_state:
        assert torch.equal(src.head_state[k], ck.head_state[k])
    bad = tiny_config("head.kind=linear", "head.out_dim=8",
                      f"head.pretrained={tmp_path / 'a' / 'last.pt'}")
    with pytest.raises(UserError, match="does not fit"):
        Trainer(bad, tmp_path / "c", quiet=True)


def _pca_projector(h: np.ndarray, k: int, top: bool) -> tuple[np.ndarray, float]:
    hc = h - h.mean(0)
    _, s, vt = np.linalg.svd(hc.astype(np.float64), full_matrices=False)
    v = vt[:k] if top else vt[-k:]
    gap = (s[k - 1] - s[k]) if top else (s[-k - 1] - s[-k])
    return v.T @ v, gap / s[0]


@pytest.mark.parametrize("kind", ["pca-top", "pca-bottom"])
def test_pca_head_spans_principal_directions(tmp_path, kind):
    cfg = tiny_config("epochs=1", "save_every=1", "data_limit=80", "width=0.0625",
                      f"scheme.kind={kind}",
                      "head.kind=linear", "head.out_dim=8", "scheme.pca_subset=4096")
    tr = Trainer(cfg, tmp_path, quiet=True)
    tr.run()
    top = kind == "pca-top"
    checks = [(tr.backbone, tr.head)]
    ck0 = load_checkpoint(tmp_path / "checkpoints" / "epoch_000.pt")  # PCA of the initial net
    checks.append((ck0.build_backbone(), ck0.build_head()))
    assert len(tr.data.train) > tr.backbone.feature_dim  # bottom directions well defined
    for backbone, head in checks:
        h = embed(backbone, tr.data.train.images, torch.device("cpu"))
        w = head.net[0].weight.detach().double().numpy()
        ref, gap = _pca_projector(h.numpy(), 8, top)
        assert gap > 1e-4
        np.testing.assert_allclose(w @ w.T, np.eye(8), atol=1e-5)
        np.testing.assert_allclose(w.T @ w, ref, atol=2e-3)
        b = head.net[0].bias.detach().double().numpy()
        np.testing.assert_allclose(b, -w @ h.double().mean(0).numpy(), atol=1e-4)


def _small_models(head_kind="linear", seed=0):
    torch.manual_seed(seed)
    backbone = build_backbone(BackboneSpec("resnet18", 0.125, True))
    head = build_head(HeadSpec(kind=head_kind, in_dim=backbone.feature_dim, hidden_dim=16,
                               out_dim=8))
    return backbone, head


def _views(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.rand(n, 3, 16, 16, generator=g)


def _head_grads(backbone, head, v1, v2, temperature):
    b, hd = copy.deepcopy(backbone), copy.deepcopy(head)
    z1, z2 = hd(b(torch.cat([v1, v2]))).chunk(2)
    return torch.autograd.grad(nt_xent(z1, z2, temperature), list(hd.parameters()))


@pytest.mark.parametrize("head_kind", ["linear", "mlp"])
def test_slow_single_one_step_of_averaged_gradient_at_epoch_end(head_kind):
    cfg = tiny_config("scheme.kind=slow-single", "optim.name=sgd", "optim.momentum=0",
                      "optim.weight_decay=0", "optim.lr=0.5")
    backbone, head = _small_models(head_kind)
    scheme = build_scheme(cfg, backbone, head)
    theta0 = [p.detach().clone() for p in head.parameters()]
    state0 = copy.deepcopy(head.state_dict())
    acc = [torch.zeros_like(p) for p in theta0]
    b_before = [p.detach().clone() for p in backbone.parameters()]
    for i in range(3):
        v1, v2 = _views(i)
        for a, g in zip(acc, _head_grads(backbone, head, v1, v2, cfg.temperature), strict=True):
            a += g
        scheme.train_step(v1, v2)
        for k, t in head.state_dict().items():  # the head does not change within the epoch
            assert torch.equal(t, state0[k]), k
    assert any(not torch.equal(a, p) for a, p in zip(b_before, backbone.parameters(),
                                                     strict=True))
    scheme.on_epoch_end(None)
    for p, t0, a in zip(head.parameters(), theta0, acc, strict=True):
        expected = t0 - 0.5 * a / 3
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)
        assert not torch.equal(p.detach(), t0)


def test_slow_optimal_converges_at_epoch_end(tmp_path):
    cfg = tiny_config("epochs=1", "scheme.kind=slow-optimal", "head.kind=linear",
                      "scheme.slow_max_steps=300", "scheme.slow_tol=1e-5", "optim.lr=0.01")
    tr = Trainer(cfg, tmp_path, quiet=True)
    h1, h2 = tr.scheme.subset_features(tr)
    with torch.no_grad():
        before = float(tr.scheme.method.loss(tr.head(h1), tr.head(h2)))
    fit = tr.scheme.fit_head(h1, h2)
    assert 1 < fit["steps"] <= 300 and fit["loss"] < before - 0.05
    assert all(not p.requires_grad for p in tr.head.parameters())  # fixed again in the epoch


def _bilevel(extra, head_kind="mlp", seed=0):
    cfg = tiny_config("scheme.kind=bilevel", *extra)
    backbone, head = _small_models(head_kind, seed)
    return cfg, backbone, head, build_scheme(cfg, backbone, head)


def test_bilevel_with_zero_inner_steps_is_a_joint_step_without_head_update():
    cfg, backbone, head, scheme = _bilevel(["scheme.inner_steps=0"])
    jb, jh = copy.deepcopy(backbone), copy.deepcopy(head)
    joint = build_scheme(load_config("fmnist-tiny", TINY), jb, jh)
    head0 = copy.deepcopy(head.state_dict())
    v1, v2 = _views(0)
    la, lb = scheme.train_step(v1, v2), joint.train_step(v1, v2)
    assert la == pytest.approx(lb, abs=1e-6)
    for (n, a), b in zip(backbone.state_dict().items(), jb.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6, msg=n)
    for n, p in head.named_parameters():
        assert torch.equal(p.detach(), head0[n]), n
    assert any(not torch.equal(p, jp) for p, jp in zip(head.parameters(), jh.parameters(),
                                                       strict=True))  # joint moved its head
    # BN running statistics are updated once per step, as in the joint step
    torch.testing.assert_close(head.state_dict()["net.1.running_mean"],
                               jh.state_dict()["net.1.running_mean"])


@pytest.mark.parametrize("inner", ["adam", "sgd"])
def test_bilevel_huge_lambda_keeps_the_head(inner):
    cfg, backbone, head, scheme = _bilevel(["scheme.lam=1e12", "scheme.inner_lr=0.1",
                                            f"scheme.inner_optim={inner}"])
    theta0 = [p.detach().clone() for p in head.parameters()]
    b0 = [p.detach().clone() for p in backbone.parameters()]
    for i in range(2):
        scheme.train_step(*_views(i))
    for p, t in zip(head.parameters(), theta0, strict=True):
        assert (p.detach() - t).abs().max() < 1e-9
    assert any(not torch.equal(p, t) for p, t in zip(backbone.parameters(), b0, strict=True))
    # with lam = 0 the same steps do move the head
    cfg, backbone, head, scheme = _bilevel(["scheme.lam=0", "scheme.inner_lr=0.1",
                                            f"scheme.inner_optim={inner}"])
    scheme.train_step(*_views(0))
    assert max((p.detach() - t).abs().max() for p, t in zip(head.parameters(), theta0,
                                                            strict=True)) > 1e-3


def test_bilevel_backbone_gradient_is_taken_through_the_updated_head(monkeypatch):
    lr, lam, mom, steps = 0.2, 0.3, 0.9, 3
    cfg, backbone, head, scheme = _bilevel([f"scheme.inner_lr={lr}", f"scheme.lam={lam}",
                                            f"scheme.inner_steps={steps}", "scheme.inner_optim=sgd"])
    scheme.momentum = [torch.randn_like(v) * 0.01 for v in scheme.momentum]  # a mid-run state
    mom_buf = [v.clone() for v in scheme.momentum]
    b0, h0 = copy.deepcopy(backbone), copy.deepcopy(head)
    monkeypatch.setattr(scheme.optimizer, "step", lambda *a, **k: None)
    v1, v2 = _views(3)
    scheme.train_step(v1, v2)
    # by hand: g_{k+1} from explicit momentum/proximal steps on the detached features
    x = torch.cat([v1, v2])
    h = b0(x)
    hd = h.detach()
    anchor = [p.detach().clone() for p in h0.parameters()]
    for _ in range(steps):
        z1, z2 = h0(hd).chunk(2)
        grads = torch.autograd.grad(nt_xent(z1, z2, cfg.temperature), list(h0.parameters()))
        with torch.no_grad():
            for p, g, a, v in zip(h0.parameters(), grads, anchor, mom_buf, strict=True):
                v.mul_(mom).add_(g)
                p.copy_(a + (p - lr * v - a) / (1 + 2 * lr * lam))
    for p, q in zip(head.parameters(), h0.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-5)
    z1, z2 = h0(h).chunk(2)
    expected = torch.autograd.grad(nt_xent(z1, z2, cfg.temperature), list(b0.parameters()))
    got = [p.grad for p in backbone.parameters()]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-3)
    assert all(p.grad is None for p in head.parameters())  # the outer step leaves the head alone
    # and it differs from the gradient through the old head g_k
    h_old = copy.deepcopy(b0)
    head_old = copy.deepcopy(head)
    with torch.no_grad():
        for p, a in zip(head_old.parameters(), anchor, strict=True):
            p.copy_(a)
    z1, z2 = head_old(h_old(x)).chunk(2)
    old = torch.autograd.grad(nt_xent(z1, z2, cfg.temperature), list(h_old.parameters()))
    assert max((a - b).abs().max() for a, b in zip(old, expected, strict=True)) > 1e-3


def test_simsiam_trains_saves_predictor_and_resumes(tmp_path):
    extra = ["method=simsiam", "head.num_layers=3", "head.last_bn=true", "save_every=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    final = Trainer(tiny_config("epochs=2", *extra), full, quiet=True).run()
    assert -1.0 <= final["loss"] <= 1.0
    Trainer(tiny_config("epochs=1", *extra), part, quiet=True).run()
    ck1 = load_checkpoint(part / "last.pt")
    pred = ck1.extra["predictor"]
    assert pred["0.weight"].shape == (4, 16) and pred["3.weight"].shape == (16, 4)
    Trainer(tiny_config("epochs=2", *extra), part, quiet=True, resume=True).run()
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    for sa, sb in ((a.backbone_state, b.backbone_state), (a.head_state, b.head_state),
                   (a.extra["predictor"], b.extra["predictor"])):
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert not torch.equal(a.extra["predictor"]["0.weight"], pred["0.weight"])


@pytest.mark.parametrize("extra,msg", [
    (["scheme.kind=pca-top", "head.kind=directclr"], "needs head.kind=linear"),
    (["scheme.kind=slow-optimal", "method=simsiam"], "collapsed"),
    (["scheme.kind=bilevel", "head.kind=directclr"], "has no parameters"),
    (["scheme.kind=nope"], "unknown scheme"),
    (["scheme.inner_steps=-1"], "inner_steps"),
    (["method=byol"], "unknown method"),
])
def test_invalid_combinations_are_refused_at_config_time(extra, msg):
    with pytest.raises(UserError, match=msg):
        tiny_config(*extra)


def test_pca_scheme_turns_the_preset_mlp_head_into_its_linear_head():
    cfg = load_config("fmnist-tiny", ["data=synthetic", "scheme.kind=pca-bottom"])
    assert cfg.head.kind == "linear" and cfg.scheme.kind == "pca-bottom"


def test_simsiam_preset_is_the_usual_projector():
    cfg = load_config("fmnist-simsiam-tiny", ["data=synthetic"])
    assert (cfg.method, cfg.head.num_layers, cfg.head.last_bn) == ("simsiam", 3, True)


def _head_motion(extra, steps=40):
    """Relative change ‖θ_40 − θ_0‖/‖θ_0‖ of the head over ``steps`` steps on one repeated batch,
    with the fmnist-tiny preset's models (m = 128, head 128 -> 512 -> 128) and optimiser."""
    cfg = load_config("fmnist-tiny", ["data=synthetic", *extra])
    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec("resnet18", 0.25, True))
    head = build_head(HeadSpec(kind="mlp", in_dim=backbone.feature_dim, hidden_dim=512, out_dim=128))
    scheme = build_scheme(cfg, backbone, head)
    before = torch.cat([p.detach().reshape(-1).clone() for p in head.parameters()])
    g = torch.Generator().manual_seed(7)
    v1, v2 = torch.rand(2, 16, 3, 8, 8, generator=g)
    for _ in range(steps):
        scheme.train_step(v1, v2)
    after = torch.cat([p.detach().reshape(-1) for p in head.parameters()])
    return float((after - before).norm() / before.norm())


def test_bilevel_head_moves_like_a_trained_head_with_the_defaults():
    """Paper G §5: Adam at the outer learning rate, five inner steps. The momentum-SGD inner
    loop at that learning rate barely moves the head (the defect this default fixes)."""
    joint = _head_motion(["scheme.kind=joint"])
    bilevel = _head_motion(["scheme.kind=bilevel"])
    sgd = _head_motion(["scheme.kind=bilevel", "scheme.inner_optim=sgd"])
    assert bilevel >= 0.3 * joint, (bilevel, joint)
    assert sgd < 0.3 * joint, (sgd, joint)


def test_bilevel_adam_without_proximal_term_is_torch_adam():
    """lam = 0: the inner loop is plain Adam (state kept across mini-batches). A linear head:
    an MLP's pre-BN bias has a zero gradient, whose round-off Adam would magnify."""
    cfg, backbone, head, scheme = _bilevel(["scheme.lam=0", "scheme.inner_lr=0.01",
                                            "scheme.inner_steps=3"], head_kind="linear")
    ref = copy.deepcopy(head)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    for i in range(2):
        v1, v2 = _views(i)
        with torch.no_grad():
            h = backbone(torch.cat([v1, v2]))  # the features the scheme's inner loop sees
        with frozen_stats(ref):
            for _ in range(3):
                opt.zero_grad()
                z1, z2 = ref(h).chunk(2)
                nt_xent(z1, z2, cfg.temperature).backward()
                opt.step()
        scheme.optimizer.step = lambda *a, **k: None  # keep the backbone fixed: same h
        scheme.train_step(v1, v2)
    for p, q in zip(head.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-5)
    assert scheme.adam_step == 6


def test_every_scheme_logs_how_far_the_head_moved(tmp_path):
    for kind, extra, moved in [("joint", [], True), ("fixed", ["head.kind=linear"], False),
                               ("bilevel", [], True), ("pca-top", ["head.kind=linear"], True),
                               ("fixed", ["head.kind=directclr", "head.d0=8"], None)]:
        out = tmp_path / f"{kind}-{len(extra)}-{moved}"
        Trainer(tiny_config("epochs=1", f"scheme.kind={kind}", *extra), out, quiet=True).run()
        line = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        change = line["head_rel_change"]
        if moved is None:
            assert change is None  # a head without parameters
        elif moved:
            assert change > 1e-4, (kind, change)
        else:
            assert change == 0.0


def test_pca_head_is_fitted_on_the_inputs_the_backbone_trains_on(tmp_path):
    """With augment.zscore=true the PCA sees Z-scored images, as the backbone does."""
    cfg = tiny_config("epochs=1", "data_limit=80", "width=0.0625", "scheme.kind=pca-top",
                      "head.kind=linear", "head.out_dim=4", "augment.zscore=true",
                      "scheme.pca_subset=null")
    tr = Trainer(cfg, tmp_path, quiet=True)
    tr.run()
    mean, std = tr.input_norm
    assert mean is not None and max(abs(m - 0.5) for m in mean) > 1e-3  # not the identity map
    w = tr.head.net[0].weight.detach().double().numpy()
    h_seen = embed(tr.backbone, tr.data.train.images, torch.device("cpu"), mean=mean, std=std)
    ref, gap = _pca_projector(h_seen.numpy(), 4, True)
    assert gap > 1e-4
    np.testing.assert_allclose(w.T @ w, ref, atol=2e-3)
    h_raw = embed(tr.backbone, tr.data.train.images, torch.device("cpu"))
    wrong, _ = _pca_projector(h_raw.numpy(), 4, True)
    assert np.abs(w.T @ w - wrong).max() > 0.05  # what an unnormalised fit would have given


def test_pca_subset_defaults_to_the_training_split_and_eigenvalues_are_recorded(tmp_path):
    cfg = tiny_config("epochs=1", "data_limit=200", "width=0.0625", "scheme.kind=pca-bottom",
                      "head.kind=linear", "head.out_dim=4", "scheme.pca_subset=null")
    assert load_config("fmnist-tiny", ["data=synthetic"]).scheme.pca_subset is None  # the default
    with warnings.catch_warnings():
        warnings.simplefilter("error", PCAWarning)  # 180 samples > m = 32: no zero eigenvalue
        tr = Trainer(cfg, tmp_path, quiet=True)
        tr.run()
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["pca_n"] == len(tr.data.train) > tr.backbone.feature_dim
    h = embed(tr.backbone, tr.data.train.images, torch.device("cpu")).double()
    ref = np.sort(np.linalg.eigvalsh(np.cov(h.numpy().T)))[:4]  # bottom 4, ascending
    got = load_checkpoint(tmp_path / "last.pt").extra["pca_eigenvalues"]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-3, atol=1e-9)
    assert line["pca_eig_zero"] == 0 and line["pca_eig_min"] == pytest.approx(ref[0], rel=1e-3)


def test_pca_bottom_on_fewer_samples_than_features_warns(tmp_path):
    """Bottom-k from a rank-deficient sample: the directions span a zero eigenspace."""
    cfg = tiny_config("epochs=1", "data_limit=200", "width=0.0625", "scheme.kind=pca-bottom",
                      "head.kind=linear", "head.out_dim=4", "scheme.pca_subset=16")
    with pytest.warns(PCAWarning, match=r"4 of the 4 chosen eigenvalues .* numerically zero"):
        Trainer(cfg, tmp_path, quiet=True).run()
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["pca_n"] == 16 and line["pca_eig_zero"] == 4
