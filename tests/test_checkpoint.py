import os
import pickle
import subprocess
import sys

import pytest
import torch
from torchvision.models import resnet18

from repdiag.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint, save_checkpoint
from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head


def _tiny_checkpoint(tmp_path, head_kind="mlp"):
    bspec = BackboneSpec("resnet18", 0.125, True)
    bb = build_backbone(bspec)
    hspec = HeadSpec(head_kind, in_dim=bb.feature_dim, hidden_dim=16, out_dim=8)
    head = build_head(hspec)
    ck = make_checkpoint(config={"data": "synthetic"}, backbone_spec=bspec, head_spec=hspec,
                         backbone=bb, head=head, epoch=3, metrics=[{"epoch": 1, "loss": 1.0}])
    path = tmp_path / "ck.pt"
    save_checkpoint(ck, path)
    return path, bb, head


def test_round_trip_rebuilds_identical_model(tmp_path):
    path, bb, head = _tiny_checkpoint(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"].startswith("repdiag") and raw["epoch"] == 3
    for key in ("config", "backbone", "head", "epoch"):
        assert key in raw
    ck = load_checkpoint(path)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(ck.build_backbone()(x), bb.eval()(x))
    h = torch.randn(4, bb.feature_dim)
    torch.testing.assert_close(ck.build_head()(h), head.eval()(h))
    assert ck.metrics == [{"epoch": 1, "loss": 1.0}] and ck.dataset == "synthetic"


def test_missing_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    path, _, _ = _tiny_checkpoint(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt: truncated or not a torch file"):
        load_checkpoint(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="notes.pt"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": [1, 2, 3]}, foreign)
    with pytest.raises(UserError, match="foreign.pt: not a repdiag checkpoint"):
        load_checkpoint(foreign)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_MARKER",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format": "repdiag-checkpoint", "payload": _Evil()}, evil)
    assert not (tmp_path / "PWNED_MARKER").exists()
    with pytest.raises(UserError, match="evil.pt: refused"):
        load_checkpoint(evil)
    assert not (tmp_path / "PWNED_MARKER").exists()
    raw_pickle = tmp_path / "raw.pt"
    raw_pickle.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(UserError):
        load_checkpoint(raw_pickle)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_atomic_save_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "a.pt"
    atomic_torch_save({"x": torch.ones(2)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"x": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_torchvision_state_dict_imports_with_inferred_architecture(tmp_path):
    tv = resnet18()
    path = tmp_path / "tv.pt"
    torch.save(tv.state_dict(), path)
    ck = load_checkpoint(path)
    assert ck.backbone_spec.name == "resnet18" and not ck.backbone_spec.cifar_stem
    assert ck.head_spec.kind == "none" and ck.source == "torchvision"
    tv.fc = torch.nn.Identity()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ck.build_backbone()(x), tv.eval()(x))


def test_solo_learn_layout_and_strict_key_errors(tmp_path):
    bb = build_backbone(BackboneSpec("resnet18", 0.125, True))
    head = build_head(HeadSpec("mlp", in_dim=bb.feature_dim, hidden_dim=32, out_dim=16))
    state = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    state.update({f"projector.{k[len('net.'):]}": v for k, v in head.state_dict().items()})
    path = tmp_path / "solo.ckpt"
    torch.save({"state_dict": state, "epoch": 10}, path)
    ck = load_checkpoint(path)
    assert ck.source == "solo-learn" and ck.head_spec.kind == "mlp"
    assert (ck.head_spec.hidden_dim, ck.head_spec.out_dim) == (32, 16)
    h = torch.randn(3, bb.feature_dim)
    torch.testing.assert_close(ck.build_head()(h), head.eval()(h))
    broken = dict(state)
    del broken["backbone.layer2.0.bn1.weight"]
    torch.save({"state_dict": broken}, path)
    with pytest.raises(UserError, match="missing keys backbone.layer2.0.bn1.weight"):
        load_checkpoint(path).build_backbone()


def test_lightly_sequential_backbone_names(tmp_path):
    tv = resnet18()
    seq = torch.nn.Sequential(*list(tv.children())[:-1])
    path = tmp_path / "lightly.pt"
    torch.save({f"backbone.{k}": v for k, v in seq.state_dict().items()}, path)
    ck = load_checkpoint(path)
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(ck.build_backbone()(x), seq.eval()(x).flatten(1))


def test_cli_loading_evil_file_exits_2_without_traceback(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"payload": _Evil()}, evil)
    code = ("import sys; from repdiag.checkpoint import load_checkpoint; "
            "from repdiag.errors import UserError\n"
            f"try:\n    load_checkpoint({str(evil)!r})\nexcept UserError as e:\n"
            "    print(e); sys.exit(2)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_inert_unpickling_never_calls_foreign_classes_and_reads_their_data(tmp_path):
    """Classes outside torch's allow-list become placeholders holding their pickled data."""
    import collections
    import fractions

    from repdiag.inert_pickle import Inert, load_inert, plain

    path = tmp_path / "mixed.pt"
    od = collections.OrderedDict(w=torch.arange(3.0))
    torch.save({"state_dict": od, "frac": fractions.Fraction(1, 3),
                "counter": collections.Counter("aab"), "dq": collections.deque([1, 2])}, path)
    raw = load_inert(path)
    assert torch.equal(raw["state_dict"]["w"], torch.arange(3.0))
    assert isinstance(raw["frac"], Inert) and raw["frac"].qualname == "fractions.Fraction"
    # the arguments the pickle would have called the class with, never the class itself
    assert list(raw["frac"].args) == list(fractions.Fraction(1, 3).__reduce__()[1])
    assert raw["dq"].qualname == "collections.deque" and plain(raw["dq"]) == [1, 2]  # its items
    assert plain(raw)["counter"] == {"a": 2, "b": 1}
