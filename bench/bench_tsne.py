"""Benchmark: repdiag's exact-gradient torch t-SNE against openTSNE on the same affinities.

For each N: the first N Fashion-MNIST test images (PCA to 50 dimensions, as in
an earlier prototype; generated Gaussian clusters with ``--data blobs`` or when
the Debian package ``dataset-fashion-mnist`` is absent), openTSNE's perplexity-30
affinities from exact neighbours built once, then

    openTSNE:  openTSNE.TSNE(n_jobs=J, random_state=0).fit(X, affinities=P)
               (its defaults: PCA init, exaggeration 12 for 250 iterations, 500 more;
               Barnes-Hut below 10,000 points, FFT interpolation from 10,000)
    torch:     repdiag.diagnostics.tsne_torch: the same PCA init, optimiser and
               schedule with the exact gradient, on --device

Both maps are scored with the same exact KL(P‖Q) and the leave-one-out 10-NN
class accuracy in the 2-D map.  Seconds are the optimisation plus initialisation
(the affinities are shared and timed once).

    .venv/bin/python bench/bench_tsne.py --n 2000 10000 --threads 1
    .venv/bin/python bench/bench_tsne.py --n 10000 20000 --device cuda --threads 16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def load(n: int, data: str):
    """(X float64 N×50, labels, description): Fashion-MNIST test images PCA-50, or blobs."""
    if data == "fmnist" and (FMNIST / "t10k-images-idx3-ubyte.gz").exists():
        from repdiag.data import read_idx

        parts = ("t10k",) if n <= 10_000 else ("t10k", "train")
        imgs = np.concatenate([read_idx(FMNIST / f"{s}-images-idx3-ubyte.gz") for s in parts])
        labels = np.concatenate([read_idx(FMNIST / f"{s}-labels-idx1-ubyte.gz") for s in parts])
        x = imgs[:n].reshape(n, -1).astype(np.float64) / 255.0
        x -= x.mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return x @ vt[:50].T, labels[:n].astype(np.int64), "Fashion-MNIST test images, PCA-50"
    g = np.random.default_rng(0)
    centers = g.standard_normal((10, 50)) * 4
    y = g.integers(0, 10, n)
    return centers[y] + g.standard_normal((n, 50)), y, "10 Gaussian clusters in 50-d"


def map_accuracy(embedding: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Leave-one-out k-NN class accuracy in a 2-D map (majority vote of the k nearest)."""
    from repdiag.diagnostics import nearest_neighbours

    e = torch.as_tensor(np.asarray(embedding, dtype=np.float64))
    lab = torch.as_tensor(labels)
    _, idx = nearest_neighbours(e, e, k, metric="euclidean", exclude_self=True)
    votes = torch.nn.functional.one_hot(lab[idx], int(lab.max()) + 1).sum(dim=1)
    return float((votes.argmax(dim=1) == lab).double().mean())


def run(n: int, data: str, device: str, jobs: int, skip_opentsne: bool) -> dict:
    """Time both optimisers on one N and score both maps."""
    import openTSNE
    from threadpoolctl import threadpool_limits

    from repdiag.diagnostics import tsne_torch as tt
    from repdiag.diagnostics.tsne import exact_affinities

    x, y, what = load(n, data)
    out: dict = {"n": n, "data": what}
    with threadpool_limits(limits=jobs):
        t0 = time.perf_counter()
        aff = exact_affinities(torch.from_numpy(x), 30, n_jobs=jobs)
        out["affinities_s"] = time.perf_counter() - t0
        if not skip_opentsne:
            t0 = time.perf_counter()
            emb = np.asarray(openTSNE.TSNE(n_jobs=jobs, random_state=0).fit(x, affinities=aff))
            out["opentsne_s"] = time.perf_counter() - t0
            out["opentsne_kl"] = tt.kl_divergence(aff.P, emb)
            out["opentsne_map_10nn"] = map_accuracy(emb, y)
        t0 = time.perf_counter()
        init = tt.pca_initialization(torch.from_numpy(x).to(device), 2, seed=0)
        init_s = time.perf_counter() - t0
        emb_t, info = tt.optimize(aff.P, init, device=device)  # its seconds exclude the final KL
        out["torch_s"] = init_s + info["optimize_seconds"]
        out["torch_kl"] = info["kl_divergence"]
        out["torch_map_10nn"] = map_accuracy(emb_t.cpu().numpy(), y)
    return out


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (else the platform's machine type)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    """Run the benchmark for each --n and print one line per size (and --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    ap.add_argument("--data", choices=("fmnist", "blobs"), default="fmnist")
    ap.add_argument("--device", default="cpu", help="device of the torch path: cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="openTSNE n_jobs and torch threads (default: all cores)")
    ap.add_argument("--skip-opentsne", action="store_true")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"bench_tsne: --device {args.device}: no CUDA device is available on this machine")
    torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else "-"
    print(f"{datetime.date.today()} {cpu_name()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, threads {args.threads}; "
          f"device {args.device} ({gpu})")
    print(f"{'N':>7}{'openTSNE s':>12}{'KL':>8}{'10-NN %':>9}{'torch s':>10}{'KL':>8}{'10-NN %':>9}"
          f"{'KL diff %':>10}")
    rows = []
    for n in args.n:
        r = run(n, args.data, args.device, args.threads, args.skip_opentsne)
        rows.append(r)
        ot = (f"{r['opentsne_s']:>12.1f}{r['opentsne_kl']:>8.4f}{100 * r['opentsne_map_10nn']:>9.1f}"
              if "opentsne_s" in r else f"{'-':>12}{'-':>8}{'-':>9}")
        diff = (f"{100 * (r['torch_kl'] - r['opentsne_kl']) / r['opentsne_kl']:>+10.2f}"
                if "opentsne_kl" in r else f"{'-':>10}")
        print(f"{n:>7}{ot}{r['torch_s']:>10.1f}{r['torch_kl']:>8.4f}{100 * r['torch_map_10nn']:>9.1f}{diff}"
              f"   ({r['data']}; affinities {r['affinities_s']:.1f} s, shared)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "threads": args.threads,
                                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
