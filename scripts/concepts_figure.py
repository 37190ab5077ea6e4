"""Draw figures/concepts.png, the README's picture of h, h_r, h_n, z and the rank deficit.

Left: one feature vector h in m = 2 dimensions and a head whose linear layer A
is 1 x 2; repdiag splits h into h_r = A⁺A h (in A's row space, all the head
sees) and h_n = h - h_r (in its null space, invisible to the head), paper G
eq. 4. Right: covariance spectra of generated features H (m = 16) and of
Z = H Aᵀ for a 16 x 16 head A of rank 6: rank(Z) = 6, so the rank deficit
(paper G eq. 3) is 10. Every number drawn is computed by repdiag on seeded generated data.

    python scripts/concepts_figure.py [--out figures/concepts.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import repdiag  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def concepts(seed: int = 0) -> dict:
    """The numbers the figure draws: the split of one h, and the spectra and ranks of H and Z."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[2.0, 1.0]], dtype=torch.float64)           # the head's layer A (1 x 2)
    h = torch.tensor([[1.0, 2.0]], dtype=torch.float64)           # one feature vector
    ns = repdiag.nullspace(torch.cat([h, -h]), a)                 # (two rows: a centred sample)
    split = {"h": h[0], "h_r": ns.h_r[0], "h_n": ns.h_n[0], "a": a[0]}
    H = torch.randn(2000, 16, generator=g, dtype=torch.float64) * torch.linspace(3, 0.5, 16)
    A = torch.randn(16, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 16, generator=g,
                                                                             dtype=torch.float64)
    Z = H @ A.T
    deficit = repdiag.rank_deficit(H, Z)
    return {**split, "eig_h": repdiag.spectrum(H).eigenvalues, "eig_z": repdiag.spectrum(Z).eigenvalues,
            "rank_h": deficit.h.rank, "rank_z": deficit.z.rank, "deficit": deficit.deficit}


def draw(c: dict) -> plt.Figure:
    """Two panels: the range/null-space split of h, and the spectra of H and Z."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    u = (c["a"] / c["a"].norm()).numpy()
    v = np.array([-u[1], u[0]])
    for d, name, at in ((u, "row space of A", -0.9), (v, "null space of A", 2.2)):
        ax.plot(*np.outer([-3, 3], d).T, color="0.75", lw=1, zorder=0)
        ax.annotate(name, at * d, color="0.4", fontsize=8, ha="left", va="top")
    arrows = (("h", "k", "h", (4, 4)), ("h_r", "tab:blue", "h_r = A⁺A h", (-30, -16)),
              ("h_n", "tab:orange", "h_n = h − h_r", (4, 4)))
    for key, colour, label, offset in arrows:
        x, y = c[key].numpy()
        ax.annotate("", (x, y), (0, 0), arrowprops={"arrowstyle": "->", "color": colour, "lw": 2})
        ax.annotate(label, (x, y), textcoords="offset points", xytext=offset, color=colour)
    hr, hn = c["h_r"].numpy(), c["h"].numpy()
    ax.plot([hr[0], hn[0]], [hr[1], hn[1]], ":", color="tab:orange", lw=1)
    ax.set_aspect("equal")
    ax.set(xlim=(-1.5, 2.8), ylim=(-1.2, 2.8), xticks=[], yticks=[],
           title="h = h_r + h_n: the head sees only h_r")
    for key, label in (("eig_h", f"H: rank {c['rank_h']}"), ("eig_z", f"Z = g(H): rank {c['rank_z']}")):
        e = np.clip(np.asarray(c[key], dtype=float), 1e-18, None)
        bx.semilogy(np.arange(1, len(e) + 1), e, "o-", ms=3, label=label)
    bx.set(xlabel="eigenvalue index", ylabel="covariance eigenvalue",
           title=f"rank deficit rank(H) − rank(Z) = {c['deficit']}")
    bx.legend()
    bx.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "figures" / "concepts.png"), help="PNG to write")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(concepts()).savefig(out, dpi=110)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
