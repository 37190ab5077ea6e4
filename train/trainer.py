"""The training loop: data, two views, scheme step, metrics, checkpoints, resume.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (one JSON line per
epoch), ``checkpoints/epoch_NNN.pt`` (every ``save_every`` epochs; epoch 000 is
the untrained model) and ``last.pt``. Randomness per epoch comes from a
generator seeded by (seed, epoch), so a run stopped after epoch k and resumed
gives the same tensors as an uninterrupted run on the same device.

How the run computes (none of it changes what it trains): ``precision``
(bf16 autocast around the backbone/head forwards, :mod:`repdiag.precision`),
``channels_last``, ``compile``, ``data_on_device`` (the uint8 training images
held on the device and augmented there in batches, or batches gathered by a
DataLoader on the CPU: the same batches and views either way) and several
processes under torchrun (:mod:`train.distributed`). The resolved values are
kept in each checkpoint's ``extra["runtime"]``, with the number of CPU threads
torch used: on the CPU it changes the floating-point summation order, and after
a few epochs the same seed ends measurably elsewhere (0.6 pt of linear-probe
accuracy between 1 and 2 threads for one 3-epoch run, figures/README.md).
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

from repdiag.augment import AugmentConfig, apply_params, sample_params, two_views
from repdiag.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint
from repdiag.data import load_dataset
from repdiag.data.paths import missing_folders, remove_empty_folders
from repdiag.devices import resolve_device
from repdiag.errors import UserError, user_error
from repdiag.files import atomic_write_text, remove_stale_temp_files
from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head, default_cifar_stem
from repdiag.precision import resolve_precision
from repdiag.runs import RunLock, best_epoch, repair_best
from train.autoencoder import (
    CHECKPOINT_NAME,
    AEConfig,
    attach_ae_embedding,
    train_autoencoder,
    zscore_stats,
)
from train.config import LEGACY_VALUES, TrainConfig, dataset_options, from_dict, validate
from train.distributed import convert_sync_batchnorm, init_world, wrap_backbone
from train.monitor import epoch_monitor
from train.optim import build_scheduler
from train.output import checked
from train.pretrained import load_imagenet_backbone, load_pretrained_head
from train.schemes import build_scheme


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
    return torch.Generator().manual_seed(seed_value(seed * 1_000_003 + epoch))


def seed_value(x: int) -> int:
    """A derived seed folded into torch's range (``x mod 2^64``); unchanged below 2^64."""
    return x % 2**64


#: data_on_device=auto holds the training images on a GPU when they take at most this
#: fraction of its free memory
RESIDENT_FRACTION = 0.25


class _Gather(torch.utils.data.Dataset):
    """``dataset[index_tensor]`` = the uint8 images at those indices (one batch per item)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]


class Trainer:
    """Trains one run of ``cfg`` into ``out_dir``; ``resume=True`` continues ``out_dir/last.pt``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike, *, quiet: bool = False,
                 resume: bool = False, epoch_hooks=()):
        self.cfg = cfg
        # called as hook(trainer, epoch) on rank 0 at epoch 0 and after each epoch's checkpoint
        # (e.g. a repdiag.HeadMonitor's step); they must leave the model and the RNG as they are
        self.epoch_hooks = tuple(epoch_hooks)
        self.out = Path(out_dir)
        self.world, self.device = init_world(resolve_device(cfg.device))
        cfg.world_size = self.world.world_size
        self.quiet = quiet or not self.world.is_main
        self.resume = resume
        self.lock = RunLock(self.out)
        self._created = missing_folders(self.out) if self.world.is_main else []
        self._checkpoints_created = not (self.out / "checkpoints").exists()
        self._written: list[Path] = []  # files this run created (removed if it never got a last.pt)
        try:
            self._setup(resume)
        except BaseException:  # a run that could not start leaves no folder or lock behind
            self._abandon()
            raise

    def __del__(self):  # a Trainer built but never run gives its run folder back
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def _abandon(self) -> None:
        """After a failure: a run that never wrote last.pt leaves nothing it created behind.

        Only files and folders this Trainer created are removed (a resumed run, or
        one with a last.pt, keeps everything); then the run-folder lock is released.
        """
        if self.world.is_main and not (self.out / "last.pt").exists():
            for path in reversed(self._written):
                path.unlink(missing_ok=True)
            self._written.clear()
            folders = [self.out / "checkpoints"] if self._checkpoints_created else []
            self.lock.release()
            remove_empty_folders([p for p in folders + self._created if p.exists()])
        self.lock.release()

    def _setup(self, resume: bool) -> None:
        cfg = self.cfg
        self._prepare_out_dir(resume)
        self.data = load_dataset(cfg.data, root=cfg.data_root, limit=cfg.data_limit,
                                 **dataset_options(cfg))
        if len(self.data.train) < 2:
            raise UserError(f"dataset '{cfg.data}' has fewer than 2 training images")
        self._check_world()
        self.image_size = int(self.data.train.images.shape[-1])
        cifar_stem = cfg.cifar_stem if cfg.cifar_stem is not None else default_cifar_stem(
            self.image_size)
        self.backbone_spec = BackboneSpec(cfg.backbone, cfg.width, cifar_stem)
        torch.manual_seed(cfg.seed)
        self.backbone = build_backbone(self.backbone_spec)
        if cfg.pretrained_backbone == "imagenet" and not resume:  # paper S; resume restores
            load_imagenet_backbone(self.backbone, cfg.backbone, width=cfg.width,
                                   cifar_stem=cifar_stem)
        h = cfg.head
        self.head_spec = HeadSpec.from_options(h, self.backbone.feature_dim)
        if h.kind == "directclr":  # the d0 used is recorded in config.yaml and the checkpoint
            h.d0 = self.head_spec.d0
        self.head = build_head(self.head_spec)
        if h.pretrained and not resume:  # frozen only with scheme.kind=fixed; else an init
            load_pretrained_head(self.head, h.pretrained)
        if h.kind == "ae":  # paper S: AE embedding as first layer, frozen before the optimizer
            if not h.ae_checkpoint and not resume:
                h.ae_checkpoint = self._train_autoencoder()

            attach_ae_embedding(self.head, cfg, self.backbone.feature_dim, load=not resume)
        if self.world.distributed:  # batch statistics of the global batch (single-process BN)
            self.backbone = convert_sync_batchnorm(self.backbone, self.device)
            self.head = convert_sync_batchnorm(self.head, self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.channels_last = (cfg.channels_last if cfg.channels_last is not None
                              else self.device.type == "cuda")
        self.backbone.to(self.device)
        self.head.to(self.device)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.input_norm = input_normalization(cfg, self.data)
        self.aug = augment_config(cfg, self.image_size, *self.input_norm)
        self.scheme = build_scheme(cfg, self.backbone, self.head)
        if self.world.distributed:
            for m in self.scheme.method.modules():  # SimSiam's predictor
                convert_sync_batchnorm(m, self.device)
        self.steps_per_epoch = max(1, len(self.data.train) // cfg.batch_size)
        self.scheduler = build_scheduler(self.scheme.optimizer, cfg.optim,
                                         cfg.epochs * self.steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self.metrics: list[dict] = []
        if resume:
            self._restore(self.out / "last.pt")
        self._place_data()
        forward = self.backbone
        if self.world.distributed:
            forward = wrap_backbone(self.backbone, self.world, self.device)
        if cfg.compile:
            forward = torch.compile(forward)
        self.scheme.distribute(self.world, forward)
        self.runtime = {"precision": self.precision, "channels_last": self.channels_last,
                        "compile": bool(cfg.compile), "data_on_device": self.data_on_device,
                        "data_workers": self.data_workers, "world_size": self.world.world_size,
                        "device": str(self.device), "cpu_threads": torch.get_num_threads()}

    def _check_world(self) -> None:
        """What several processes need: a global batch that splits evenly, no files but rank 0's."""
        cfg, size = self.cfg, self.world.world_size
        if size == 1:
            return
        bs = min(cfg.batch_size, len(self.data.train))
        if bs % size:
            raise UserError(f"batch_size is the global batch: {bs} does not split evenly over "
                            f"{size} processes; use a multiple of {size}")
        if cfg.head.kind == "ae" and not cfg.head.ae_checkpoint:
            raise UserError("head.kind=ae with several processes needs head.ae_checkpoint: train "
                            "the autoencoder first (repdiag train-ae)")

    def _place_data(self) -> None:
        """Hold the uint8 training images on the device, or serve batches from a DataLoader."""
        cfg, images = self.cfg, self.data.train.images
        nbytes = images.numel() * images.element_size()
        if self.device.type == "cpu":
            fits, free = True, None
        elif self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
            fits = nbytes <= RESIDENT_FRACTION * free
        else:
            fits, free = False, None
        resident = fits if cfg.data_on_device is None else cfg.data_on_device
        if resident and cfg.data_on_device and free is not None and nbytes > free:
            raise UserError(f"data_on_device=true: the training images take {nbytes / 2**30:.1f} GiB "
                            f"but {self.device} has {free / 2**30:.1f} GiB free; "
                            "use data_on_device=false")
        self.data_on_device = bool(resident)
        self.train_images = images.to(self.device) if resident else images
        self.data_workers = (cfg.data_workers if cfg.data_workers is not None
                             else (0 if self.device.type == "cpu" or resident
                                   else min(4, os.cpu_count() or 1)))

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
            ae_config = AEConfig(data=cfg.data, data_root=cfg.data_root,
                                 data_limit=cfg.data_limit, val_fraction=cfg.val_fraction,
                                 split_scheme=cfg.split_scheme, split_seed=cfg.split_seed,
                                 image_size=cfg.image_size, label_level=cfg.label_level,
                                 latent=cfg.head.hidden_dim, epochs=cfg.head.ae_epochs,
                                 hidden=self.backbone.feature_dim, seed=cfg.seed,
                                 device=cfg.device)
            checked(ae_dir, lambda: train_autoencoder(ae_config, ae_dir, quiet=self.quiet))
        return str(path)

    def _prepare_out_dir(self, resume: bool) -> None:
        if not self.world.is_main:  # only rank 0 creates files; every rank checks
            self._check_out_dir(resume)
            return
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise user_error(f"cannot write to --out {self.out}", e) from None
        self.lock.acquire()  # one writer per run folder, before anything in it changes
        try:
            (self.out / "checkpoints").mkdir(exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise user_error(f"cannot write to --out {self.out}", e) from None
        self._check_out_dir(resume)
        for folder in (self.out, self.out / "checkpoints"):  # left by a killed write
            remove_stale_temp_files(folder)

    def _check_out_dir(self, resume: bool) -> None:
        if resume and not (self.out / "last.pt").exists():
            raise UserError(f"{self.out}: nothing to resume (no last.pt)")
        if not resume and (self.out / "last.pt").exists():
            raise UserError(f"{self.out} already holds a run; use --resume {self.out} "
                            "or another --out")

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
        check_resume_epochs(self.cfg, self.epoch, self.out)
        if self.world.is_main:
            checked(self.out / "best.pt", lambda: repair_best(self.out, self.epoch, self.metrics))

    def _sync_head(self) -> None:
        """Rank 0's head (and SimSiam predictor) on every rank after an epoch-end update."""
        if self.world.distributed:
            self.world.broadcast_module_(self.head, *self.scheme.method.modules())

    # ------------------------------------------------------------------ loop
    def run(self) -> dict:
        """Train from the current epoch to ``cfg.epochs``; returns the last metrics line.

        The run folder stays locked until it returns. If it fails before a
        ``last.pt`` exists, the files it wrote and the folders it created are removed.
        """
        try:
            return self._run()
        except BaseException:
            self._abandon()
            raise
        finally:
            self.lock.release()

    def _run(self) -> dict:
        self._write_config()
        self._rewrite_metrics()
        if self.epoch == 0:
            self.scheme.on_train_start(self)  # e.g. the PCA head of the initial backbone
            self._sync_head()
        if self.epoch == 0 and self.cfg.save_every:
            self._save(self.out / "checkpoints" / "epoch_000.pt")
        if self.epoch == 0:
            self._run_hooks()
        while self.epoch < self.cfg.epochs:
            head_before = head_vector(self.head)
            line = self._train_epoch(self.epoch + 1)
            self.epoch += 1
            self.scheme.on_epoch_end(self)
            self._sync_head()
            # measured on the state the checkpoint holds (after e.g. a PCA refit)
            line["head_rel_change"] = relative_change(head_before, head_vector(self.head))
            line.update(self.scheme.epoch_metrics())
            line.update(self._evaluate(self.epoch))
            best = best_epoch([*self.metrics, line]) == line["epoch"]  # the rule of repdiag.runs
            self.metrics.append(line)
            # Order of the epoch's writes, each atomic: a kill or a full disk between two of
            # them leaves a state that --resume completes: metrics.jsonl never lists an epoch
            # last.pt lacks (it is rewritten from last.pt on resume), and best.pt, written
            # after last.pt, is brought up to date from last.pt's history (repair_best).
            if self.cfg.save_every and self.epoch % self.cfg.save_every == 0:
                self._save(self.out / "checkpoints" / f"epoch_{self.epoch:03d}.pt")
            self._save(self.out / "last.pt")
            if best:
                self._save(self.out / "best.pt")
            self._append_metrics(line)
            self._run_hooks()
            if not self.quiet:
                tqdm.write(format_metrics(line))
        self.world.barrier()  # no rank finishes before rank 0 has written the last checkpoint
        return self.metrics[-1] if self.metrics else {}

    def _run_hooks(self) -> None:
        if self.world.is_main:
            for hook in self.epoch_hooks:
                hook(self, self.epoch)

    def _epoch_loader(self, epoch: int):
        """Yield (view1, view2) batches for ``epoch`` from its own seeded generator.

        The generator draws the epoch's permutation, then for each global
        batch of B pairs the per-sample parameters of its 2B views (view 1 of
        every pair, then view 2), exactly as ``two_views`` on the whole batch
        would. With several processes each rank keeps its slice of the batch
        and of those parameters. The uint8 images come from the device-resident
        copy (indexed there) or from a DataLoader over the CPU copy (gathered
        in its workers, pinned, copied asynchronously); both give the same
        batches, and the augmentation then runs on the device either way.
        """
        gen = epoch_generator(self.cfg.seed, epoch)
        n = len(self.data.train)
        bs = min(self.cfg.batch_size, n)
        h, w = self.data.train.images.shape[-2:]
        size, rank = self.world.world_size, self.world.rank
        lo, hi = rank * bs // size, (rank + 1) * bs // size
        perm = torch.randperm(n, generator=gen)
        batches = [perm[i * bs:(i + 1) * bs][lo:hi] for i in range(self.steps_per_epoch)]
        rows = torch.cat([torch.arange(lo, hi), torch.arange(bs + lo, bs + hi)])
        for x in self._batches(batches):
            params = sample_params(2 * bs, h, w, self.aug, gen, device="cpu")
            if size > 1:
                params = params.select(rows)
            views = apply_params(torch.cat((x, x)), params, self.aug)
            if self.channels_last:
                views = views.contiguous(memory_format=torch.channels_last)
            yield views[:hi - lo], views[hi - lo:]

    def _batches(self, batches: list[torch.Tensor]):
        """The uint8 images of each index batch, on the device."""
        if self.data_on_device:
            for idx in batches:
                yield self.train_images[idx.to(self.device)]
            return
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            _Gather(self.train_images), sampler=batches, batch_size=None,
            num_workers=self.data_workers, pin_memory=cuda,
            persistent_workers=False, prefetch_factor=4 if self.data_workers else None)
        for x in loader:
            yield x.to(self.device, non_blocking=cuda)

    def _train_epoch(self, epoch: int) -> dict:
        self.backbone.train()
        self.head.train()
        t0 = time.perf_counter()
        total, count = 0.0, 0
        bar = tqdm(self._epoch_loader(epoch), total=self.steps_per_epoch, disable=self.quiet,
                   desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        for v1, v2 in bar:
            loss = self.world.mean(self.scheme.train_step(v1, v2))
            if not math.isfinite(loss):
                kept = (f"the last good checkpoint is {self.out / 'last.pt'} (epoch {self.epoch})"
                        if self.epoch else "no checkpoint was written")
                raise DivergedError(f"training diverged: the loss became {loss} at epoch {epoch}, "
                                    f"step {self.step}; {kept}; lower optim.lr")
            if self.scheduler is not None:
                self.scheduler.step()
            self.step += 1
            total += loss * v1.shape[0] * self.world.world_size
            count += v1.shape[0] * self.world.world_size
            bar.set_postfix(loss=f"{loss:.4f}")
        seconds = time.perf_counter() - t0
        if not all_finite(self.backbone, self.head):  # the last step can break them unseen
            kept = (f"the last good checkpoint is {self.out / 'last.pt'} (epoch {self.epoch})"
                    if self.epoch else "no checkpoint was written")
            raise DivergedError(f"training diverged: the weights became NaN or inf at epoch "
                                f"{epoch}; {kept}; lower optim.lr")
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
            if not math.isfinite(out["val_loss"]):
                self._diverged(f"the validation loss became {out['val_loss']} at epoch {epoch}")
        if self.cfg.knn_every and (epoch % self.cfg.knn_every == 0 or epoch == self.cfg.epochs):
            try:
                out.update(epoch_monitor(self.backbone, self.head, self.data, self.cfg,
                                         self.device, *self.input_norm))
            except FloatingPointError as e:
                self._diverged(f"{e} at epoch {epoch}")
        return out

    def _diverged(self, what: str) -> None:
        """Stop the run: DivergedError naming what broke and the last good checkpoint.

        Called once the epoch counter has moved on, so the last good epoch is one less.
        """
        good = self.epoch - 1
        kept = (f"the last good checkpoint is {self.out / 'last.pt'} (epoch {good})"
                if good > 0 else "no checkpoint was written")
        raise DivergedError(f"training diverged: {what}; {kept}; lower optim.lr")

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

    # ------------------------------------------------------------------ output
    def _save(self, path: Path) -> None:
        if not self.world.is_main:
            return
        extra = {"scheme": self.cfg.scheme.kind, **self.scheme.extra_state(),
                 "runtime": dict(self.runtime)}
        if self.input_norm[0] is not None:
            extra["input_norm"] = {"mean": list(self.input_norm[0]), "std": list(self.input_norm[1])}
        ck = make_checkpoint(
            config=self.cfg.to_dict(), backbone_spec=self.backbone_spec,
            head_spec=self.head_spec, backbone=self.backbone, head=self.head, epoch=self.epoch,
            step=self.step, optimizer=self.scheme.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            rng={"torch": torch.get_rng_state()}, metrics=self.metrics, extra=extra)
        self._write(path, lambda: atomic_torch_save(ck, path))

    def _write(self, path: Path, write) -> None:
        """One atomic write of a run file; a full disk is one line; new files are recorded."""
        new = not path.exists()
        checked(path, write)
        if new:
            self._written.append(path)

    def _write_config(self) -> None:
        if not self.world.is_main:
            return
        path = self.out / "config.yaml"
        text = yaml.safe_dump(self.cfg.to_dict(), sort_keys=False)
        self._write(path, lambda: atomic_write_text(path, text))

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl holds exactly the epochs in the checkpoint (drops a lost epoch)."""
        if not self.world.is_main:
            return
        path = self.out / "metrics.jsonl"
        text = "".join(json.dumps(m) + "\n" for m in self.metrics)
        self._write(path, lambda: atomic_write_text(path, text))

    def _append_metrics(self, line: dict) -> None:
        """The epoch's line at the end of metrics.jsonl, written whole or not at all.

        The file is rewritten atomically (it is small: one line per epoch), so a
        full disk or a kill never leaves half a line.
        """
        self._rewrite_metrics()


def all_finite(*modules: torch.nn.Module) -> bool:
    """Whether every parameter and buffer of ``modules`` is finite (no NaN, no inf)."""
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())
               if t.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in tensors)


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


def check_resume_epochs(cfg: TrainConfig, done: int, where) -> None:
    """Refuse a resume whose ``epochs`` is fewer than the run has done (it would rewrite history)."""
    if cfg.epochs < done:
        raise UserError(f"epochs={cfg.epochs} is fewer than the {done} epochs {where} has done; "
                        "a resume cannot undo epochs (start a new run with --out)")


def config_from_checkpoint(out_dir: str | os.PathLike) -> TrainConfig:
    """The TrainConfig stored in ``out_dir/last.pt`` (for ``--resume``)."""
    return resume_state(out_dir)[0]


def resume_state(out_dir: str | os.PathLike) -> tuple[TrainConfig, int]:
    """(the TrainConfig stored in ``out_dir/last.pt``, the epochs it has done), checked."""
    path = Path(out_dir) / "last.pt"
    ck = load_checkpoint(path)  # refuses a damaged file, a bad config, epoch or step in one line
    # keys added after the run was written resume with the values it was trained with
    stored = {**LEGACY_VALUES, **ck.config}
    cfg = from_dict(TrainConfig, stored, where=str(path))
    validate(cfg)
    return cfg, ck.epoch

