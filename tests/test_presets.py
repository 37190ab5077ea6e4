"""The shipped presets against the papers' published settings, and the table of them in docs/training.md."""

import re
from pathlib import Path

import pytest

from train.config import load_config

TRAINING_DOC = Path(__file__).parent.parent / "docs" / "training.md"

#: paper S Table 1 (dataset, classes, resolution, batch size) per preset
S_TABLE1 = {
    "s-imagenette": ("imagenette", 10, 128, 392),
    "s-stl10": ("stl10", 10, 96, 500),
    "s-cifar10": ("cifar10", 10, 32, 1280),
    "s-fgvc-aircraft": ("fgvc-aircraft", 30, 128, 666),
    "s-cifar100": ("cifar100", 100, 32, 1280),
}
#: classes of each dataset (FGVC-Aircraft by label level) and sizes of the loaders' images
CLASSES = {"imagenette": 10, "stl10": 10, "cifar10": 10, "cifar100": 100}
FGVC_CLASSES = {"variant": 100, "family": 70, "manufacturer": 30}
NATIVE_SIZE = {"stl10": 96, "cifar10": 32, "cifar100": 32}  # the others default to 64 px


def _classes(cfg) -> int:
    if cfg.data == "fgvc-aircraft":
        return FGVC_CLASSES[cfg.label_level or "variant"]
    return CLASSES[cfg.data]


def _resolution(cfg) -> int:
    return cfg.image_size if cfg.image_size is not None else NATIVE_SIZE.get(cfg.data, 64)


@pytest.mark.parametrize("preset", sorted(S_TABLE1))
def test_s_presets_match_s_table1_and_section_3_5(preset):
    cfg = load_config(preset)
    data, classes, size, batch = S_TABLE1[preset]
    assert (cfg.data, _classes(cfg), _resolution(cfg), cfg.batch_size) == (data, classes, size, batch)
    assert cfg.split_scheme == "s" and cfg.split_seed == 0  # one 70/10/20 split for all runs
    assert cfg.select == "best"  # best validation contrastive loss
    assert cfg.optim.lr == pytest.approx(0.3 * batch / 256) and cfg.epochs == 150
    assert (cfg.backbone, cfg.pretrained_backbone, cfg.cifar_stem) == ("resnet34", "imagenet", False)


def test_s_best_cifar10_head_is_s_table2():
    cfg = load_config("s-cifar10-best")
    h = cfg.head
    assert (h.kind, h.hidden_dim, h.activation, h.out_dim, cfg.augment.zscore) == \
        ("ae", 128, "tanh", 128, False)


@pytest.mark.parametrize("preset", ["cifar10-g", "cifar100-g", "tinyimagenet-g"])
def test_g_presets_train_on_the_whole_training_split_with_glorot_heads(preset):
    cfg = load_config(preset)
    assert cfg.val_fraction == 0 and cfg.split_scheme == "standard" and cfg.select == "last"
    assert cfg.head.init == "glorot" and (cfg.head.hidden_dim, cfg.head.out_dim) == (512, 128)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.temperature) == \
        ("adam", 1e-3, 1e-6, 0.5)


def test_docs_table_of_s_presets_matches_the_preset_files():
    text = TRAINING_DOC.read_text()
    block = text[text.index("<!-- s-presets -->"):text.index("<!-- /s-presets -->")]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith("`s-"):
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(S_TABLE1)
    for preset, cells in rows.items():
        cfg = load_config(preset)
        _, data, classes, size, batch, split, select = cells[:7]
        assert data.strip("`") == cfg.data
        assert int(classes) == _classes(cfg)
        assert re.fullmatch(rf"{_resolution(cfg)}\s*[x×]\s*{_resolution(cfg)}", size)
        assert int(batch) == cfg.batch_size
        assert split == "70/10/20" and cfg.split_scheme == "s"
        assert select == "best val. loss" and cfg.select == "best"
