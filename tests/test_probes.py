"""The probe vocabulary (repdiag.diagnostics.probes): requests, spellings, options and help."""

import dataclasses

import pytest
import torch
import yaml

from repdiag import diagnose
from repdiag.cli import build_parser, main
from repdiag.diagnostics import knn_probe, linear_probe
from repdiag.diagnostics.probes import (
    DEFAULT_PRESETS,
    KNN_PRESETS,
    LINEAR_PRESETS,
    PROBE_KINDS,
    ProbeRequest,
    parse_probe,
    probe_request,
    protocol_lines,
)
from repdiag.errors import UserError
from repdiag.features import FeatureSet, save_features
from train.sweep import read_grid


def _features(path, m=12, d=4, rank_a=2, n_train=90, n_test=45, classes=3):
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(classes, m, generator=g) * 3

    def split(n):
        y = torch.randint(0, classes, (n,), generator=g)
        return centers[y] + torch.randn(n, m, generator=g), y

    a = torch.randn(d, rank_a, generator=g) @ torch.randn(rank_a, m, generator=g)
    (htr, ytr), (hte, yte) = split(n_train), split(n_test)
    save_features(path, FeatureSet(h=htr, y=ytr, z=htr @ a.T, weight=a),
                  FeatureSet(h=hte, y=yte, z=hte @ a.T, weight=a))
    return str(path)


def test_request_defaults_and_spellings():
    assert probe_request("knn") == ProbeRequest("knn", "g")
    assert probe_request("linear") == ProbeRequest("linear", "fast")
    # every spelling a grid file's probes list accepts, and the request's own spelling back
    for text, want in [("knn", ("knn", "g")), ("knn:", ("knn", "g")), ("linear", ("linear", "fast")),
                       ("knn:lightly", ("knn", "lightly")), ("knn:solo-cosine", ("knn", "solo-cosine")),
                       ("linear:s", ("linear", "s")), ("linear:g", ("linear", "g"))]:
        req = parse_probe(text)
        assert (req.kind, req.preset) == want and parse_probe(req.spec) == req
    assert parse_probe("linear:s").column("h") == "linear_s_h"
    with pytest.raises(dataclasses.FrozenInstanceError):
        parse_probe("knn").preset = "solo"


@pytest.mark.parametrize("call,msg", [
    (lambda: probe_request("svm"), "unknown probe 'svm' (--probe); use one of: knn, linear"),
    (lambda: probe_request("knn", "fast"),
     "unknown kNN preset 'fast' (--preset); with --probe knn choose one of g, lightly, solo, "
     "solo-cosine"),
    (lambda: probe_request("linear", "lightly", option=False),
     "unknown linear-probe preset 'lightly'; choose one of fast, g, s"),
    (lambda: parse_probe("svm:g"), "unknown probe 'svm:g'; a probe is knn, linear or PROBE:PRESET"),
    (lambda: parse_probe("knn:fast"), "unknown kNN preset 'fast'; choose one of g, lightly"),
    (lambda: ProbeRequest("linear", "solo"), "unknown linear-probe preset 'solo'"),
])
def test_bad_requests_are_one_line_errors_naming_the_valid_values(call, msg):
    with pytest.raises(UserError) as e:
        call()
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_results_carry_the_preset_settings_of_the_vocabulary():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
    for name, settings in KNN_PRESETS.items():
        proto = knn_probe(x, y, x[:20], y[:20], preset=name).protocol
        assert {k: proto[k] for k in ("temperature", "distance")} == {
            k: settings[k] for k in ("temperature", "distance")}
        assert proto["k_requested"] == settings["k"] and proto["preset"] == name
    assert knn_probe(x, y, x, y).protocol["preset"] == DEFAULT_PRESETS["knn"]
    proto = linear_probe(x, y, x, y).protocol
    assert proto["preset"] == DEFAULT_PRESETS["linear"]
    assert all(proto[k] == v for k, v in LINEAR_PRESETS["fast"].items())


def test_protocol_lines_name_each_preset():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
    for name in KNN_PRESETS:
        rep = {"protocol": knn_probe(x, y, x, y, preset=name).protocol, "accuracy": {"h": 1.0}}
        assert protocol_lines(rep)[0].startswith(f"probe: kNN, preset {name}: k=")
    rep = {"protocol": linear_probe(x, y, x, y, preset="s", epochs=1).protocol,
           "accuracy": {"h": 1.0, "h_n": 1.0}}
    assert protocol_lines(rep) == ["probe: linear, preset s: paper S: logistic regression on "
                                   "70/10/20 of the test split, SGD lr 0.001, batch 32, 1 epochs, "
                                   "best validation loss"]


@pytest.mark.parametrize("command", ["probe", "nullspace", "report", "layers"])
def test_help_lists_the_valid_values(command, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at '-'
    assert "--probe {knn,linear}" in text
    kinds = ("knn",) if command == "layers" else PROBE_KINDS
    for kind in kinds:
        for name in (KNN_PRESETS if kind == "knn" else LINEAR_PRESETS):
            assert name in text.split("--preset PRESET", 2)[-1]


def test_cli_parses_the_probe_once_and_passes_the_request_down(tmp_path, monkeypatch, capsys):
    f = _features(tmp_path / "f.pt")
    seen = []
    real = diagnose.probe_report

    def spy(src, probe="knn", on=None, **kw):
        seen.append((probe, kw.get("preset")))
        return real(src, probe, on, **kw)

    monkeypatch.setattr(diagnose, "probe_report", spy)
    assert main(["nullspace", f, "--probe", "linear", "--json"]) == 0
    assert seen == [(ProbeRequest("linear", "fast"), None)]
    seen.clear()
    assert main(["probe", f, "--probe", "knn", "--preset", "lightly", "--json"]) == 0
    assert seen == [(ProbeRequest("knn", "lightly"), None)]
    capsys.readouterr()


def test_library_calls_take_a_request_or_a_kind_and_preset(tmp_path):
    from repdiag.features import FeatureSource

    src = FeatureSource(_features(tmp_path / "f.pt"))
    by_kind = diagnose.nullspace_report(src, "knn", preset="solo")
    by_request = diagnose.nullspace_report(src, parse_probe("knn:solo"))
    assert by_kind == by_request and by_kind["protocol"]["preset"] == "solo"
    with pytest.raises(UserError, match="given beside the probe request knn:solo"):
        diagnose.probe_report(src, parse_probe("knn:solo"), preset="g")


def test_grid_probes_are_checked_when_the_grid_is_read(tmp_path):
    def grid(probes):
        path = tmp_path / "g.yaml"
        path.write_text(yaml.safe_dump({"base": "fmnist-tiny", "probes": probes}))
        return path

    assert read_grid(grid(["knn", "linear:s", "knn:lightly"])).probes == ["knn", "linear:s",
                                                                        "knn:lightly"]
    with pytest.raises(UserError, match="'probes' must be a list of knn, linear or PROBE:PRESET"):
        read_grid(grid(["svm"]))
    with pytest.raises(UserError, match=r"'probes' entry 'knn:fast': unknown kNN preset 'fast'"):
        read_grid(grid(["knn", "knn:fast"]))


def test_report_with_a_linear_preset_still_runs_knn_after_every_layer(tmp_path):
    from repdiag.features import FeatureSource
    from repdiag.layers import layers_report
    from repdiag.report import build_report
    from train.config import load_config
    from train.trainer import Trainer

    cfg = load_config("fmnist-tiny", ["data=synthetic", "data_limit=64", "width=0.125",
                                      "batch_size=16", "epochs=1", "knn_every=0",
                                      "head.kind=linear", "head.out_dim=8"])
    Trainer(cfg, tmp_path / "run", quiet=True).run()
    src = FeatureSource(tmp_path / "run" / "last.pt")
    # the linear preset ("s", "fast") is the linear probe's; the layers' kNN keeps its default
    (rep,) = build_report([src], ["run"], probe="linear", preset="fast", tsne_points=0)
    assert rep.probes["protocol"]["preset"] == "fast"
    assert rep.layers == layers_report(src)["stages"] and rep.layers
