"""Linear centred kernel alignment between two feature sets."""

from __future__ import annotations

from typing import Any

import torch

from repdiag.diagnostics._common import as_matrix, check_chunk, cross_scatter
from repdiag.errors import UserError


def cka(X: Any, Y: Any, *, chunk_size: int | None = None) -> float:
    """Linear CKA (Kornblith et al. 2019): ‖Y_cᵀX_c‖_F² / (‖X_cᵀX_c‖_F ‖Y_cᵀY_c‖_F).

    X (N×m) and Y (N×p) are the same N samples; columns are centred.  The three
    cross products are accumulated chunk by chunk in float64 on X's device
    (feature-space form: no N×N Gram matrix).  Returns 0.0 if either centred
    matrix is zero.
    """
    X = as_matrix(X, "X", min_rows=2)
    Y = as_matrix(Y, "Y", min_rows=2)
    if X.shape[0] != Y.shape[0]:
        raise UserError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}; they must be the same samples")
    gxx, gyx, gyy = cross_scatter(X, Y, check_chunk(chunk_size))
    den = torch.linalg.matrix_norm(gxx) * torch.linalg.matrix_norm(gyy)
    if float(den) == 0.0:
        return 0.0
    return float(torch.linalg.matrix_norm(gyx).square() / den)
