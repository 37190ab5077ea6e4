"""The training loop: data, two views, scheme step, metrics, checkpoints, resume.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON line per
epoch), ``checkpoints/epoch_NNN.pt`` (every ``save_every`` epochs; epoch 000 is
the untrained model) and ``last.pt``. Randomness per epoch comes from a
generator seeded by (seed, epoch), so a run stopped after epoch k and resumed
gives the same tensors as an uninterrupted run on the same device.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from repdiag.augment import AugmentConfig, two_views
from repdiag.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    load_checkpoint,
    make_checkpoint,
    remove_stale_temp_files,
)
from repdiag.data import load_dataset
from repdiag.data.paths import missing_folders, remove_empty_folders
from repdiag.errors import UserError
from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head, default_cifar_stem
from train.autoencoder import (
    CHECKPOINT_NAME,
    AEConfig,
    attach_ae_embedding,
    train_autoencoder,
    zscore_stats,
)
from train.config import TrainConfig, dataset_options, directclr_d0, from_dict, validate
from train.device import resolve_device
from train.monitor import epoch_monitor
from train.schemes import build_scheme, load_pretrained_head


class DivergedError(UserError, FloatingPointError):
    """The loss became NaN or infinite: one line for the user, a result for a sweep."""


def input_normalization(cfg: TrainConfig, data) -> tuple[tuple | None, tuple | None]:
    """(mean, std) applied to every input: Z-score with train statistics, 0.5/0.5, or none."""
    if cfg.augment.zscore:
        mean, std = zscore_stats(data.train.images)
        return tuple(mean.tolist()), tuple(std.tolist())
    if cfg.augment.normalize:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return None, None


def augment_config(cfg: TrainConfig, image_size: int, mean=None, std=None) -> AugmentConfig:
    """The augmentation of paper G §5 with the run's settings and input normalisation."""
    a = cfg.augment
    s = a.jitter_strength
    return AugmentConfig(
        crop_scale=(a.crop_scale_min, a.crop_scale_max),
        flip_p=a.flip_p,
        jitter=(s, s, s, a.jitter_hue),
        jitter_p=a.jitter_p,
        gray_p=a.gray_p,
        blur_p=a.blur_p,
        size=image_size,
        mean=mean,
        std=std,
    )


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that drives shuffling and augmentation in ``epoch``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains one run of ``cfg`` into ``out_dir``; ``resume=True`` continues ``out_dir/last.pt``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False,
                 resume: bool = False):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.quiet = quiet
        self.device = resolve_device(cfg.device)
        created = missing_folders(self.out)
        try:
            self._setup(resume)
        except BaseException:  # a run that could not start leaves no empty folder behind
            remove_empty_folders([self.out / "checkpoints", *created] if created else [])
            raise

    def _setup(self, resume: bool) -> None:
        cfg = self.cfg
        self._prepare_out_dir(resume)
        self.data = load_dataset(cfg.data, root=cfg.data_root, limit=cfg.data_limit,
                                 **dataset_options(cfg))
        if len(self.data.train) < 2:
            raise UserError(f"dataset '{cfg.data}' has fewer than 2 training images")
        self.image_size = int(self.data.train.images.shape[-1])
        cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else default_cifar_stem(
            self.image_size)
        self.backbone_spec = BackboneSpec(cfg.backbone, cfg.width, cifar_stem)
        torch.manual_seed(cfg.seed)
        self.backbone = build_backbone(self.backbone_spec)
        if cfg.pretrained_backbone == "imagenet" and not resume:  # paper S; resume restores
            from train.pretrained import load_imagenet_backbone

            load_imagenet_backbone(self.backbone, cfg.backbone, width=cfg.width,
                                   cifar_stem=cifar_stem)
        h = cfg.head
        if h.kind == "directclr":  # the d0 used is recorded in config.yaml and the checkpoint
            h.d0 = directclr_d0(cfg, self.backbone.feature_dim)
        self.head_spec = HeadSpec(kind=h.kind, in_dim=self.backbone.feature_dim,
                                  hidden_dim=h.hidden_dim, out_dim=h.out_dim,
                                  activation=h.activation, bias=h.bias, batchnorm=h.batchnorm,
                                  num_layers=h.num_layers, init=h.init, last_bn=h.last_bn,
                                  **({"d0": h.d0} if h.d0 is not None else {}))
        self.head = build_head(self.head_spec)
        if h.pretrained and not resume:  # frozen only with scheme.kind=fixed; else an init
            load_pretrained_head(self.head, h.pretrained)
        if h.kind == "ae":  # paper S: AE embedding as first layer, frozen before the optimizer
            if not h.ae_checkpoint and not resume:
                h.ae_checkpoint = self._train_autoencoder()

            attach_ae_embedding(self.head, cfg, self.backbone.feature_dim, load=not resume)
        self.backbone.to(self.device)
        self.head.to(self.device)
        self.input_norm = input_normalization(cfg, self.data)
        self.aug = augment_config(cfg, self.image_size, *self.input_norm)
        self.scheme = build_scheme(cfg, self.backbone, self.head)
        self.steps_per_epoch = max(1, len(self.data.train) // cfg.batch_size)
        self.scheduler = self._build_scheduler()
        self.epoch = 0
        self.step = 0
        self.metrics: list[dict] = []
        if resume:
            self._restore(self.out / "last.pt")

    # ------------------------------------------------------------------ set-up
    def _train_autoencoder(self) -> str:
        """Train paper S's autoencoder on the run's data into OUT/autoencoder; its path.

        Used when head.kind=ae is given without head.ae_checkpoint; the path is
        recorded in the run's config, so a resume reuses it.
        """
        cfg = self.cfg
        ae_dir = self.out / "autoencoder"
        path = ae_dir / CHECKPOINT_NAME
        if not path.exists():
            if not self.quiet:
                tqdm.write(f"head.kind=ae without head.ae_checkpoint: training the autoencoder "
                           f"(latent {cfg.head.hidden_dim}, {cfg.head.ae_epochs} epochs) "
                           f"into {ae_dir}")
            train_autoencoder(AEConfig(data=cfg.data, data_root=cfg.data_root,
                                       data_limit=cfg.data_limit, val_fraction=cfg.val_fraction,
                                       split_scheme=cfg.split_scheme, split_seed=cfg.split_seed,
                                       image_size=cfg.image_size,
                                       label_level=cfg.label_level,
                                       latent=cfg.head.hidden_dim, epochs=cfg.head.ae_epochs,
                                       hidden=self.backbone.feature_dim,
                                       seed=cfg.seed, device=cfg.device), ae_dir, quiet=self.quiet)
        return str(path)

    def _prepare_out_dir(self, resume: bool) -> None:
        try:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise UserError(f"cannot write to --out {self.out}: {e.strerror or e}") from None
        for folder in (self.out, self.out / "checkpoints"):  # left by a killed write
            remove_stale_temp_files(folder)
        if resume and not (self.out / "last.pt").exists():
            raise UserError(f"{self.out}: nothing to resume (no last.pt)")
        if not resume and (self.out / "last.pt").exists():
            raise UserError(f"{self.out} already holds a run; use --resume {self.out} "
                            "or another --out")

    def _build_scheduler(self):
        o = self.cfg.optim
        if o.schedule == "none":
            return None
        total = self.cfg.epochs * self.steps_per_epoch

        def cosine(step: int) -> float:
            t = min(step, total) / max(1, total)
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(self.scheme.optimizer, cosine)

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        self.backbone.load_state_dict(ck.backbone_state)
        self.head.load_state_dict(ck.head_state)
        if ck.optimizer is not None:
            self.scheme.optimizer.load_state_dict(ck.optimizer)
        if self.scheduler is not None and ck.scheduler is not None:
            self.scheduler.load_state_dict(ck.scheduler)
        self.scheme.load_extra(ck.extra)
        self.epoch, self.step, self.metrics = ck.epoch, ck.step, list(ck.metrics)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train from the current epoch to ``cfg.epochs``; returns the last metrics line."""
        self._write_config()
        self._rewrite_metrics()
        if self.epoch == 0:
            self.scheme.on_train_start(self)  # e.g. the PCA head of the initial backbone
        if self.epoch == 0 and self.cfg.save_every:
            self._save(self.out / "checkpoints" / "epoch_000.pt")
        while self.epoch < self.cfg.epochs:
            head_before = head_vector(self.head)
            line = self._train_epoch(self.epoch + 1)
            self.epoch += 1
            self.scheme.on_epoch_end(self)
            # measured on the state the checkpoint holds (after e.g. a PCA refit)
            line["head_rel_change"] = relative_change(head_before, head_vector(self.head))
            line.update(self.scheme.epoch_metrics())
            line.update(self._evaluate(self.epoch))
            best = self._is_best(line)
            self.metrics.append(line)
            self._append_metrics(line)
            if self.cfg.save_every and self.epoch % self.cfg.save_every == 0:
                self._save(self.out / "checkpoints" / f"epoch_{self.epoch:03d}.pt")
            self._save(self.out / "last.pt")
            if best:
                self._save(self.out / "best.pt")
            if not self.quiet:
                tqdm.write(format_metrics(line))
        return self.metrics[-1] if self.metrics else {}

    def _epoch_loader(self, epoch: int):
        """Yield (view1, view2) batches for ``epoch`` from its own seeded generator."""
        gen = epoch_generator(self.cfg.seed, epoch)
        images = self.data.train.images
        n, bs = len(images), min(self.cfg.batch_size, len(images))
        perm = torch.randperm(n, generator=gen)
        for i in range(self.steps_per_epoch):
            idx = perm[i * bs:(i + 1) * bs]
            x = images[idx].to(self.device, non_blocking=True)
            v1, v2 = two_views(x, self.aug, generator=gen)
            yield v1, v2

    def _train_epoch(self, epoch: int) -> dict:
        self.backbone.train()
        self.head.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        bar = tqdm(self._epoch_loader(epoch), total=self.steps_per_epoch, disable=self.quiet,
                   desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        for v1, v2 in bar:
            loss = self.scheme.train_step(v1, v2)
            if not math.isfinite(loss):
                kept = (f"the last good checkpoint is {self.out / 'last.pt'} (epoch {self.epoch})"
                        if self.epoch else "no checkpoint was written")
                raise DivergedError(f"training diverged: the loss became {loss} at epoch {epoch}, "
                                    f"step {self.step}; {kept}; lower optim.lr")
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            total += loss * v1.shape[0]
            count += v1.shape[0]
            bar.set_postfix(loss=f"{loss:.4f}")
        seconds = time.perf_counter() - t0
        line = {
            "epoch": epoch,
            "loss": total / max(1, count),
            "lr": self.scheme.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_s": count / seconds if seconds > 0 else float("nan"),
        }
        return line

    def _evaluate(self, epoch: int) -> dict:
        """End-of-epoch numbers: validation contrastive loss, then the kNN/RankMe monitor."""
        out = {}
        if len(self.data.val) >= 2:  # NT-Xent needs a negative
            out["val_loss"] = self.validation_loss()
        if self.cfg.knn_every and (epoch % self.cfg.knn_every == 0 or epoch == self.cfg.epochs):
            out.update(epoch_monitor(self.backbone, self.head, self.data, self.cfg, self.device,
                                     *self.input_norm))
        return out

    def validation_loss(self) -> float:
        """Mean contrastive loss on the validation split (paper S's checkpoint criterion).

        Eval mode, no gradient, batches of the training batch size (the
        NT-Xent value depends on it) over the validation images in their
        stored order, two views drawn from a generator with a fixed seed
        (``epoch_generator(seed, 0)``; training epochs start at 1), so the
        same views are scored at every epoch and only the model changes.
        """
        images = self.data.val.images
        bs = min(self.cfg.batch_size, len(images))
        gen = epoch_generator(self.cfg.seed, 0)
        losses = []
        with self.scheme.evaluating():
            for i in range(len(images) // bs):
                x = images[i * bs:(i + 1) * bs].to(self.device)
                v1, v2 = two_views(x, self.aug, generator=gen)
                losses.append(float(self.scheme.loss(v1, v2)))
        return sum(losses) / len(losses)

    def _is_best(self, line: dict) -> bool:
        """Whether this epoch's validation loss is the lowest so far (then best.pt is written)."""
        if "val_loss" not in line or not math.isfinite(line["val_loss"]):
            return False
        earlier = [m["val_loss"] for m in self.metrics if m.get("val_loss") is not None]
        return not earlier or line["val_loss"] < min(earlier)

    # ------------------------------------------------------------------ output
    def _save(self, path: Path) -> None:
        extra = {"scheme": self.cfg.scheme.kind, **self.scheme.extra_state()}
        if self.input_norm[0] is not None:
            extra["input_norm"] = {"mean": list(self.input_norm[0]), "std": list(self.input_norm[1])}
        ck = make_checkpoint(
            config=self.cfg.to_dict(), backbone_spec=self.backbone_spec,
            head_spec=self.head_spec, backbone=self.backbone, head=self.head, epoch=self.epoch,
            step=self.step, optimizer=self.scheme.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            rng={"torch": torch.get_rng_state()}, metrics=self.metrics, extra=extra)
        atomic_torch_save(ck, path)

    def _write_config(self) -> None:
        atomic_write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the epochs in the checkpoint (drops a lost epoch)."""
        atomic_write_text(self.out / "metrics.jsonl",
                          "".join(json.dumps(m) + "\n" for m in self.metrics))

    def _append_metrics(self, line: dict) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()


def head_vector(head: torch.nn.Module) -> torch.Tensor | None:
    """All of the head's parameters as one flat float64 vector (None for a parameter-free head)."""
    params = [p.detach().reshape(-1).double().cpu() for p in head.parameters()]
    return torch.cat(params) if params else None


def relative_change(before: torch.Tensor | None, after: torch.Tensor | None) -> float | None:
    """‖θ_after − θ_before‖ / ‖θ_before‖: how far the head moved in an epoch (None if no head)."""
    if before is None or after is None or float(before.norm()) == 0.0:
        return None
    return float((after - before).norm() / before.norm())


def format_metrics(line: dict) -> str:
    """One human-readable progress line for an epoch's metrics."""
    parts = [f"epoch {line['epoch']}", f"loss {line['loss']:.4f}",
             f"{line['seconds']:.1f} s", f"{line['images_per_s']:.0f} img/s"]
    if line.get("val_loss") is not None:
        parts.append(f"val loss {line['val_loss']:.4f}")
    if line.get("head_rel_change") is not None:
        parts.append(f"head moved {line['head_rel_change']:.1e}")
    if "knn_val" in line:
        parts.append(f"kNN(val) {100 * line['knn_val']:.2f}%")
    if "knn_test" in line:
        parts.append(f"kNN(test, not used for selection) {100 * line['knn_test']:.2f}%")
    if "rankme_h" in line:
        parts.append(f"RankMe h {line['rankme_h']:.1f} z {line['rankme_z']:.1f}")
    return " | ".join(parts)


def config_from_checkpoint(out_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in ``out_dir/last.pt`` (for ``--resume``)."""
    ck = load_checkpoint(Path(out_dir) / "last.pt")
    cfg = from_dict(TrainConfig, ck.config, where=str(Path(out_dir) / "last.pt"))
    validate(cfg)
    return cfg

