"""Pure diagnostic functions on feature tensors: ``(features, ...) -> result dataclass``.

Each result has ``to_dict()`` returning JSON-serialisable plain types.
"""

from repdiag.diagnostics._common import ProbeResult, Result
from repdiag.diagnostics.cka import cka
from repdiag.diagnostics.knn import KNN_PRESETS, knn_probe, knn_probe_split, nearest_neighbours
from repdiag.diagnostics.linear_probe import LINEAR_PRESETS, linear_probe, linear_probe_split
from repdiag.diagnostics.nullspace import (
    HeadSVD,
    NullspaceResult,
    head_svd,
    nullspace,
    pinv_from_svd,
)
from repdiag.diagnostics.rank import (
    RankDeficitResult,
    RankResult,
    entropy_rank,
    rank,
    rank_deficit,
    spectrum_rank,
)
from repdiag.diagnostics.spectrum import (
    AlphaReqResult,
    SpectrumResult,
    alpha_req,
    default_alpha_req_ranks,
    participation_ratio,
    spectrum,
)
from repdiag.diagnostics.tsne import TSNEResult, tsne

__all__ = [
    "KNN_PRESETS",
    "LINEAR_PRESETS",
    "AlphaReqResult",
    "HeadSVD",
    "NullspaceResult",
    "ProbeResult",
    "RankDeficitResult",
    "RankResult",
    "Result",
    "SpectrumResult",
    "TSNEResult",
    "alpha_req",
    "cka",
    "default_alpha_req_ranks",
    "entropy_rank",
    "head_svd",
    "knn_probe",
    "knn_probe_split",
    "linear_probe",
    "linear_probe_split",
    "nearest_neighbours",
    "nullspace",
    "participation_ratio",
    "pinv_from_svd",
    "rank",
    "rank_deficit",
    "spectrum",
    "spectrum_rank",
    "tsne",
]
