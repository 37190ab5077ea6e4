"""Seconds per epoch of SimCLR training: our Trainer against a lightly-built loop and a ceiling.

SimCLR with a ResNet (CIFAR stem: 3x3 stride-1 conv1, no max-pool),
MLP head m -> 512 -> 128 (BN, ReLU), NT-Xent at T = 0.5, Adam lr 1e-3 (weight
decay 1e-6), batch 512 pairs by default, on the same images and device:

* ``ours``: ``train.trainer.Trainer`` built from a ``TrainConfig`` made in code
  (epochs 1, val_fraction 0, knn_every 0, save_every 0, so evaluation and
  checkpoints stay out of the timed part); its training epoch
  (``Trainer._train_epoch``: batched two-view augmentation on the device, one
  scheme step per batch) is timed for ``--steps`` steps. ``--precision`` (and
  any ``--set key=value``) reach the trainer only if ``TrainConfig`` has the key.
* ``lightly``: the loop of lightly's SimCLR example, built from lightly's public
  pieces: torchvision ResNet with the CIFAR stem, ``SimCLRProjectionHead(m, 512,
  128)``, ``NTXentLoss(temperature=0.5)``, ``SimCLRTransform(input_size=32,
  min_scale=0.2, cj_strength=0.5, gaussian_blur=0.0, normalize=None)`` (the same
  augmentation parameters as ours) applied per PIL image in a standard
  ``DataLoader`` (``--workers`` processes, shuffle, drop_last, pin_memory on
  CUDA); fp32; the two views through the model one after the other.
* ``reference``: the ceiling of a plain loop: the same torchvision model, lightly
  head and loss on two random batches already on the device (no data loading, no
  augmentation), both views as one forward pass, bf16 autocast + channels_last +
  cudnn.benchmark on CUDA, fp32 on CPU.

Every contestant runs ``--warmup`` untimed steps, then ``--steps`` timed steps
(capped at one epoch, ``images // batch`` steps); the data loaders (ours and
lightly's) start afresh for the timed steps, so their start-up is counted, as it
is once per epoch in a real run. Seconds per epoch are the measured seconds per
step times the epoch's step count (stated in the output). ``--repeats`` > 1
alternates the contestants and takes the median step time of each. Ratios are
only meaningful within one run (same process, device and load).

    .venv/bin/python bench/bench_train.py --device cuda --json bench/bench_train_gpu.json
    .venv/bin/python bench/bench_train.py --device cpu --images 1024 --batch 64 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from repdiag.data import ImageSplit, load_dataset, make_synthetic, register  # noqa: E402
from repdiag.data.registry import REGISTRY  # noqa: E402
from repdiag.devices import resolve_device  # noqa: E402
from repdiag.errors import UserError  # noqa: E402
from train.config import TrainConfig, apply_overrides, validate  # noqa: E402

DATASET_NAME = "bench-train-images"
_IMAGES: dict[str, ImageSplit] = {}  # what the registered loader hands to our Trainer
FEATURE_DIMS = {"resnet18": 512, "resnet50": 2048}


# ----------------------------------------------------------------------------- data
def _bench_loader(*, root, seed):
    """Registry loader of the bench's image set: the train split, an empty test split."""
    split = _IMAGES["train"]
    empty = ImageSplit(split.images[:0].clone(), split.labels[:0].clone(), split.classes)
    return split, empty


def load_images(data: str, n: int, seed: int = 0) -> tuple[ImageSplit, str]:
    """``n`` training images (uint8, (N, 3, 32, 32)) and the name of where they came from.

    ``cifar10`` reads CIFAR-10's training split from disk (no download);
    ``synthetic`` generates CIFAR-sized images (``repdiag.data.make_synthetic``,
    10 classes); ``auto`` is CIFAR-10 if it is on disk, else synthetic.
    """
    if data in ("auto", "cifar10"):
        try:
            ds = load_dataset("cifar10", val_fraction=0.0, seed=seed, download=False)
            train = ds.train
            if n < len(train):
                train = ImageSplit(train.images[:n].clone(), train.labels[:n].clone(), train.classes)
            return train, f"cifar10 (first {len(train)} training images)"
        except UserError as e:
            if data == "cifar10":
                raise
            print(f"cifar10 not on disk ({str(e)[:100]}...): using generated images", file=sys.stderr)
    train, _ = make_synthetic(n_train=n, n_test=0, num_classes=10, image_size=32, seed=seed)
    return train, f"synthetic ({n} generated 32x32 images, 10 classes)"


def _register_images(train: ImageSplit) -> None:
    _IMAGES["train"] = train
    if DATASET_NAME not in REGISTRY:
        register(DATASET_NAME)(_bench_loader)


# ----------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_resnet(backbone: str) -> nn.Module:
    """torchvision ResNet with the CIFAR stem and ``fc`` removed (features of size m)."""
    import torchvision

    net = getattr(torchvision.models, backbone)()
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _lightly_model(backbone: str) -> nn.Module:
    from lightly.models.modules import SimCLRProjectionHead

    return nn.Sequential(cifar_resnet(backbone),
                         SimCLRProjectionHead(FEATURE_DIMS[backbone], 512, 128))


def _adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)


# ----------------------------------------------------------------------------- contestants
class Ours:
    """Our Trainer; each ``measure`` times one shortened training epoch."""

    name = "ours"

    def __init__(self, args, device: torch.device, tmp: Path):
        from train.trainer import Trainer

        cfg = TrainConfig()
        cfg.name = "bench-train"
        cfg.method = "simclr"
        cfg.data = DATASET_NAME
        cfg.val_fraction = 0.0
        cfg.backbone = args.backbone
        cfg.width = 1.0
        cfg.cifar_stem = True
        cfg.epochs = 1
        cfg.batch_size = args.batch
        cfg.knn_every = 0
        cfg.save_every = 0
        cfg.device = str(device)
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        if "precision" in fields and args.precision is not None:
            apply_overrides(cfg, [f"precision={args.precision}"])
        apply_overrides(cfg, args.set)
        validate(cfg)
        self.cfg = cfg
        self.trainer = Trainer(cfg, tmp / "ours", quiet=True)
        # how the trainer computes, as it resolved it (newer trainers), else the config keys
        runtime = getattr(self.trainer, "runtime", None)
        keys = ("precision", "channels_last", "compile", "data_on_device", "data_workers")
        self.passed = dict(runtime) if isinstance(runtime, dict) else {
            k: getattr(cfg, k) for k in keys if k in fields}
        self.device = device
        self.epoch = 0

    def run_steps(self, steps: int) -> tuple[int, float]:
        """One training epoch cut to ``steps`` steps: (steps done, seconds)."""
        t = self.trainer
        t.steps_per_epoch = steps
        before = t.step
        self.epoch += 1
        _sync(self.device)
        t0 = time.perf_counter()
        t._train_epoch(self.epoch)
        _sync(self.device)
        return t.step - before, time.perf_counter() - t0


class LightlyLoop:
    """lightly's SimCLR example loop: per-image PIL augmentation in DataLoader workers."""

    name = "lightly"

    def __init__(self, args, device: torch.device, train: ImageSplit):
        from lightly.loss import NTXentLoss
        from lightly.transforms import SimCLRTransform
        from PIL import Image

        torch.manual_seed(0)
        self.device = device
        self.model = _lightly_model(args.backbone).to(device)
        self.criterion = NTXentLoss(temperature=0.5)
        self.optimizer = _adam(self.model)
        transform = SimCLRTransform(input_size=32, min_scale=0.2, cj_strength=0.5,
                                    gaussian_blur=0.0, normalize=None)
        pil = [Image.fromarray(a) for a in train.images.permute(0, 2, 3, 1).numpy()]
        self.dataset = _PILViews(pil, transform)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_size=args.batch, shuffle=True, drop_last=True,
            num_workers=args.workers, pin_memory=device.type == "cuda")

    def run_steps(self, steps: int) -> tuple[int, float]:
        """``steps`` steps from a freshly started DataLoader iterator: (steps done, seconds)."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        done = 0
        _sync(self.device)
        t0 = time.perf_counter()
        for x0, x1 in self.loader:
            x0 = x0.to(self.device, non_blocking=True)
            x1 = x1.to(self.device, non_blocking=True)
            z0 = self.model(x0)
            z1 = self.model(x1)
            loss = self.criterion(z0, z1)
            total += loss.detach()
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            done += 1
            if done == steps:
                break
        float(total)
        _sync(self.device)
        return done, time.perf_counter() - t0


class _PILViews(torch.utils.data.Dataset):
    """PIL images through a lightly multi-view transform: item = [view0, view1]."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i])


class Reference:
    """Ceiling: same torchvision model, lightly head and loss on device-resident random tensors."""

    name = "reference"

    def __init__(self, args, device: torch.device):
        from lightly.loss import NTXentLoss

        torch.manual_seed(0)
        self.device = device
        self.cuda = device.type == "cuda"
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = _lightly_model(args.backbone).to(device, memory_format=fmt)
        self.criterion = NTXentLoss(temperature=0.5)
        self.optimizer = _adam(self.model)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(2 * args.batch, 3, 32, 32, generator=g)
        self.x = x.to(device).contiguous(memory_format=fmt)

    def run_steps(self, steps: int) -> tuple[int, float]:
        """``steps`` plain steps on the fixed random batch: (steps, seconds)."""
        self.model.train()
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda
                    else contextlib.nullcontext())
        old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.cuda
        try:
            _sync(self.device)
            t0 = time.perf_counter()
            for _ in range(steps):
                with autocast:
                    z0, z1 = self.model(self.x).float().chunk(2)
                    loss = self.criterion(z0, z1)
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            float(loss.detach())
            _sync(self.device)
            return steps, time.perf_counter() - t0
        finally:
            torch.backends.cudnn.benchmark = old


# ----------------------------------------------------------------------------- report
def machine(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def git_commit() -> dict:
    """HEAD of the repository and whether the work tree had uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except OSError:
        return {"commit": None, "dirty": None}


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--backbone", default="resnet18", choices=sorted(FEATURE_DIMS))
    ap.add_argument("--batch", type=int, default=512, help="pairs per step")
    ap.add_argument("--images", type=int, default=None,
                    help="images in the epoch (default: 50000 on CUDA, 2048 on CPU)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per contestant, capped at one epoch "
                         "(default: the whole epoch on CUDA, 4 on CPU)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed rounds, contestants alternating; the median is reported")
    ap.add_argument("--workers", type=int, default=os.cpu_count(),
                    help="DataLoader workers of the lightly loop (default: all cores)")
    ap.add_argument("--data", default="auto", choices=("auto", "cifar10", "synthetic"))
    ap.add_argument("--precision", default="auto",
                    help="our trainer's precision key, if TrainConfig has one (else ignored)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other TrainConfig key for our trainer, e.g. compile=true")
    ap.add_argument("--only", default="ours,lightly,reference",
                    help="comma-separated subset of the contestants")
    ap.add_argument("--json", default=None, help="write the results to this file")
    return ap


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print a table, return (and optionally write) the results as a dict."""
    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.images or (50000 if cuda else 2048)
    if args.batch < 2 or n < args.batch:
        raise UserError(f"need 2 <= batch <= images, got batch {args.batch}, images {n}")
    epoch_steps = n // args.batch
    steps = min(args.steps or (epoch_steps if cuda else 4), epoch_steps)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    names = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(names) - {"ours", "lightly", "reference"}
    if unknown:
        raise UserError(f"--only: unknown contestant(s) {', '.join(sorted(unknown))}")

    train, source = load_images(args.data, n)
    _register_images(train)
    print(f"{args.backbone}, batch {args.batch}, {source}, {epoch_steps} steps/epoch; "
          f"device {device} ({machine(device)}); {warmup} warm-up + {steps} timed steps"
          f" x {args.repeats}", flush=True)

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        contestants = []
        for name in names:
            t0 = time.perf_counter()
            if name == "ours":
                c = Ours(args, device, Path(tmp))
            elif name == "lightly":
                c = LightlyLoop(args, device, train)
            else:
                c = Reference(args, device)
            if warmup:
                c.run_steps(warmup)
            extra = f" (trainer runtime {c.passed})" if isinstance(c, Ours) else ""
            print(f"  {name}: set-up + warm-up {time.perf_counter() - t0:.1f} s{extra}", flush=True)
            contestants.append(c)
        per_step: dict[str, list[float]] = {c.name: [] for c in contestants}
        for _ in range(args.repeats):
            for c in contestants:
                done, seconds = c.run_steps(steps)
                per_step[c.name].append(seconds / done)
                print(f"  {c.name}: {done} steps in {seconds:.2f} s", flush=True)
        for c in contestants:
            s = statistics.median(per_step[c.name])
            results[c.name] = {
                "seconds_per_step": s,
                "seconds_per_epoch": s * epoch_steps,
                "pairs_per_s": args.batch / s,
                "steps_timed": steps,
                "seconds_per_step_each_repeat": per_step[c.name],
            }
            if isinstance(c, Ours):
                results[c.name]["trainer_runtime"] = c.passed
        del contestants
    ratios = {}
    if "ours" in results:
        for other in ("reference", "lightly"):
            if other in results:
                ratios[f"ours_pairs_per_s_over_{other}"] = (results["ours"]["pairs_per_s"]
                                                            / results[other]["pairs_per_s"])
    if "lightly" in results and "ours" in results:
        ratios["lightly_epoch_over_ours_epoch"] = (results["lightly"]["seconds_per_epoch"]
                                                   / results["ours"]["seconds_per_epoch"])

    print(f"\n{'contestant':<11} {'s/step':>9} {'s/epoch':>10} {'pairs/s':>10}   "
          f"(epoch = {epoch_steps} steps of {args.batch}, extrapolated from {steps} timed)")
    for name, r in results.items():
        print(f"{name:<11} {r['seconds_per_step']:9.3f} {r['seconds_per_epoch']:10.1f} "
              f"{r['pairs_per_s']:10.1f}")
    for key, value in ratios.items():
        print(f"{key}: {value:.3f}")

    out = {
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]) if argv is None
        else "main(" + repr(argv) + ")",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": str(device),
        "machine": machine(device),
        "torch": torch.__version__,
        "lightly": _version("lightly"),
        "git": git_commit(),
        "backbone": args.backbone,
        "batch": args.batch,
        "images": n,
        "data": source,
        "epoch_steps": epoch_steps,
        "warmup_steps": warmup,
        "timed_steps": steps,
        "repeats": args.repeats,
        "lightly_workers": args.workers,
        "results": results,
        "ratios": ratios,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
