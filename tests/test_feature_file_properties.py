"""Property tests: generated feature files, valid and broken, against the CLI's contract.

Every file gives either one line on stderr and exit 2 (with a JSON error object
under --json), or exit 0 with strict JSON holding the right numbers: the rank
as ``torch.linalg.matrix_rank`` counts it in the dtype the file was stored in
(float64 kept), and kNN accuracies that do not depend on how classes are
numbered. Never a traceback, never a file written.
"""

import json
import os
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from repdiag.cli import main

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "int64": torch.int64, "complex64": torch.complex64, "bool": torch.bool}
LABEL_VALUES = [0, 1, 2, 5, -3, 10**6, 10**12]


def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


FAULTS = ["few-train", "few-test", "no-columns", "float16-overflow", "int64", "complex64",
          "bool", "nan", "sparse", "fractional-labels", "negative-labels", "head-wrong-shape",
          "head-tensor", "head-string", "z-wrong-rows", "no-test"]


@st.composite
def feature_files(draw):
    """(raw dict to torch.save, whether it is valid, the test split's h): half of them
    valid (float32 or float64 at any scale, any labels 0..1e12, any head and z), the
    others with one fault."""
    fault = draw(st.sampled_from(["none"] * len(FAULTS) + FAULTS))
    n_train = 1 if fault == "few-train" else draw(st.integers(2, 8))
    n_test = draw(st.integers(0, 1)) if fault == "few-test" else draw(st.integers(2, 8))
    m = 0 if fault == "no-columns" else draw(st.integers(1, 5))
    dtype = {"float16-overflow": "float16", "int64": "int64", "complex64": "complex64",
             "bool": "bool"}.get(fault, draw(st.sampled_from(["float32", "float64"])))
    scale = (1e39 if fault == "float16-overflow" else
             draw(st.sampled_from([1.0, 1e-50, 1e39])) if dtype == "float64" else 1.0)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    pool = [v for v in LABEL_VALUES if v >= 0 or fault == "negative-labels"]
    label_pool = draw(st.permutations(pool))[:draw(st.integers(1, 4))]
    if fault == "negative-labels":
        label_pool = sorted(set(label_pool) | {-3})
    head_kind = {"head-wrong-shape": "wrong-shape", "head-tensor": "tensor",
                 "head-string": "string"}.get(fault, draw(st.sampled_from(
                     ["absent", "valid", "zero"])))
    with_z = "wrong-rows" if fault == "z-wrong-rows" else draw(st.sampled_from(["absent",
                                                                                "valid"]))

    def split(n):
        h = torch.randn(n, m, generator=gen, dtype=torch.float64) * scale
        if fault == "nan" and n and m:
            h[n - 1, m - 1] = float("nan")
        h = h > 0 if dtype == "bool" else h.to(DTYPES[dtype])
        if dtype == "int64":
            h = torch.randint(-5, 5, (n, m), generator=gen)
        idx = torch.randint(0, len(label_pool), (n,), generator=gen)
        y = torch.tensor(label_pool, dtype=torch.int64)[idx]
        if fault == "fractional-labels":
            y = y.double() + 0.5
        d = {"h": h.to_sparse() if fault == "sparse" else h, "y": y}
        if with_z == "valid":
            d["z"] = torch.randn(n, 3, generator=gen)
        elif with_z == "wrong-rows":
            d["z"] = torch.randn(n + 1, 3, generator=gen)
        return d

    raw = {"train": split(n_train), "test": split(n_test)}
    if fault == "no-test":
        del raw["test"]
    if head_kind in ("valid", "zero"):
        w = torch.randn(3, m, generator=gen)
        raw["head"] = {"weight": w if head_kind == "valid" else torch.zeros(3, m)}
    elif head_kind == "wrong-shape":
        raw["head"] = {"weight": torch.randn(3, m + 1, generator=gen)}
    elif head_kind == "tensor":
        raw["head"] = torch.randn(3, m, generator=gen)
    elif head_kind == "string":
        raw["head"] = "weights"
    valid = fault in ("none", "int64", "negative-labels")  # integers are numbers; labels remap
    test_h = raw["test"]["h"] if "test" in raw else None
    return raw, valid, test_h


def _check(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    assert code in (0, 2), (argv, code, out.err)
    if code == 2:
        assert len(out.err.strip().splitlines()) == 1 and "Traceback" not in out.err, out.err
        assert "error" in _strict(out.out.strip().splitlines()[-1])
        return None
    return _strict(out.out)


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=feature_files())
def test_any_feature_file_gives_one_line_or_a_correct_result(case, capsys):
    raw, valid, test_h = case
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        path = d / "f.pt"
        torch.save(raw, path)
        cwd = os.getcwd()
        os.chdir(d)
        try:
            rank = _check(capsys, ["rank", str(path), "--json"])
            probe = _check(capsys, ["probe", str(path), "--json"])
            split = _check(capsys, ["nullspace", str(path), "--json"])
        finally:
            os.chdir(cwd)
        assert sorted(p.name for p in d.iterdir()) == ["f.pt"]  # nothing written
        event(f"{'valid' if valid else 'other'} file: rank {'ok' if rank else 'refused'}, "
              f"probe {'ok' if probe else 'refused'}")
        if valid:
            assert rank is not None and probe is not None, raw
        if rank is None:
            return
        dtype = torch.float64 if test_h.dtype in (torch.float64, torch.int64) else torch.float32
        assert rank["h"]["rank"] == int(torch.linalg.matrix_rank(test_h.to(dtype)))
        assert rank["h"]["dtype"] == str(dtype)
        if probe is None or not valid:
            return
        if isinstance(raw.get("head"), dict):  # h_n = h - A+Ah; the probe on h is the same
            assert split is not None and split["accuracy"]["h"] == probe["accuracy"]["h"]
            if not raw["head"]["weight"].any():  # A = 0: h_n = h exactly, h_r undefined
                assert split["accuracy"]["h_n"] == split["accuracy"]["h"]
                assert split["accuracy"]["h_r"] is None and "h_r" in split["undefined"]
        # kNN does not depend on the class numbering: map the labels monotonically apart
        renumbered = {s: {**raw[s], "y": raw[s]["y"] * 1_000_003 + 7} for s in ("train", "test")}
        torch.save({**raw, **renumbered}, path)
        again = _check(capsys, ["probe", str(path), "--json"])
        assert again is not None and again["accuracy"] == probe["accuracy"]
        assert all(0.0 <= a <= 1.0 for a in probe["accuracy"].values() if a is not None)
