"""The scales of the analyses: which data, backbone and schedule the runs of papers G and S use.

- ``cpu``: Fashion-MNIST (28 px), ResNet-18 at width 1/8 (m = 64), 3 epochs on 6,000
  images: the whole set runs on 2 CPU cores (times in figures/README.md);
- ``cpu-long``: the cpu scale for 30 epochs, every 5th epoch saved (G Fig. 1's precondition
  over training);
- ``gpu``: Fashion-MNIST with the papers' backbones (ResNet-50 for G, ResNet-34 for S),
  all 54,000 training images, 10 epochs, on one GPU;
- ``paper``: the papers' datasets, backbones and schedules (presets ``cifar10-g`` and
  ``s-cifar10``) from the user's ``--data-root``;
- ``smoke``: seconds on generated data, for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

SCALES = ("cpu", "cpu-long", "gpu", "paper", "smoke")


@dataclass(frozen=True)
class Scale:
    """Base presets and overrides of one scale for paper G and paper S runs."""

    name: str
    g_preset: str
    g_set: tuple[str, ...]
    s_preset: str
    s_set: tuple[str, ...]
    # G's heads at this scale: MLP m -> hidden -> out and linear m -> out (G: 2048 -> 512 -> 128)
    g_hidden: int
    g_out: int
    # S's projector grid (scaled with m: S used 512-d features, dim(g) 128/256/512, dim(z) 32/64/128)
    s_dim_g: tuple[int, ...]
    s_dim_z: tuple[int, ...]
    s_base: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    linear_preset: str = "g"
    tsne_points: int = 5000
    # cap of every split for the probes (a stratified subset of the training split as the
    # probe's training set; the 10,000 Fashion-MNIST test images stay whole); None = all
    eval_limit: int | None = None


# CPU scale: 28 px Fashion-MNIST, ResNet-18 at width 1/8 (m = 64), 3 epochs on 6,000 images:
# about 40 s a run on 2 cores. G's heads keep hidden and output below m (MLP 64 -> 32 -> 32,
# linear 64 -> 32), so every head's first layer has a null space. Adam 3e-3 and T = 0.2
# (G: 1e-3, 0.5) because G's values barely move the backbone in so few steps (docs/reproducibility.md).
CPU_COMMON = ("data=fashion-mnist", "backbone=resnet18", "width=0.125", "batch_size=256",
              "knn_every=0", "data_limit=6000", "epochs=3", "optim.lr=0.003", "temperature=0.2")
GPU_COMMON = ("data=fashion-mnist", "data_limit=null", "epochs=10", "batch_size=256", "knn_every=1")

CPU = Scale(
    name="cpu", g_preset="fmnist-tiny",
    g_set=CPU_COMMON + ("val_fraction=0", "save_every=3"),
    s_preset="fmnist-tiny",
    s_set=CPU_COMMON + ("save_every=0", "select=best", "split_scheme=s", "split_seed=0",
                        "head.ae_epochs=5"),
    g_hidden=32, g_out=32, s_dim_g=(16, 32), s_dim_z=(16, 32),
    s_base={"activation": "sigmoid", "dim_g": 32, "dim_z": 16, "zscore": False},
    linear_preset="fast", tsne_points=3000, eval_limit=10000)

SCALE_TABLE = {
    "cpu": CPU,
    # the cpu scale's models, data, lr and T for 30 epochs, every 5th epoch saved (the
    # training curve of G Fig. 1's precondition); about 15 min a run with one thread.
    # Later overrides win: "epochs=30" and "save_every=5" replace the cpu scale's values.
    "cpu-long": replace(CPU, name="cpu-long", g_set=CPU.g_set + ("save_every=5", "epochs=30"),
                        s_set=CPU.s_set + ("epochs=30",)),
    "gpu": Scale(
        name="gpu", g_preset="cifar10-g",
        g_set=GPU_COMMON + ("backbone=resnet50", "save_every=10", "knn_subset=2000"),
        s_preset="s-cifar10",
        s_set=GPU_COMMON + ("backbone=resnet34", "cifar_stem=true", "pretrained_backbone=null",
                            "batch_size=512", "optim.lr=0.6", "save_every=0", "head.ae_epochs=20"),
        g_hidden=512, g_out=128, s_dim_g=(128, 256, 512), s_dim_z=(32, 64, 128),
        s_base={"activation": "sigmoid", "dim_g": 256, "dim_z": 128, "zscore": False},
        linear_preset="g", tsne_points=10000),
    "paper": Scale(
        name="paper", g_preset="cifar10-g", g_set=(), s_preset="s-cifar10", s_set=(),
        g_hidden=512, g_out=128, s_dim_g=(128, 256, 512), s_dim_z=(32, 64, 128),
        s_base={"activation": "sigmoid", "dim_g": 256, "dim_z": 128, "zscore": False},
        seeds=(0,), linear_preset="g", tsne_points=10000),
    # seconds on generated data: exercises every script end to end in the tests
    "smoke": Scale(
        name="smoke", g_preset="fmnist-tiny",
        g_set=("data=synthetic", "width=0.125", "epochs=1", "batch_size=64", "knn_every=0",
               "save_every=1", "data_limit=null"),
        s_preset="fmnist-tiny",
        s_set=("data=synthetic", "width=0.125", "epochs=1", "batch_size=64", "knn_every=0",
               "save_every=0", "data_limit=null", "select=best", "split_scheme=s", "split_seed=0",
               "head.ae_epochs=1"),
        g_hidden=16, g_out=8, s_dim_g=(8, 16), s_dim_z=(4, 8),
        s_base={"activation": "sigmoid", "dim_g": 16, "dim_z": 8, "zscore": False},
        seeds=(0, 1), linear_preset="fast", tsne_points=200),
}
