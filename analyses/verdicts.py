"""The one rule by which a measurement becomes a verdict on a paper's claim.

A claim compares two settings that differ in one factor only (a head, a scheme, a
probe target), run with the same seeds. The evidence is the per-seed paired
difference d_s = a_s − b_s (a = the side the paper says is larger):

- mean d̄, sample standard deviation s, n seeds;
- a two-sided 95 % Student-t interval d̄ ± t_{0.975, n−1} · s / √n;
- the sign count: how many d_s lie on the paper's side (> 0).

Verdicts:

- **agrees**: the interval excludes 0 on the paper's side;
- **disagrees**: the interval excludes 0 on the other side;
- **not resolved**: the interval contains 0 (or fewer than 2 seeds);
- for a claim of equality ("a ≈ b"): **disagrees** when the interval excludes 0,
  otherwise **not resolved** — equivalence would need a margin, and the papers
  give none;
- a difference exactly 0 in every seed (integer measures such as a rank) contradicts
  a strict claim (**disagrees**) and supports a claim of equality (**agrees**);
- **by construction**: the shapes force the outcome (the reason names them);
- **not testable at this scale**: a precondition of the claim is absent (the
  reason names it and the measurement that shows it absent).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

AGREES, DISAGREES, NOT_RESOLVED = "agrees", "disagrees", "not resolved"
BY_CONSTRUCTION, NOT_TESTABLE = "by construction", "not testable at this scale"
VERDICTS = (AGREES, DISAGREES, NOT_RESOLVED, BY_CONSTRUCTION, NOT_TESTABLE)
RELATIONS = (">", "<", "=")
LEVEL = 0.95


@dataclass(frozen=True)
class Verdict:
    """A verdict with its evidence (differences in the measurement's own unit)."""

    verdict: str
    n: int = 0
    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    paper_side: int | None = None   # seeds whose difference lies on the paper's side
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with ``dof`` degrees of freedom (scipy.stats.t.ppf)."""
    from scipy.stats import t

    return float(t.ppf(p, dof))


def paired_verdict(a: list[float], b: list[float], relation: str = ">",
                   level: float = LEVEL) -> Verdict:
    """The verdict on "a ``relation`` b" from per-seed values paired by position (seed).

    ``relation`` is ``">"`` (the paper says a is larger), ``"<"`` (smaller) or ``"="``
    (about equal). The interval is the two-sided Student-t interval of the mean paired
    difference a − b at ``level``; see the module docstring for the rule.
    """
    if relation not in RELATIONS:
        raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} against {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    d = [x - y for x, y in pairs]
    n = len(d)
    if n == 0:
        return Verdict(NOT_RESOLVED, reason="no paired values")
    mean = sum(d) / n
    if relation == "<":
        side = int(sum(v < 0 for v in d))
    else:
        side = int(sum(v > 0 for v in d))
    if n < 2:
        return Verdict(NOT_RESOLVED, n=n, mean=mean, paper_side=side,
                       reason="one seed: no interval")
    if all(v == 0 for v in d):
        verdict = AGREES if relation == "=" else DISAGREES
        return Verdict(verdict, n=n, mean=0.0, sd=0.0, ci_low=0.0, ci_high=0.0, paper_side=side,
                       reason="equal in every seed")
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if relation == "=":
        verdict = DISAGREES if (lo > 0 or hi < 0) else NOT_RESOLVED
        reason = "" if verdict == DISAGREES else "interval contains 0; equivalence needs a margin"
    else:
        sign = 1.0 if relation == ">" else -1.0
        plo, phi = sorted((sign * lo, sign * hi))
        verdict = AGREES if plo > 0 else DISAGREES if phi < 0 else NOT_RESOLVED
        reason = "interval contains 0" if verdict == NOT_RESOLVED else ""
    return Verdict(verdict, n=n, mean=mean, sd=sd, ci_low=lo, ci_high=hi, paper_side=side,
                   reason=reason)


def above_constant(a: list[float], constant: float, level: float = LEVEL) -> Verdict:
    """The verdict on "a > constant" (e.g. an accuracy above chance): the paired rule with
    b_s = constant for every seed."""
    return paired_verdict(a, [constant] * len(a), ">", level)


def by_construction(reason: str) -> Verdict:
    """The verdict for a claim that the shapes decide; ``reason`` names the shapes."""
    return Verdict(BY_CONSTRUCTION, reason=reason)


def not_testable(precondition: str, measurement: str) -> Verdict:
    """The verdict for a claim whose precondition is absent at this scale."""
    return Verdict(NOT_TESTABLE, reason=f"needs {precondition}; measured {measurement}")
