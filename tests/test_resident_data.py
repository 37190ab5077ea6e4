"""Device-resident training images against the DataLoader path: the same batches and losses."""

import pytest
import torch

from train.config import load_config
from train.trainer import Trainer

TINY = ["data=synthetic", "data_limit=96", "width=0.125", "batch_size=32", "knn_every=0",
        "head.hidden_dim=32", "head.out_dim=16", "epochs=1", "image_size=16"]

pytestmark = pytest.mark.usefixtures("one_thread")


def trainer(tmp_path, name, *extra):
    return Trainer(load_config("fmnist-tiny", TINY + list(extra)), tmp_path / name, quiet=True)


def test_auto_holds_the_images_on_the_cpu_device(tmp_path):
    tr = trainer(tmp_path, "a")
    assert tr.data_on_device and tr.runtime["data_on_device"] is True
    assert tr.train_images.dtype == torch.uint8  # stored as the dataset holds it
    assert tr.train_images.data_ptr() == tr.data.train.images.data_ptr()  # no copy on the CPU


@pytest.mark.parametrize("workers", [0, 1])
def test_resident_and_dataloader_paths_give_the_same_batches_and_losses(tmp_path, workers):
    resident = trainer(tmp_path, "r", "data_on_device=true")
    loader = trainer(tmp_path, "l", "data_on_device=false", f"data_workers={workers}")
    assert not loader.data_on_device and loader.data_workers == workers
    for epoch in (1, 2):  # each epoch its own permutation and views
        batches = list(zip(resident._epoch_loader(epoch), loader._epoch_loader(epoch), strict=True))
        assert len(batches) == resident.steps_per_epoch == 3
        for (a1, a2), (b1, b2) in batches:
            assert torch.equal(a1, b1) and torch.equal(a2, b2)
    losses = []
    for tr in (resident, loader):
        losses.append([tr.scheme.train_step(v1, v2) for v1, v2 in tr._epoch_loader(1)])
    # measured: bitwise equal (the same uint8 batches, the same augmentation parameters)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_the_views_are_those_of_two_views_on_the_whole_batch(tmp_path):
    from repdiag.augment import two_views
    from train.trainer import epoch_generator

    tr = trainer(tmp_path, "a")
    gen = epoch_generator(tr.cfg.seed, 1)
    perm = torch.randperm(len(tr.data.train), generator=gen)
    v1, v2 = two_views(tr.data.train.images[perm[:32]], tr.aug, generator=gen)
    w1, w2 = next(tr._epoch_loader(1))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
