"""repdiag: what is your projection head doing to your representation?

The diagnostics library of paper G §3 (Gupta et al.) for notebooks::

    import repdiag
    src = repdiag.FeatureSource("runs/fmnist-tiny/last.pt")   # or a feature file
    train, test = src.get("train"), src.get("test")
    ns = repdiag.nullspace(train.h, train.weight)               # h = h_r + h_n (eq. 4)
    accs = repdiag.knn_probe_split(train.h, train.y, test.h, test.y, ns.basis)

Everything here is importable without the trainer (``train``).
"""

from repdiag.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from repdiag.diagnostics import (
    cka,
    knn_probe,
    knn_probe_split,
    linear_probe,
    linear_probe_split,
    nearest_neighbours,
    nullspace,
    participation_ratio,
    rank,
    rank_deficit,
    spectrum,
    spectrum_rank,
    tsne,
)
from repdiag.errors import UserError
from repdiag.features import (
    FeatureBundle,
    FeatureSet,
    FeatureSource,
    extract,
    extract_bundle,
    load_features,
    save_features,
)
from repdiag.monitor import HeadMonitor
from repdiag.plots import probe_figure, rank_figure, save_figure, spectrum_figure, tsne_figure

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "FeatureBundle",
    "FeatureSet",
    "FeatureSource",
    "HeadMonitor",
    "UserError",
    "cka",
    "extract",
    "extract_bundle",
    "knn_probe",
    "knn_probe_split",
    "linear_probe",
    "linear_probe_split",
    "load_checkpoint",
    "load_features",
    "nearest_neighbours",
    "nullspace",
    "participation_ratio",
    "probe_figure",
    "rank",
    "rank_deficit",
    "rank_figure",
    "save_checkpoint",
    "save_figure",
    "save_features",
    "spectrum",
    "spectrum_figure",
    "spectrum_rank",
    "tsne",
    "tsne_figure",
]
