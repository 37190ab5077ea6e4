"""solo-learn checkpoints, read exactly as solo-learn computes them.

The fixtures (``tests/fixtures/solo_learn``) were written by solo-learn's own code
(``make_fixtures.py`` beside them; the commit in ``SOURCE.json``): each model built
by ``solo.methods.METHODS`` from solo-learn's CIFAR pretraining config, saved by its
``Checkpointer`` (``args.json`` beside the checkpoint), with solo-learn's own h
(``model.backbone(x)``) and z (``model.projector(h)``; for DINO the head's MLP) on
one input batch and the mean/std of solo-learn's own pretraining transform. The
ResNet-18 tensors shared by all ResNet cases are stored once and put back here.
"""

import json
import lzma
import shutil
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from repdiag.checkpoint import load_checkpoint
from repdiag.cli import main
from repdiag.features import _normalization

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = Path(__file__).parent / "fixtures" / "solo_learn"
RESNET_CASES = ["simclr", "byol", "vicreg", "barlow_twins", "simsiam", "mocov2plus", "mocov3",
                "nnclr", "swav", "ressl", "dino", "simclr_imagenet100"]
CASES = RESNET_CASES + ["vit_tiny", "wide_resnet28w2"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    """The fixture cases unpacked, each as ``<case>/model.ckpt`` + ``<case>/args.json``."""
    root = tmp_path_factory.mktemp("solo")
    with lzma.open(FIXTURES / "solo_learn.tar.xz") as f, tarfile.open(fileobj=f) as tar:
        tar.extractall(root, filter="data")
    shared = torch.load(root / "cases" / "shared_resnet18.pt", weights_only=True)
    for case in CASES:
        folder = root / "cases" / case
        raw = torch.load(folder / "model.ckpt", weights_only=False)  # our own fixture file
        for key, name in json.loads((folder / "removed.json").read_text()).items():
            raw["state_dict"][key] = shared[name]
        torch.save(raw, folder / "model.ckpt")
    return root / "cases"


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Largest difference relative to the largest |value| of solo-learn's tensor."""
    return float((ours - theirs).abs().max() / theirs.abs().max())


def _h_z(path, x_from=None, **options):
    ck = load_checkpoint(path, options=options or None)
    x = torch.load(Path(x_from or path).parent / "expected.pt", weights_only=True)["x"]
    with torch.no_grad():
        h = ck.build_backbone()(x)
        return ck, h, ck.build_head()(h)


@pytest.mark.parametrize("case", CASES)
def test_h_and_z_equal_solo_learns_own(cases, case):
    expected = torch.load(cases / case / "expected.pt", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # args.json decides everything: nothing is assumed
        ck, h, z = _h_z(cases / case / "model.ckpt")
    assert ck.source == "solo-learn"
    assert ck.extra["import"]["assumptions"] == []
    assert _close(h, expected["h"]) < 1e-4
    assert _close(z, expected["z"]) < 1e-4
    mean, std = _normalization(ck, "auto")  # solo-learn's own training statistics
    torch.testing.assert_close(torch.tensor(mean), expected["mean"])
    torch.testing.assert_close(torch.tensor(std), expected["std"])
    from repdiag.data.registry import REGISTRY

    recorded = json.loads((cases / case / "args.json").read_text())["data"]["dataset"]
    assert ck.dataset == (recorded if recorded in REGISTRY else None)  # default for --data


def test_stems_read_from_args_json(cases):
    assert load_checkpoint(cases / "simclr" / "model.ckpt").backbone_spec.stem == "cifar-pad2"
    assert load_checkpoint(cases / "simclr_imagenet100" / "model.ckpt").backbone_spec.stem \
        == "imagenet"
    # the padding matters: read with repdiag's own CIFAR stem, h is far from solo-learn's
    expected = torch.load(cases / "simclr" / "expected.pt", weights_only=True)
    _, h, _ = _h_z(cases / "simclr" / "model.ckpt", stem="cifar-pad1")
    assert _close(h, expected["h"]) > 0.05


def test_without_args_json_the_stem_and_normalisation_are_stated(cases, tmp_path):
    path = tmp_path / "alone.ckpt"
    shutil.copy(cases / "simclr" / "model.ckpt", path)
    with pytest.warns(UserWarning) as caught:
        ck, h, _ = _h_z(path, x_from=cases / "simclr" / "model.ckpt")
    said = [str(w.message) for w in caught]
    assert any("padding 2" in s and "--stem" in s for s in said)
    assert any("ImageNet" in s and "--normalize" in s for s in said)
    assert all(len(s.splitlines()) == 1 for s in said)
    assert ck.backbone_spec.stem == "cifar-pad2"  # solo-learn's layout: its stem
    expected = torch.load(cases / "simclr" / "expected.pt", weights_only=True)
    assert _close(h, expected["h"]) < 1e-4


def test_dino_z_is_the_bottleneck_and_extra_parts_are_ignored(cases):
    ck = load_checkpoint(cases / "dino" / "model.ckpt")
    layers = ck.head_spec.layers if ck.head_spec.kind == "sequential" else None
    assert ck.head_spec.activation == "gelu" or layers and {"gelu"} <= {x["type"] for x in layers}
    assert ck.head_spec.output_dim == 32  # the bottleneck, not the 40 prototypes
    assert "z" in ck.extra["import"]["decided"]


def test_cli_json_carries_the_import_record(cases, capsys):
    path = cases / "wide_resnet28w2" / "model.ckpt"
    code = main(["rank", str(path), "--data", "synthetic", "--limit", "48", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    r = json.loads(out.out)
    assert r["h"]["dim"] == 128 and r["z"]["dim"] == 32
    assert r["import"]["layout"] == "solo-learn" and r["import"]["assumptions"] == []
    assert "args.json" in r["import"]["decided"]["normalize"]


def test_refused_checkpoint_leaves_no_out_folder(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"model.weird.weight": torch.zeros(2, 2)}}, bad)
    out = tmp_path / "figs"
    assert main(["spectrum", str(bad), "--data", "synthetic", "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
