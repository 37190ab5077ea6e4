"""Benchmark: repdiag's diagnostic suite against the plain scikit-learn / numpy route.

Both routes run in one process on the same generated features (default 50k
train / 10k test, m = 2048, a rank-128 linear head d = 128), so the ratio is
robust to how busy the machine is. The suite: spectrum, numerical rank, null
space, kNN (k=200) and a linear probe on h, h_r, h_n and z, and a t-SNE map of
10k points.

    baseline: np.cov + np.linalg.eigh, np.linalg.matrix_rank,
              pinv-based h_r/h_n, KNeighborsClassifier(brute, cosine, k=200,
              distance weights), StandardScaler + LogisticRegression(lbfgs),
              sklearn TSNE
    repdiag:  spectrum_rank, nullspace, knn_probe_split + knn_probe,
              linear_probe_split + linear_probe (preset "fast"), tsne

It also reports the kNN step against its matrix-multiply floor (FLOPs of the
similarity products divided by the float32 GEMM rate measured here), and, as a
quality check of the two t-SNE maps, the leave-one-out 10-NN class accuracy in
each 2-D embedding.

    .venv/bin/python bench/bench_diagnostics.py            # full size (long on 2 cores)
    .venv/bin/python bench/bench_diagnostics.py --scale 0.2 --no-tsne
    .venv/bin/python bench/bench_diagnostics.py --device cuda   # repdiag's t-SNE on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def make_features(n_train: int, n_test: int, m: int, d: int, classes: int, seed: int = 0):
    """Class clusters in a 64-dim subspace plus isotropic noise; z = A h with rank(A) = d."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(m, 64, generator=g))[0]
    centers = torch.randn(classes, 64, generator=g) * 0.3

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        h = (centers[y] + torch.randn(n, 64, generator=g)) @ basis.T
        h += 0.3 * torch.randn(n, m, generator=g)
        return torch.relu(h), y

    a = torch.randn(d, m, generator=g) / m**0.5
    (htr, ytr), (hte, yte) = split(n_train), split(n_test)
    return htr, ytr, hte, yte, a


class Timer:
    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name, fn, *a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        return out


def run_baseline(htr, ytr, hte, yte, a, tsne_n, do_tsne, t: Timer) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.manifold import TSNE
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    H, Ht, A = htr.numpy(), hte.numpy(), a.numpy()
    Z, Zt = H @ A.T, Ht @ A.T
    for X in (H, Z):
        t("spectrum+rank", lambda X=X: np.linalg.eigh(np.cov(X, rowvar=False))[0][::-1])
        t("spectrum+rank", np.linalg.matrix_rank, X)
    P = t("nullspace", lambda: np.linalg.pinv(A) @ A)
    feats = {"h": (H, Ht), "h_r": t("nullspace", lambda: (H @ P, Ht @ P)), "z": (Z, Zt)}
    feats["h_n"] = (H - feats["h_r"][0], Ht - feats["h_r"][1])
    acc = {}
    for name, (X, Xt) in feats.items():
        # sklearn's weights="distance" is 1/d; the InstDisc vote exp(sim/T) needs a callable
        knn = KNeighborsClassifier(n_neighbors=200, algorithm="brute", metric="cosine",
                                   weights=lambda d: np.exp((1 - d) / 0.5), n_jobs=-1)
        t("knn", knn.fit, X, ytr.numpy())
        acc[f"knn_{name}"] = float(t("knn", knn.score, Xt, yte.numpy()))
        scaler = StandardScaler().fit(X)
        lr = LogisticRegression()  # lbfgs, tol 1e-4, max_iter 100: repdiag's 'fast' rule
        t("linear", lr.fit, scaler.transform(X), ytr.numpy())
        acc[f"linear_{name}"] = float(lr.score(scaler.transform(Xt), yte.numpy()))
    if do_tsne:
        emb = t("tsne", TSNE(n_components=2, init="pca", random_state=0, n_jobs=-1).fit_transform,
                Ht[:tsne_n])
        acc["tsne_map_10nn"] = map_accuracy(emb, yte[:tsne_n])
    return acc


def run_repdiag(htr, ytr, hte, yte, a, tsne_n, do_tsne, t: Timer, tsne_device: str = "cpu") -> dict:
    import repdiag

    ztr, zte = htr @ a.T, hte @ a.T
    for X in (htr, ztr):
        t("spectrum+rank", repdiag.spectrum_rank, X)
    ns = t("nullspace", repdiag.nullspace, htr, a)
    acc = {}
    trio = t("knn", repdiag.knn_probe_split, htr, ytr, hte, yte, ns.basis)
    acc.update({f"knn_{k}": v.accuracy for k, v in trio.items()})
    acc["knn_z"] = t("knn", repdiag.knn_probe, ztr, ytr, zte, yte).accuracy
    trio = t("linear", repdiag.linear_probe_split, htr, ytr, hte, yte, ns.basis)
    acc.update({f"linear_{k}": v.accuracy for k, v in trio.items()})
    acc["linear_z"] = t("linear", repdiag.linear_probe, ztr, ytr, zte, yte).accuracy
    if do_tsne:
        res = t("tsne", repdiag.tsne, hte[:tsne_n], device=tsne_device)
        acc["tsne_map_10nn"] = map_accuracy(res.embedding, yte[:tsne_n])
    return acc


def map_accuracy(embedding, labels, k: int = 10) -> float:
    """Leave-one-out k-NN class accuracy in a 2-D map (majority vote of the k nearest)."""
    from repdiag.diagnostics import nearest_neighbours

    e = torch.as_tensor(np.asarray(embedding, dtype=np.float64))
    _, idx = nearest_neighbours(e, e, k, metric="euclidean", exclude_self=True)
    votes = torch.nn.functional.one_hot(labels[idx], int(labels.max()) + 1).sum(dim=1)
    return float((votes.argmax(dim=1) == labels).double().mean())


def gemm_rate(m: int, n: int = 4096, k: int = 8192) -> float:
    """Measured float32 GEMM rate (FLOP/s) for a (n x m) @ (m x k) product."""
    x, y = torch.randn(n, m), torch.randn(m, k)
    x @ y
    reps, t0 = 3, time.perf_counter()
    for _ in range(reps):
        x @ y
    return reps * 2 * n * m * k / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of 50k/10k samples")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--no-tsne", action="store_true")
    ap.add_argument("--device", default="cpu",
                    help="device of repdiag's t-SNE step (cuda: exact-gradient torch t-SNE; "
                         "see bench_tsne.py for the t-SNE comparison on its own)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.device != "cpu" and not args.no_tsne:
        from repdiag.devices import check_device
        from repdiag.errors import UserError

        try:
            check_device(args.device, "t-SNE device")  # before any work
        except UserError as e:
            raise SystemExit(f"bench_diagnostics: {e}") from None
    n_train, n_test = int(50_000 * args.scale), int(10_000 * args.scale)
    tsne_n = min(10_000, n_test)
    htr, ytr, hte, yte, a = make_features(n_train, n_test, args.dim, 128, 10)
    print(f"features: train {tuple(htr.shape)}, test {tuple(hte.shape)}, head {tuple(a.shape)}; "
          f"threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    tb, tr = Timer(), Timer()
    acc_r = run_repdiag(htr, ytr, hte, yte, a, tsne_n, not args.no_tsne, tr, tsne_device=args.device)
    acc_b = run_baseline(htr, ytr, hte, yte, a, tsne_n, not args.no_tsne, tb)
    rate = gemm_rate(args.dim)
    r = a.shape[0]
    knn_flops = 2 * n_test * n_train * (args.dim + r) + 2 * n_test * n_train * a.shape[0]
    print(f"\n{'step':<15}{'baseline s':>12}{'repdiag s':>12}{'speed-up':>10}")
    for step in tb.times:
        b, o = tb.times[step], tr.times.get(step, float("nan"))
        print(f"{step:<15}{b:>12.2f}{o:>12.2f}{b / o:>9.1f}x")
    tot_b, tot_r = sum(tb.times.values()), sum(tr.times.values())
    print(f"{'total':<15}{tot_b:>12.2f}{tot_r:>12.2f}{tot_b / tot_r:>9.1f}x")
    floor = knn_flops / rate
    print(f"\nkNN: {tr.times['knn']:.2f} s vs matrix-multiply floor {floor:.2f} s "
          f"({knn_flops / 1e9:.0f} GFLOP at {rate / 1e9:.1f} GFLOP/s): "
          f"{tr.times['knn'] / floor:.2f}x the floor")
    print(f"\n{'accuracy':<15}{'baseline':>10}{'repdiag':>10}{'diff (pt)':>11}")
    for k in acc_b:
        print(f"{k:<15}{100 * acc_b[k]:>10.2f}{100 * acc_r[k]:>10.2f}"
              f"{100 * (acc_r[k] - acc_b[k]):>11.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"baseline_s": tb.times, "repdiag_s": tr.times, "acc_baseline": acc_b,
                       "acc_repdiag": acc_r, "knn_floor_s": floor, "gemm_gflops": rate / 1e9,
                       "n_train": n_train, "n_test": n_test, "dim": args.dim}, f, indent=1)


if __name__ == "__main__":
    main()
