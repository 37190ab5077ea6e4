import pytest
import torch
import torch.nn.functional as F

from repdiag.diagnostics.logistic import Design, fit_lbfgs, fit_lbfgs_many, loss_and_grad_many

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(n=300, m=16, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, m, generator=g, dtype=torch.float64) * 2 + 1
    y = torch.randint(0, c, (n,), generator=g)
    Q = torch.linalg.qr(torch.randn(m, 5, generator=g, dtype=torch.float64))[0]
    return x, y, Q, g


def test_loss_and_grad_many_equals_autograd_on_formed_features():
    x, y, Q, g = _problem()
    mean, scale = x.mean(0), x.std(0, unbiased=False)

    def null(V):
        return V - (V @ Q) @ Q.T

    designs = [Design(x, mean, scale), Design(x, mean, scale * 0.5 + 0.1, null, null)]
    P_null = torch.eye(16, dtype=x.dtype) - Q @ Q.T
    formed = [(x - mean) / scale, ((x - mean) @ P_null) / (scale * 0.5 + 0.1)]
    params = [(torch.randn(4, 16, generator=g, dtype=x.dtype), torch.randn(4, generator=g, dtype=x.dtype))
              for _ in designs]
    lam = 0.01
    got = loss_and_grad_many(designs, y, params, lam)
    for (W, b), X, (loss, gW, gb) in zip(params, formed, got, strict=True):
        W, b = W.clone().requires_grad_(), b.clone().requires_grad_()
        ref = F.cross_entropy(X @ W.T + b, y) + 0.5 * lam * W.square().sum()
        ref.backward()
        assert float(loss) == pytest.approx(float(ref), rel=1e-12)
        torch.testing.assert_close(gW, W.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gb, b.grad, rtol=1e-10, atol=1e-12)


def test_lock_step_runs_equal_separate_runs():
    x, y, Q, _ = _problem(seed=1)
    xq = x @ Q
    designs = [Design(x), Design(xq, to_data=lambda V: V @ Q, from_data=lambda G: G @ Q.T, dim=16),
               Design(x, x.mean(0), x.std(0, unbiased=False))]
    kw = dict(C=1.0, max_iter=30, tolerance_grad=1e-6)
    together = fit_lbfgs_many(designs, y, 4, **kw)
    for d, (W, b, info) in zip(designs, together, strict=True):
        W1, b1, info1 = fit_lbfgs(d, y, 4, **kw)
        # batched and single products round differently; nothing else differs
        torch.testing.assert_close(W, W1, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(b, b1, rtol=1e-6, atol=1e-9)
        assert info["n_iter"] > 0 and info["final_loss"] == pytest.approx(info1["final_loss"], rel=1e-9)


def test_lock_step_passes_errors_on():
    x, y, _, _ = _problem()
    bad = Design(x, to_data=lambda V: V[:, :3], from_data=lambda G: G, dim=16)  # wrong shapes
    with pytest.raises(RuntimeError):
        fit_lbfgs_many([Design(x), bad], y, 4, C=1.0, max_iter=5, tolerance_grad=1e-6)
