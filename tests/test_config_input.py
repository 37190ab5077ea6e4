"""Config input is data, bounded: YAML tricks, odd files and out-of-range numbers are one
line and exit 2 before any work; property tests generate configs, valid and broken."""

import dataclasses
import math
import os

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from repdiag.cli import main
from repdiag.errors import UserError
from repdiag.models import BackboneSpec, build_backbone
from train.config import (
    MAX_SEED,
    TrainConfig,
    backbone_parameters,
    from_dict,
    load_config,
    memory_estimate,
    validate,
)
from train.sweep import read_grid
from train.trainer import epoch_generator

TINY = ["data=synthetic", "data_limit=48", "width=0.125", "batch_size=16", "knn_every=0",
        "head.hidden_dim=16", "head.out_dim=8", "epochs=1"]


def train(capsys, out, *extra, config="fmnist-tiny"):
    argv = ["train", "--quiet", "--out", str(out)] + (["--config", config] if config else [])
    for s in [*TINY, *extra]:
        argv += ["--set", s]
    code = main(argv)
    return code, capsys.readouterr().err


def assert_one_line_refusal(code, err, msg, out):
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert msg in err, err
    assert not out.exists()  # refused before the run folder was made


# ------------------------------------------------------------------ the reported tracebacks
@pytest.mark.parametrize("extra,msg", [
    (["seed=1180591620717411303424"], "seed must be an integer in 0..2^63-1"),
    (["seed=-1"], "seed must be an integer in 0..2^63-1"),
    (["split_seed=9223372036854775808"], "split_seed must be an integer in 0..2^63-1"),
    (["width=inf"], "width must be a finite number"),
    (["width=1e400"], "width must be a finite number"),
    (["width=1e30"], "width must be at most 64"),
    (["optim.lr=1e300"], "optim.lr=1e+300 is beyond float32 range"),
    (["optim.weight_decay=1e39"], "optim.weight_decay=1e+39 is beyond float32 range"),
    (["scheme.kind=bilevel", "scheme.lam=nan"], "scheme.lam must be a finite number, got nan"),
    (["scheme.kind=bilevel", "scheme.inner_lr=inf"], "scheme.inner_lr must be a finite number"),
    (["temperature=1e-320"], "temperature must be at least 1e-06"),
    (["epochs=99999999999999999999999"], "epochs: 99999999999999999999999 is out of range"),
    (["width=100000000000000000000000000000000000000000000000000000000000000000000000000000"
      "00000000000000000000000000000000000000000000000000000000000000000000000000000000000"
      "000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
      "0000000000000000000000000000000000000000000000000000000000000000000000000000000"],
     "is out of range for a number"),
    (["image_size=100000"], "need at least"),
    (["width=60"], "need at least"),
    (["name=[unclosed"], "--set name: not valid YAML"),
    (["name={"], "--set name: not valid YAML"),
    (["name=]"], "--set name: not valid YAML"),
    (["name=\"open"], "--set name: not valid YAML"),
    (["name=a: b: c"], "--set name: not valid YAML"),
    (["name=&x [*x]"], "anchor &x refused"),
    (["name=*x"], "alias *x refused"),
    (["head.kind=!!python/object/apply:os.system [ls]"], "--set head.kind: not valid YAML"),
])
def test_config_mistakes_are_one_line_before_any_work(tmp_path, capsys, extra, msg):
    out = tmp_path / "run"
    code, err = train(capsys, out, *extra)
    assert_one_line_refusal(code, err, msg, out)


@pytest.fixture
def odd_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "hostname").write_text("myhost\n")
    (d / "binary").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")  # opening it would block: it must never be opened
    # the alias bomb: each level doubles, 2^30 strings from a few hundred bytes
    levels = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 31)]
    (d / "bomb.yaml").write_text("\n".join(levels) + "\nname: *a30\n")
    (d / "dup.yaml").write_text("epochs: 1\nwidth: 0.5\nepochs: 2\n")
    (d / "deep.yaml").write_text("name: " + "[" * 5000 + "]" * 5000 + "\n")
    (d / "big.yaml").write_text("# padding\n" * 200_000)
    (d / "list.yaml").write_text("- epochs: 1\n")
    return d


@pytest.mark.parametrize("name,msg", [
    ("hostname", "hostname: not a YAML config (expected a mapping of config keys, got a string)"),
    ("binary", "binary: a binary file, not a YAML config file"),
    ("latin1.yaml", "latin1.yaml: not UTF-8 text"),
    ("folder", "folder: is a folder, expected a YAML config file"),
    ("fifo", "fifo: not a regular file"),
    ("bomb.yaml", "bomb.yaml: not valid YAML (anchor &a0 refused"),
    ("dup.yaml", "dup.yaml: not valid YAML (duplicate key 'epochs' at line 3"),
    ("deep.yaml", "deep.yaml: not valid YAML (nested deeper than 50 levels"),
    ("big.yaml", "too large for a YAML config file"),
    ("list.yaml", "got a list"),
    ("missing.yaml", "missing.yaml: no such YAML config file"),
])
def test_config_files_that_are_not_yaml_configs_are_named_as_such(odd_files, tmp_path, capsys,
                                                                  name, msg):
    out = tmp_path / "run"
    code, err = train(capsys, out, config=str(odd_files / name))
    assert_one_line_refusal(code, err, msg, out)
    assert "unknown preset" not in err


def test_grid_files_get_the_same_yaml_rules(odd_files, tmp_path, capsys):
    for name, msg in [("bomb.yaml", "anchor &a0 refused"), ("dup.yaml", "duplicate key"),
                      ("fifo", "not a regular file"), ("binary", "a binary file")]:
        code = main(["sweep", str(odd_files / name), "--out", str(tmp_path / "s"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "s").exists()
    g = tmp_path / "g.yaml"
    g.write_text("base: fmnist-tiny\nseeds: [0, 9223372036854775808]\n")
    with pytest.raises(UserError, match="seeds must be integers in 0..2"):
        read_grid(g)


# ------------------------------------------------------------------ bounds, independently
def test_parameter_count_on_the_meta_device_is_the_real_models():
    net = build_backbone(BackboneSpec("resnet18", 0.125, True))
    assert backbone_parameters("resnet18", 0.125) == sum(p.numel() for p in net.parameters())


def test_memory_estimate_adds_parameters_images_and_a_batch_of_views():
    cfg = load_config("fmnist-tiny", [*TINY, "image_size=64", "data_limit=10"])
    params = sum(p.numel() for p in build_backbone(BackboneSpec("resnet18", 0.125, True))
                 .parameters())
    assert memory_estimate(cfg) == 16 * params + 3 * 64 * 64 * 10 + 2 * 16 * 3 * 64 * 64 * 4


def test_the_largest_seed_trains_and_derived_seeds_stay_in_torchs_range(tmp_path, capsys,
                                                                       one_thread):
    g = epoch_generator(MAX_SEED, 7)  # seed * 1_000_003 + 7 is far beyond 2^64
    assert g.initial_seed() == (MAX_SEED * 1_000_003 + 7) % 2**64
    assert epoch_generator(5, 7).initial_seed() == 5 * 1_000_003 + 7  # small seeds unchanged
    code, err = train(capsys, tmp_path / "run", f"seed={MAX_SEED}")
    assert code == 0, err
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["config"]["seed"] == MAX_SEED


# ------------------------------------------------------------------ properties
FLOAT_KEYS = ["width", "temperature", "val_fraction", "optim.lr", "optim.weight_decay",
              "optim.momentum", "scheme.lam", "scheme.inner_lr", "augment.flip_p",
              "augment.crop_scale_min", "scheme.slow_tol"]
INT_KEYS = ["seed", "split_seed", "epochs", "batch_size", "data_limit", "image_size",
            "knn_k", "scheme.inner_steps", "head.d0", "save_every"]
OTHER_KEYS = ["name", "method", "head.kind", "scheme.kind", "select", "augment.zscore"]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-10, max_value=10).map(repr),
    st.integers(min_value=-2**70, max_value=2**70).map(str),
    st.integers(min_value=0, max_value=600).map(str),
    st.sampled_from(["1e-320", "1e39", "-0.0", "nan", ".inf", "-.inf", "0x10", "1_000",
                     "null", "true", "~", "[]", "{}", "''"]),
)
yaml_junk = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["[unclosed", "{a: 1", "&a [*a]", "*a", "!!binary AAAA", "a: b: c",
                     "- [", "'x", '"x', "%YAML 1.1", "!!python/name:os.system", "? a",
                     "simclr", "mlp", "bilevel", "best", "yes", "0o17"]),
)
override = st.one_of(
    st.tuples(st.sampled_from(FLOAT_KEYS + INT_KEYS), numbers),
    st.tuples(st.sampled_from(FLOAT_KEYS + INT_KEYS + OTHER_KEYS), yaml_junk),
)


def _numbers_in_range(cfg) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            _numbers_in_range(v)
        elif isinstance(v, float):
            assert math.isfinite(v) and abs(v) <= 3.5e38, (f.name, v)
        elif isinstance(v, int) and not isinstance(v, bool):
            assert -2**63 <= v < 2**63, (f.name, v)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(override, min_size=1, max_size=3))
@example([("seed", str(2**63))])
@example([("name", "&a [*a, *a]")])
@example([("scheme.lam", "nan")])
def test_any_set_is_a_one_line_refusal_or_a_config_that_round_trips(tmp_path_factory, items):
    """Whatever ``--set`` says: a one-line UserError, or a config whose numbers are finite and
    in range, that validates, and whose config.yaml (as the trainer writes it) reads back equal."""
    overrides = TINY + [f"{k}={v}" for k, v in items]
    try:
        cfg = load_config("fmnist-tiny", overrides)
    except UserError as e:
        text = str(e)
        assert text and "\n" not in " ".join(text.split()) and len(text) < 600, text
        return
    _numbers_in_range(cfg)
    assert 0 <= cfg.seed <= MAX_SEED and cfg.temperature >= 1e-6
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    again = load_config(str(path))
    assert again.to_dict() == cfg.to_dict()
    validate(from_dict(TrainConfig, cfg.to_dict()))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
@example("a: &a [x]\nname: *a\n")
@example("epochs: 1\nepochs: 2\n")
@example("data: synthetic\n" + "head: {kind: " + "[" * 100 + "]" * 100 + "}\n")
def test_any_config_file_text_is_a_one_line_refusal_or_a_config(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        cfg = load_config(str(path), ["data=synthetic"])
    except UserError as e:
        assert "\n" not in " ".join(str(e).split()) and len(str(e)) < 600
        return
    _numbers_in_range(cfg)


@settings(max_examples=25, deadline=None)
@given(st.one_of(
    st.tuples(st.sampled_from(FLOAT_KEYS),
              st.sampled_from(["nan", "inf", "-inf", "1e39", "-1e39", "1e400", str(10**40)])),
    st.tuples(st.sampled_from(INT_KEYS),
              st.sampled_from(["nan", "inf", "1e3", str(2**64), str(-2**64), str(10**400)]))))
def test_cli_refuses_unbounded_numbers_before_making_the_run_folder(tmp_path_factory, item):
    """``repdiag train`` with an out-of-range number: exit 2, one line, no folder."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "--quiet", "--config", "fmnist-tiny", "--out", str(out)]
    key, value = item
    for s in [*TINY, f"{key}={value}"]:
        argv += ["--set", s]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert not out.exists()


def test_a_preset_name_is_a_preset_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmnist-tiny").mkdir()  # e.g. runs kept under the preset's name
    (tmp_path / "notes").write_text("just words\n")
    assert load_config("fmnist-tiny", ["data=synthetic"]).name == "fmnist-tiny"
    with pytest.raises(UserError, match="notes: not a YAML config"):
        load_config("notes")


def test_a_run_diverging_in_its_first_epoch_leaves_no_folder(tmp_path, capsys, one_thread):
    code, err = train(capsys, tmp_path / "a" / "run", "optim.name=sgd", "optim.lr=1e8")
    assert code == 2 and "training diverged" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("extra,msg", [
    (f"seed={2**64}", "seed must be an integer in 0..2^63-1"),
    ("lr=nan", "lr must be a finite number"),
    ("latent=1e400", "latent: expected an integer"),
])
def test_train_ae_numbers_are_bounded_before_any_work(tmp_path, capsys, extra, msg):
    out = tmp_path / "ae"
    code = main(["train-ae", "--data", "synthetic", "--out", str(out), "--quiet", "--set", extra])
    assert_one_line_refusal(code, capsys.readouterr().err, msg, out)
