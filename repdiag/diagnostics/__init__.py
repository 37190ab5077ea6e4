"""Pure diagnostic functions on feature tensors: ``(features, ...) -> result dataclass``.

Each result has ``to_dict()`` returning JSON-serialisable plain types.
"""

from repdiag.diagnostics._common import ProbeResult, Result
from repdiag.diagnostics.cka import cka
from repdiag.diagnostics.knn import knn_probe, knn_probe_split, nearest_neighbours
from repdiag.diagnostics.linear_probe import linear_probe, linear_probe_split
from repdiag.diagnostics.nullspace import (
    HeadSVD,
    NullspaceResult,
    head_svd,
    nullspace,
    pinv_from_svd,
)
from repdiag.diagnostics.probes import (
    KNN_PRESETS,
    LINEAR_PRESETS,
    PROBE_KINDS,
    ProbeRequest,
    parse_probe,
    probe_request,
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
    "PROBE_KINDS",
    "AlphaReqResult",
    "HeadSVD",
    "NullspaceResult",
    "ProbeRequest",
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
    "parse_probe",
    "participation_ratio",
    "pinv_from_svd",
    "probe_request",
    "rank",
    "rank_deficit",
    "spectrum",
    "spectrum_rank",
    "tsne",
]
