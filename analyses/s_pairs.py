"""Like-for-like pairing of paper S's grid runs (pandas only, no torch: the claim table uses it).

The grid varies one factor at a time around a base, so a factor's values are compared on the
runs whose other factors sit at the base (:func:`at_base`), and two settings are compared run
against run, matched on every other factor and on the seed (:func:`paired_change`).
"""

from __future__ import annotations

import numpy as np

#: the grid's factors besides the projector kind, Z-score and freezing
S_VARIED = ("activation", "dim_g", "dim_z")
#: every factor that tells two runs of one seed apart
S_FACTORS = ("head", *S_VARIED, "zscore", "frozen")


def at_base(df, base: dict, factor: str | None = None):
    """The runs of ``df`` whose varied factors (:data:`S_VARIED`) all sit at ``base``, except
    ``factor``, which may take any value: the like-for-like slice in which ``factor``'s values
    are compared (Z-score, head and seed free)."""
    keep = np.ones(len(df), dtype=bool)
    for f in S_VARIED:
        if f != factor:
            keep &= (df[f] == base[f]).to_numpy()
    return df[keep]


def paired_change(df, sel_a: dict, sel_b: dict, col: str = "test") -> list[float]:
    """Per seed, the mean difference ``col`` of the runs selected by ``sel_a`` minus those
    selected by ``sel_b`` (dicts of column values), matched on every other grid factor and on
    the seed; the list is ordered by seed. Raises KeyError when no run matches both."""
    free = [f for f in S_FACTORS if f not in sel_a and f not in sel_b and f in df]

    def pick(sel):
        part = df
        for k, v in sel.items():
            part = part[part[k] == v]
        return part.set_index(free + ["seed"])[col]

    a, b = pick(sel_a), pick(sel_b)
    both = a.index.intersection(b.index)
    if len(both) == 0:
        raise KeyError(f"no runs matching both {sel_a} and {sel_b}")
    d = (a.loc[both] - b.loc[both]).groupby(level="seed").mean().sort_index()
    return [float(v) for v in d.values]
