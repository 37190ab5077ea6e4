"""Tests for the data layer (repdiag.data). All run offline and fast."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from repdiag.data import (
    Dataset,
    ImageSplit,
    list_datasets,
    load_dataset,
    make_synthetic,
    read_idx,
    write_idx,
)
from repdiag.errors import UserError

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*image decoding and encoding capabilities of TorchVision:DeprecationWarning"
)

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


def _write_idx_by_hand(path: Path, array: np.ndarray) -> None:
    """An independent IDX writer (struct + gzip), so the reader is not only tested
    against our own writer."""
    assert array.dtype == np.uint8
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def _make_fmnist_root(root: Path, n_train: int = 200, n_test: int = 50) -> dict:
    rng = np.random.default_rng(0)
    data = {
        "train": (
            rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            (np.arange(n_train) % 10).astype(np.uint8),
        ),
        "t10k": (
            rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            (np.arange(n_test) % 10).astype(np.uint8),
        ),
    }
    root.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in data.items():
        _write_idx_by_hand(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx_by_hand(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return data


def _one_line_user_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- IDX


def test_idx_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (7,), dtype=np.uint8)
    _write_idx_by_hand(tmp_path / "img.gz", images)
    _write_idx_by_hand(tmp_path / "lab.gz", labels)
    got_i, got_l = read_idx(tmp_path / "img.gz"), read_idx(tmp_path / "lab.gz")
    assert got_i.shape == (7, 5, 3) and got_i.dtype == np.uint8
    np.testing.assert_array_equal(got_i, images)
    np.testing.assert_array_equal(got_l, labels)

    # our writer, multi-byte big-endian type, uncompressed
    floats = rng.standard_normal((4, 6)).astype(np.float32)
    write_idx(tmp_path / "f.idx", floats)
    raw = (tmp_path / "f.idx").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0D, 2]) and struct.unpack(">2I", raw[4:12]) == (4, 6)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_idx_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">I", 0x12345678) + b"\0" * 16)
    with pytest.raises(UserError, match="bad-images-idx3-ubyte.gz") as ei:
        read_idx(bad)
    assert "magic" in _one_line_user_error(ei)

    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, 2, 2, 2) + b"\0" * 5)  # needs 8 bytes
    with pytest.raises(UserError, match="short.gz"):
        read_idx(short)

    notgz = tmp_path / "plain.gz"
    notgz.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="plain.gz"):
        read_idx(notgz)


# --------------------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_from_tmp_root(tmp_path):
    data = _make_fmnist_root(tmp_path / "fashion-mnist")
    ds = load_dataset("fashion-mnist", root=tmp_path / "fashion-mnist", val_fraction=0.2, seed=3)
    assert isinstance(ds, Dataset)
    assert ds.num_classes == 10 and ds.image_size == 28
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    for split in (ds.train, ds.val, ds.test):
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 28, 28)
        assert split.labels.dtype == torch.int64
        assert torch.equal(split.images[:, 0], split.images[:, 1])
        assert torch.equal(split.images[:, 0], split.images[:, 2])
    assert len(ds.train) == 160 and len(ds.val) == 40 and len(ds.test) == 50
    # stratified: 200 balanced samples, 20% val -> 4 per class
    assert ds.val.class_counts().tolist() == [4] * 10
    # test split is the official one, in file order
    assert torch.equal(ds.test.images[:, 0], torch.from_numpy(data["t10k"][0]))

    # train + val together are exactly the official train set, disjoint
    official = torch.from_numpy(data["train"][0]).flatten(1)

    def rows(split):
        return [bytes(r.numpy()) for r in split.images[:, 0].flatten(1)]

    assert sorted(rows(ds.train) + rows(ds.val)) == sorted(bytes(r.numpy()) for r in official)
    assert not set(rows(ds.train)) & set(rows(ds.val))

    # same seed -> same split; other seed -> other split
    again = load_dataset("fashion-mnist", root=tmp_path / "fashion-mnist", val_fraction=0.2, seed=3)
    assert torch.equal(again.val.images, ds.val.images)
    other = load_dataset("fashion-mnist", root=tmp_path / "fashion-mnist", val_fraction=0.2, seed=4)
    assert not torch.equal(other.val.images, ds.val.images)

    # val_fraction=0 -> empty val split of the right shape
    none = load_dataset("fashion-mnist", root=tmp_path / "fashion-mnist", val_fraction=0)
    assert len(none.val) == 0 and none.val.images.shape == (0, 3, 28, 28)
    assert len(none.train) == 200

    # a parent directory holding fashion-mnist/ works too
    parent = load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.2, seed=3)
    assert torch.equal(parent.val.labels, ds.val.labels)

    # image_size resizes every split at load time (antialiased, as torchvision's resize)
    from torchvision.transforms.v2 import functional as TF

    small = load_dataset("fashion-mnist", root=tmp_path / "fashion-mnist", val_fraction=0.2, seed=3,
                         image_size=16)
    assert small.train.images.shape[1:] == (3, 16, 16) and small.test.images.dtype == torch.uint8
    assert torch.equal(small.val.labels, ds.val.labels)
    expect = TF.resize(ds.test.images.float(), [16, 16], antialias=True).round().clamp(0, 255)
    assert (small.test.images.float() - expect).abs().max() <= 1


def test_fashion_mnist_missing_root_is_one_line(tmp_path):
    with pytest.raises(UserError) as ei:
        load_dataset("fashion-mnist", root=tmp_path, download=False)
    msg = _one_line_user_error(ei)
    assert "fashion-mnist" in msg and "dataset-fashion-mnist" in msg


@pytest.mark.skipif(not REAL_FMNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist", root=REAL_FMNIST, val_fraction=0.1, seed=0)
    assert len(ds.train) + len(ds.val) == 60000 and len(ds.val) == 6000
    assert len(ds.test) == 10000 and ds.num_classes == 10
    assert ds.train.images.shape[1:] == (3, 28, 28)
    assert ds.test.class_counts().tolist() == [1000] * 10


# --------------------------------------------------------------------------- synthetic


def test_synthetic_deterministic_shapes_balanced():
    a = load_dataset("synthetic", seed=5, n_train=200, n_test=100, num_classes=4, image_size=16)
    b = load_dataset("synthetic", seed=5, n_train=200, n_test=100, num_classes=4, image_size=16)
    c = load_dataset("synthetic", seed=6, n_train=200, n_test=100, num_classes=4, image_size=16)
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).images, b.split(name).images)
        assert torch.equal(a.split(name).labels, b.split(name).labels)
    assert not torch.equal(a.train.images, c.train.images)
    assert a.train.images.shape == (180, 3, 16, 16) and a.train.images.dtype == torch.uint8
    assert len(a.val) == 20 and len(a.test) == 100
    assert a.num_classes == 4 and a.image_size == 16
    assert a.test.class_counts().tolist() == [25] * 4
    train_counts = (a.train.class_counts() + a.val.class_counts()).tolist()
    assert train_counts == [50] * 4
    assert a.val.class_counts().tolist() == [5] * 4  # stratified val
    # images use the dynamic range, not constant
    assert a.train.images.float().std() > 20


def test_synthetic_is_learnable_on_raw_pixels():
    train, test = make_synthetic(n_train=400, n_test=200, num_classes=4, image_size=32, seed=0)
    xtr, xte = train.images.flatten(1).float(), test.images.flatten(1).float()
    one_nn = train.labels[torch.cdist(xte, xtr).argmin(1)]
    acc_1nn = (one_nn == test.labels).float().mean().item()
    centroids = torch.stack([xtr[train.labels == k].mean(0) for k in range(4)])
    acc_cent = (torch.cdist(xte, centroids).argmin(1) == test.labels).float().mean().item()
    assert acc_1nn > 0.6 and acc_cent > 0.6  # chance is 0.25


# --------------------------------------------------------------------------- imagefolder


def _write_pngs(folder: Path, n: int, colour: tuple[int, int, int], size=(20, 30)) -> None:
    from torchvision.io import write_png

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = torch.empty(3, *size, dtype=torch.uint8)
        for ch in range(3):
            img[ch] = colour[ch]
        img[:, 0, 0] = i  # make files differ
        write_png(img, str(folder / f"img_{i:02d}.png"))


def test_imagefolder_flat_and_train_test(tmp_path):
    flat = tmp_path / "flat"
    _write_pngs(flat / "cat", 6, (200, 0, 0))
    _write_pngs(flat / "dog", 4, (0, 0, 200))
    (flat / "empty").mkdir()  # no images: not a class
    ds = load_dataset(f"imagefolder:{flat}", image_size=8, val_fraction=0, seed=1)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and ds.image_size == 8
    assert ds.name == f"imagefolder:{flat}"
    assert len(ds.train) + len(ds.test) == 10 and len(ds.test) == 2  # 20% carved
    for split in (ds.train, ds.test):
        assert split.images.shape[1:] == (3, 8, 8) and split.images.dtype == torch.uint8
        red = split.images[:, 0, 4, 4].long()
        blue = split.images[:, 2, 4, 4].long()
        assert torch.equal(split.labels, (blue > red).long())  # cat red, dog blue

    tt = tmp_path / "tt"
    _write_pngs(tt / "train" / "a", 3, (10, 200, 10), size=(16, 16))
    _write_pngs(tt / "train" / "b", 3, (200, 200, 10), size=(16, 16))
    _write_pngs(tt / "test" / "b", 2, (200, 200, 10), size=(16, 16))
    ds = load_dataset("imagefolder", root=tt, image_size=16, val_fraction=0)
    assert ds.classes == ["a", "b"]
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test.labels.tolist() == [1, 1]
    assert int(ds.test.images[0, 0, 5, 5]) == 200


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="imagefolder:PATH"):
        load_dataset("imagefolder")
    with pytest.raises(UserError, match="not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(UserError, match="no class subfolders"):
        load_dataset(f"imagefolder:{tmp_path}")


# --------------------------------------------------------------------------- errors, registry


def test_unknown_dataset_lists_known_names():
    with pytest.raises(UserError) as ei:
        load_dataset("foo")
    msg = _one_line_user_error(ei)
    assert "'foo'" in msg and "fashion-mnist" in msg and "synthetic" in msg
    names = list_datasets()
    for name in (
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "stl10",
        "fgvc-aircraft",
        "tinyimagenet",
        "imagenette",
        "imagefolder:PATH",
        "synthetic",
    ):
        assert name in names


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="n_trian"):
        load_dataset("synthetic", n_trian=10)
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset("synthetic", val_fraction=1.0)
    with pytest.raises(UserError, match="split_scheme"):
        load_dataset("synthetic", split_scheme="t")
    with pytest.raises(UserError, match="limit"):
        load_dataset("synthetic", limit=0)
    ds = load_dataset("synthetic", n_train=40, n_test=20, download=False)  # generic option
    with pytest.raises(UserError, match="unknown split 'dev'"):
        ds.split("dev")


def test_missing_tinyimagenet_is_one_line(tmp_path):
    with pytest.raises(UserError) as ei:
        load_dataset("tinyimagenet", root=tmp_path)
    msg = _one_line_user_error(ei)
    assert "tinyimagenet" in msg and str(tmp_path) in msg


def test_missing_torchvision_dataset_without_download_is_one_line(tmp_path):
    for name in ("cifar10", "imagenette"):
        with pytest.raises(UserError) as ei:
            load_dataset(name, root=tmp_path, download=False)
        assert name in _one_line_user_error(ei)


def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for wnid, colour in (("n001", (250, 0, 0)), ("n002", (0, 250, 0))):
        _write_pngs(root / "train" / wnid / "images", 3, colour, size=(64, 64))
    (root / "wnids.txt").write_text("n001\nn002\n")
    (root / "words.txt").write_text("n001\tgoldfish, Carassius auratus\nn002\tsalamander\n")
    _write_pngs(root / "val" / "images", 2, (0, 250, 0), size=(64, 64))
    (root / "val" / "val_annotations.txt").write_text(
        "img_00.png\tn002\t0\t0\t10\t10\nimg_01.png\tn002\t1\t1\t9\t9\n"
    )
    ds = load_dataset("tinyimagenet", root=tmp_path, val_fraction=0, image_size=32)
    assert ds.classes == ["goldfish", "salamander"]
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.test.labels.tolist() == [1, 1]
    assert ds.test.images.shape == (2, 3, 32, 32) and int(ds.test.images[0, 1, 9, 9]) == 250


# --------------------------------------------------------------------------- split schemes


def test_split_scheme_s_proportions():
    opts = {"n_train": 700, "n_test": 301, "image_size": 8}
    ds = load_dataset("synthetic", split_scheme="s", seed=2, **opts)
    n = 1001
    assert len(ds.train) + len(ds.val) + len(ds.test) == n
    assert abs(len(ds.train) - 0.7 * n) <= 1
    assert abs(len(ds.val) - 0.1 * n) <= 1
    assert abs(len(ds.test) - 0.2 * n) <= 1
    again = load_dataset("synthetic", split_scheme="s", seed=2, **opts)
    assert torch.equal(again.test.images, ds.test.images)
    # the three parts are disjoint and cover the pool
    pool = make_synthetic(700, 301, image_size=8, seed=2)
    key = lambda split: {bytes(r.numpy()) for r in split.images.flatten(1)}
    parts = [key(ds.train), key(ds.val), key(ds.test)]
    assert sum(map(len, parts)) == n and set.union(*parts) == key(pool[0]) | key(pool[1])


def test_limit_caps_each_split():
    ds = load_dataset("synthetic", n_train=300, n_test=200, image_size=8, limit=50, seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 30, 50)
    assert sorted(ds.train.class_counts().tolist()) == [12, 12, 13, 13]  # stratified
    same = load_dataset("synthetic", n_train=300, n_test=200, image_size=8, limit=50, seed=0)
    assert torch.equal(same.train.images, ds.train.images)


def test_image_split_validates():
    with pytest.raises(ValueError):
        ImageSplit(
            torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), ["a"]
        )
    with pytest.raises(ValueError):
        ImageSplit(
            torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"]
        )


def test_one_cache_folder_rule_repdiag_cache_then_xdg_then_home(monkeypatch, tmp_path):
    from repdiag.data.paths import cache_dir, candidate_dirs, download_dir
    from repdiag.features import feature_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("REPDIAG_CACHE", str(tmp_path / "own"))
    monkeypatch.delenv("REPDIAG_DATA", raising=False)
    assert cache_dir() == tmp_path / "own"  # $REPDIAG_CACHE wins over $XDG_CACHE_HOME
    assert feature_cache_dir() == tmp_path / "own" / "features"
    assert download_dir("cifar10", None) == tmp_path / "own" / "cifar10"
    assert candidate_dirs("cifar10", None)[-1] == tmp_path / "own" / "cifar10"
    monkeypatch.delenv("REPDIAG_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "repdiag"
    assert feature_cache_dir() == tmp_path / "xdg" / "repdiag" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "repdiag"
    assert feature_cache_dir() == tmp_path / "home" / ".cache" / "repdiag" / "features"
    assert download_dir("cifar10", None) == tmp_path / "home" / ".cache" / "repdiag" / "cifar10"
    monkeypatch.setenv("REPDIAG_DATA", str(tmp_path / "data"))  # datasets: $REPDIAG_DATA first
    assert download_dir("cifar10", None) == tmp_path / "data" / "cifar10"
    assert feature_cache_dir() == tmp_path / "home" / ".cache" / "repdiag" / "features"
