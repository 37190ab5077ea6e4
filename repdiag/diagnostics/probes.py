"""The probe vocabulary: probe kinds, protocol presets, defaults and protocol records.

Everything that names a probe lives here, so the CLI, the reports, the sweep
and the analyses spell it one way:

- the kinds, ``knn`` and ``linear`` (:data:`PROBE_KINDS`), and each kind's
  default preset (:data:`DEFAULT_PRESETS`: kNN ``g``, linear ``fast``);
- the kNN presets (:data:`KNN_PRESETS`; paper G's k = 200, cosine, vote
  exp(sim/T) with T = 0.5, and lightly's and solo-learn's) with where each
  number comes from (:data:`KNN_PRESET_SOURCES`);
- the linear-probe presets (:data:`LINEAR_PRESETS`; ``fast``, paper G's ``g``
  and paper S's ``s``) with their hyper-parameters;
- a probe request, :class:`ProbeRequest` (kind and resolved preset), built
  once from the command line (:func:`probe_request`) or from a grid file's
  ``KIND[:PRESET]`` string (:func:`parse_probe`) and passed down as it is;
- the protocol record every result carries (:func:`knn_protocol`,
  :func:`linear_protocol`) and the lines printed above a probe table
  (:func:`protocol_lines`).

Pure data and checks: no torch, no command-line code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from repdiag.errors import UserError

PROBE_KINDS = ("knn", "linear")

#: kNN protocol presets: paper G's and those of lightly and solo-learn (sources below).
KNN_PRESETS: dict[str, dict[str, Any]] = {
    "g": {"k": 200, "temperature": 0.5, "distance": "cosine"},
    "lightly": {"k": 200, "temperature": 0.1, "distance": "cosine"},
    "solo": {"k": 20, "temperature": 0.07, "distance": "euclidean"},
    "solo-cosine": {"k": 20, "temperature": 0.07, "distance": "cosine"},
}
#: where each kNN preset's numbers come from, carried in every result's protocol record
KNN_PRESET_SOURCES: dict[str, str] = {
    "g": ("paper G §5: k = 200; T = 0.5 is not published by G: it is the loss temperature "
          "that leftthomas/SimCLR, the reference code G builds on, uses for its kNN monitor"),
    "lightly": "lightly's knn_predict defaults (k = 200, T = 0.1)",
    "solo": "solo-learn's online kNN defaults (k = 20, T = 0.07, Euclidean)",
    "solo-cosine": "solo-learn's online kNN (k = 20, T = 0.07) with cosine distance",
}
KNN_DISTANCES = ("cosine", "euclidean")
#: solo-learn's Euclidean vote weight 1/(distance + EUCLID_EPS)
EUCLID_EPS = 1e-5

#: linear-probe presets: a fast full-batch solver, paper G's Adam protocol, paper S's SGD one
LINEAR_PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"C": 1.0, "max_iter": 100, "tolerance_grad": 1e-4, "standardize": True},
    "g": {"epochs": 200, "lr": 1e-3, "weight_decay": 1e-6, "batch_size": 256,
          "standardize": False},
    "s": {"epochs": 50, "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.0, "batch_size": 32,
          "split": (0.7, 0.1, 0.2), "standardize": False},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"knn": KNN_PRESETS, "linear": LINEAR_PRESETS}
DEFAULT_KNN_PRESET = "g"
DEFAULT_LINEAR_PRESET = "fast"
DEFAULT_PRESETS: dict[str, str] = {"knn": DEFAULT_KNN_PRESET, "linear": DEFAULT_LINEAR_PRESET}
DEFAULT_KIND = "knn"
#: how each kind's presets are named in messages
_PRESET_WHAT = {"knn": "kNN", "linear": "linear-probe"}
#: the ``KIND[:PRESET]`` spellings a grid file's ``probes`` list accepts
SPEC_HELP = "knn, linear or PROBE:PRESET (e.g. linear:s)"


def _check_kind(kind: Any) -> str:
    if kind not in PROBE_KINDS:
        raise UserError(f"unknown probe '{kind}' (--probe); use one of: {', '.join(PROBE_KINDS)}")
    return kind


def unknown_preset(kind: str, preset: Any, *, option: bool = False) -> UserError:
    """The one-line error for a preset that ``kind`` does not have; ``option`` names
    ``--preset``/``--probe`` (a command-line value) rather than a function argument."""
    names = ", ".join(PRESETS[kind])
    if option:
        return UserError(f"unknown {_PRESET_WHAT[kind]} preset '{preset}' (--preset); with "
                         f"--probe {kind} choose one of {names}")
    return UserError(f"unknown {_PRESET_WHAT[kind]} preset {preset!r}; choose one of {names}")


@dataclass(frozen=True)
class ProbeRequest:
    """Which probe to run: its kind (``knn`` or ``linear``) and its protocol preset.

    Built once where the request enters (command line, grid file, library call)
    with :func:`probe_request` or :func:`parse_probe`; the preset is always
    resolved (never None), so nothing below re-defaults it.
    """

    kind: str
    preset: str

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if self.preset not in PRESETS[self.kind]:
            raise unknown_preset(self.kind, self.preset)

    @property
    def spec(self) -> str:
        """The ``KIND:PRESET`` spelling (e.g. ``knn:g``), which :func:`parse_probe` reads back."""
        return f"{self.kind}:{self.preset}"

    def column(self, feature: str) -> str:
        """A results-table column for this probe on ``feature``: ``{kind}_{preset}_{feature}``."""
        return f"{self.kind}_{self.preset}_{feature}"


def probe_request(kind: str = DEFAULT_KIND, preset: str | None = None, *,
                  option: bool = True) -> ProbeRequest:
    """``--probe`` and ``--preset`` checked together into a :class:`ProbeRequest`.

    ``preset`` None is the kind's default (kNN ``g``, linear ``fast``). An
    unknown kind or a preset the kind lacks is a one-line UserError naming the
    valid values (and the options, with ``option``).
    """
    _check_kind(kind)
    if preset is None:
        preset = DEFAULT_PRESETS[kind]
    if preset not in PRESETS[kind]:
        raise unknown_preset(kind, preset, option=option)
    return ProbeRequest(kind, preset)


def parse_probe(text: str) -> ProbeRequest:
    """A ``KIND[:PRESET]`` string (``knn``, ``linear``, ``knn:lightly``, ``linear:s``;
    ``knn:`` is ``knn``) as a :class:`ProbeRequest`; one-line UserError otherwise."""
    if not isinstance(text, str):
        raise UserError(f"a probe is {SPEC_HELP}, got {text!r}")
    kind, _, preset = text.partition(":")
    if kind not in PROBE_KINDS:
        raise UserError(f"unknown probe {text!r}; a probe is {SPEC_HELP}")
    return probe_request(kind, preset or None, option=False)


def as_request(probe: ProbeRequest | str, preset: str | None = None, *,
               option: bool = False) -> ProbeRequest:
    """A library call's ``probe`` (a :class:`ProbeRequest`, or a kind with an optional
    ``preset``) as a :class:`ProbeRequest`; a request passes through unchanged.
    ``option``: an unknown preset's message names ``--preset`` (see :func:`probe_request`)."""
    if isinstance(probe, ProbeRequest):
        if preset is not None and preset != probe.preset:
            raise UserError(f"preset {preset!r} given beside the probe request {probe.spec}")
        return probe
    return probe_request(probe, preset, option=option)


def knn_settings(preset: str | None = None, k: int | None = None,
                 temperature: float | None = None, distance: str | None = None) -> dict[str, Any]:
    """A kNN preset's settings (``k``, ``temperature``, ``distance``, ``preset``) with
    explicit values overriding it; None is the default preset ``g``."""
    name = DEFAULT_KNN_PRESET if preset is None else preset
    if name not in KNN_PRESETS:
        raise unknown_preset("knn", name)
    p = dict(KNN_PRESETS[name])
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        p["k"] = k
    if temperature is not None:
        if not isinstance(temperature, (int, float)) or not temperature > 0:
            raise UserError(f"temperature must be positive, got {temperature!r}")
        p["temperature"] = float(temperature)
    if distance is not None:
        p["distance"] = distance
    if p["distance"] not in KNN_DISTANCES:
        raise UserError(f"unknown kNN distance {p['distance']!r}; choose cosine or euclidean")
    p["preset"] = name
    return p


def linear_settings(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A linear-probe preset's hyper-parameters with the non-None ``overrides`` applied
    (each checked: a key the preset lacks, a non-number or out-of-range value is a UserError)."""
    if preset not in LINEAR_PRESETS:
        raise unknown_preset("linear", preset)
    p = dict(LINEAR_PRESETS[preset])
    for key, val in overrides.items():
        if val is None:
            continue
        if key not in p or key == "split":
            raise UserError(f"option {key!r} does not apply to linear-probe preset {preset!r}")
        if key == "standardize":
            p[key] = bool(val)
            continue
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
            raise UserError(f"{key} must be a number, got {val!r}")
        if key in ("epochs", "max_iter", "batch_size"):
            if int(val) != val or val < 1:
                raise UserError(f"{key} must be a positive integer, got {val!r}")
            val = int(val)
        elif val < 0 or (key in ("C", "lr") and val == 0):
            raise UserError(f"{key} must be {'positive' if key in ('C', 'lr') else 'non-negative'}"
                            f", got {val!r}")
        p[key] = val
    return p


def knn_protocol(p: dict[str, Any], k_used: int, extra: dict | None = None) -> dict[str, Any]:
    """The protocol record of a kNN result: settings from :func:`knn_settings`, the k
    actually used (clipped to the training-set size), the vote weight and the preset's source."""
    proto = {"name": "knn", "k": k_used, "k_requested": p["k"], "temperature": p["temperature"],
             "preset": p["preset"], "distance": p["distance"],
             "source": KNN_PRESET_SOURCES[p["preset"]]}
    if p["distance"] == "euclidean":
        proto["weight"] = f"1/(distance+{EUCLID_EPS:g})"
    else:
        proto["weight"] = "exp(cos/T)"
    if extra:
        proto.update(extra)
    return proto


def linear_protocol(preset: str, p: dict[str, Any], seed: int, dtype: Any) -> dict[str, Any]:
    """The protocol record of a linear-probe result: preset, hyper-parameters ``p``
    (from :func:`linear_settings`), seed, dtype and the solver/optimiser/selection used."""
    proto = {"name": "linear", "preset": preset, "seed": int(seed), "dtype": str(dtype), **p}
    if preset == "fast":
        proto.update(solver="lbfgs-strong-wolfe", objective="mean CE + 0.5/(C*N)*||W||^2")
    elif preset == "g":
        proto.update(optimizer="adam", selection="last epoch")
    else:
        proto.update(optimizer="sgd", scheduler="ReduceLROnPlateau(val loss)",
                     selection="best validation loss", source="test split only")
    return proto


def protocol_lines(report: dict) -> list[str]:
    """The lines above a probe table naming the protocol (preset) that produced its numbers."""
    p = report["protocol"]
    if p.get("name") == "knn":
        vote = "exp(sim/T)" if p["distance"] == "cosine" else p.get("weight", "")
        return [f"probe: kNN, preset {p['preset']}: k={p['k']}, {p['distance']}, vote {vote}, "
                f"T={p['temperature']:g}", f"  ({p['source']})"]
    preset = p.get("preset")
    if preset == "fast":
        what = ("standardised features, full-batch L-BFGS on scikit-learn's logistic objective "
                f"(C={p['C']:g}, at most {p['max_iter']} iterations); not paper G's protocol "
                "(--preset g)")
    elif preset == "g":
        what = (f"paper G: nn.Linear, Adam lr {p['lr']:g}, wd {p['weight_decay']:g}, batch "
                f"{p['batch_size']}, {p['epochs']} epochs, last epoch")
    elif preset == "s":
        what = ("paper S: logistic regression on 70/10/20 of the test split, SGD lr "
                f"{p['lr']:g}, batch {p['batch_size']}, {p['epochs']} epochs, best validation loss")
    else:
        what = str(preset)
    lines = [f"probe: linear, preset {preset}: {what}"]
    if p.get("standardize") and "h_n" in report["accuracy"]:
        lines.append("  (per-coordinate standardisation makes the probes on h and h_n different "
                     "problems, so h_n can beat h; --preset g compares them as paper G does)")
    return lines


def _default_first(kind: str) -> list[str]:
    default = DEFAULT_PRESETS[kind]
    return [default] + [n for n in PRESETS[kind] if n != default]


def preset_help() -> str:
    """``--preset``'s help: each kind's presets, its default first
    (``knn g|lightly|solo|solo-cosine, linear fast|g|s``)."""
    return ", ".join(f"{k} {'|'.join(_default_first(k))}" for k in PROBE_KINDS)


def preset_names(kind: str) -> str:
    """One kind's presets in words, default marked (``g (default), lightly, solo, ...``)."""
    first, *rest = _default_first(kind)
    return ", ".join([f"{first} (default)", *rest])
