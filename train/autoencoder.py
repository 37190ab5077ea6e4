"""Paper S's pixel autoencoder and its embedding layer as a projector's first layer.

``repdiag train-ae --data NAME --out DIR`` trains pythae's default MLP
autoencoder (as paper S §3.3 did) on the dataset's pixels, flattened to
3·H·W values in [0, 1]::

    encoder  pixels -> Linear(3HW, 512) -> ReLU -> Linear(512, latent)   # "embedding layer"
    decoder  latent -> Linear(latent, 512) -> ReLU -> Linear(512, 3HW) -> sigmoid

with MSE, Adam (lr 1e-4, no weight decay), batch 100, ReduceLROnPlateau on the
validation loss (patience 10, factor 0.5), 100 epochs, and keeps the checkpoint
with the best validation loss. Images larger than ``max_image_size`` are
downscaled first (S used at most 128 px).

Z-score normalisation (``zscore``) is off by default, as in S (it made S's
validation loss unresponsive; note the sigmoid output cannot reach z-scored
targets). ``zscore=train`` normalises every split with the *training* split's
statistics (the honest variant); ``zscore=per-split`` reproduces S's code,
which normalises each split with its own statistics, so validation and test
statistics leak into their own normalisation. The statistics are S's: per
channel, the mean over images of the per-image channel mean and the mean over
images of the per-image channel standard deviation (population std).

The checkpoint ``DIR/autoencoder.pt`` is a plain dict of tensors and plain
types (loads with ``torch.load(weights_only=True)``), written atomically::

    {"format": "repdiag-autoencoder", "version": 1, "config": {...},
     "latent": int, "hidden": 512, "image_size": int, "pixels": int,
     "embedding": {"weight": (latent, 512), "bias": (latent,)},
     "state_dict": {...whole autoencoder...},
     "best_val_loss": float, "best_epoch": int, "epochs_run": int,
     "zscore": {"mode": str, "mean": [3 floats] | None, "std": [...] | None},
     "history": [{epoch, train_loss, val_loss, lr, seconds}, ...]}

A SimCLR run uses it with ``--set head.kind=ae --set head.ae_checkpoint=PATH``
(``head.hidden_dim`` must equal the latent size; the backbone must give as many
features as the autoencoder's hidden width: 512, S's choice, for ResNet-18/34 at
width 1; ``hidden=128`` for the width-1/4 ResNet-18 of the CPU-scale analyses).
``{latent}`` in the path is replaced by ``head.hidden_dim``, so one sweep can use one
autoencoder per latent size.
The embedding layer's weight and bias are copied into the head's first Linear
and, with ``head.ae_frozen`` (the default, as S), that layer's parameters get
``requires_grad=False`` before the optimizer is built, so neither gradient
steps nor weight decay touch them (nor does ``--resume``, which re-freezes it).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from repdiag.checkpoint import atomic_torch_save, safe_torch_load
from repdiag.data import check_dataset_options, dataset_kwargs, load_dataset
from repdiag.devices import resolve_device
from repdiag.errors import UserError
from repdiag.files import atomic_write_text

AE_FORMAT = "repdiag-autoencoder"
AE_VERSION = 1
HIDDEN = 512  # pythae's default MLP width; the embedding layer takes 512 inputs
ZSCORE_MODES = ("none", "train", "per-split")
CHECKPOINT_NAME = "autoencoder.pt"


@dataclass
class AEConfig:
    """One autoencoder run (paper S §3.3 defaults)."""

    data: str = "cifar10"
    data_root: str | None = None
    data_limit: int | None = None
    val_fraction: float = 0.1
    split_scheme: str = "standard"  # "s": S's pooled 70/10/20 split
    split_seed: int | None = None  # seeds the split; None = seed
    image_size: int | None = None  # dataset option: resize at load (S: 128 for Imagenette/FGVC)
    label_level: str | None = None  # FGVC-Aircraft: variant / family / manufacturer
    latent: int = 512
    # the encoder's first layer width = the embedding layer's input width; it must equal the
    # SimCLR backbone's feature size (S: 512, ResNet-18/34 at width 1)
    hidden: int = HIDDEN
    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 100
    patience: int = 10
    factor: float = 0.5
    zscore: str = "none"
    max_image_size: int = 128
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def validate_ae_config(cfg: AEConfig) -> None:
    """Refuse impossible autoencoder settings (numbers finite and in range) before any work."""
    from train.config import MAX_SEED, check_number_fields

    for name in ("seed", "split_seed"):
        value = getattr(cfg, name)
        if value is not None and not 0 <= value <= MAX_SEED:
            raise UserError(f"{name} must be an integer in 0..2^63-1 ({MAX_SEED}), got {value}")
    check_number_fields(cfg)
    for name in ("latent", "hidden"):
        if isinstance(getattr(cfg, name), bool) or getattr(cfg, name) < 1:
            raise UserError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.zscore not in ZSCORE_MODES:
        raise UserError(f"unknown zscore '{cfg.zscore}'; known: {', '.join(ZSCORE_MODES)}")
    check_dataset_options(cfg.data, dataset_kwargs(cfg.to_dict()))
    for name in ("epochs", "batch_size", "max_image_size"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.patience < 0:
        raise UserError(f"patience must be >= 0, got {cfg.patience}")
    if not cfg.lr > 0 or not 0 < cfg.factor < 1:
        raise UserError("lr must be positive and factor in (0, 1)")
    if cfg.split_scheme == "standard" and not 0 < cfg.val_fraction < 1:
        raise UserError(f"the autoencoder needs a validation split: val_fraction in (0, 1), "
                        f"got {cfg.val_fraction}")


def make_ae_config(data: str | None, overrides=()) -> AEConfig:
    """AEConfig from ``--data`` and ``key=value`` overrides, validated."""
    from train.config import apply_overrides

    cfg = AEConfig()
    if data is not None:
        cfg.data = data
    apply_overrides(cfg, overrides)
    validate_ae_config(cfg)
    return cfg


class ShallowAutoencoder(nn.Module):
    """pythae's default MLP autoencoder; ``embedding`` is encoder Linear(hidden, latent)."""

    def __init__(self, pixels: int, latent: int, hidden: int = HIDDEN):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels),
                                     nn.Sigmoid())

    @property
    def embedding(self) -> nn.Linear:
        return self.encoder[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


# ---------------------------------------------------------------------- pixels
def to_unit(images: torch.Tensor, max_size: int) -> torch.Tensor:
    """uint8 NCHW -> float in [0, 1], downscaled (antialiased) so that H, W <= max_size."""
    x = images.float().div_(255.0)
    h, w = x.shape[-2:]
    if max(h, w) > max_size:
        s = max_size / max(h, w)
        size = (max(1, round(h * s)), max(1, round(w * s)))
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return x


def zscore_stats(images: torch.Tensor, max_size: int = 128, chunk: int = 1024):
    """Paper S's statistics of uint8 images: per channel, the mean over images of the
    per-image channel means and of the per-image channel (population) stds."""
    if len(images) == 0:
        raise UserError("cannot compute Z-score statistics of an empty split")
    mean_sum = torch.zeros(3, dtype=torch.float64)
    std_sum = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = to_unit(images[i:i + chunk], max_size).flatten(2)
        mean_sum += x.mean(dim=2).double().sum(dim=0)
        std_sum += x.std(dim=2, correction=0).double().sum(dim=0)
    n = len(images)
    return (mean_sum / n).float(), (std_sum / n).float().clamp_min(1e-8)


def split_stats(data, mode: str, max_size: int) -> dict:
    """{split name: (mean, std) or None} for the Z-score ``mode``."""
    names = ("train", "val", "test")
    if mode == "none":
        return {n: None for n in names}
    if mode == "train":
        s = zscore_stats(data.train.images, max_size)
        return {n: s for n in names}
    return {n: (zscore_stats(getattr(data, n).images, max_size)
                if len(getattr(data, n)) else None) for n in names}


def flat_batch(images: torch.Tensor, stats, max_size: int, device) -> torch.Tensor:
    """A batch of uint8 images as (N, 3HW) float rows, Z-scored with ``stats`` if given."""
    x = to_unit(images, max_size)
    if stats is not None:
        mean, std = stats
        x = (x - mean[None, :, None, None]) / std[None, :, None, None]
    return x.flatten(1).to(device)


# ---------------------------------------------------------------------- training
@torch.no_grad()
def evaluate(model: ShallowAutoencoder, images: torch.Tensor, stats, cfg: AEConfig, device) -> float:
    """Mean per-element MSE over a split."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(images), max(cfg.batch_size, 256)):
        x = flat_batch(images[i:i + max(cfg.batch_size, 256)], stats, cfg.max_image_size, device)
        total += float(F.mse_loss(model(x), x, reduction="sum"))
        count += x.numel()
    return total / max(1, count)


def train_autoencoder(cfg: AEConfig, out_dir: str | os.PathLike, *, quiet: bool = False) -> dict:
    """Train the autoencoder of ``cfg`` into ``out_dir``; returns a summary dict.

    Written as a run folder is: one writer at a time (:class:`repdiag.runs.RunLock`),
    every file atomically (``config.yaml``, ``metrics.jsonl`` rewritten whole each
    epoch, the checkpoint), a failed write (a full disk) one line naming the file
    (:func:`train.output.checked`); a run that fails before its first checkpoint
    leaves nothing it created.
    """
    from repdiag.runs import in_claimed_folder

    validate_ae_config(cfg)
    out = Path(out_dir)
    ck_path = out / CHECKPOINT_NAME
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write to --out {out}: it exists and is not a folder")
    if ck_path.exists():
        raise UserError(f"{out} already holds an autoencoder ({CHECKPOINT_NAME}); use another --out")

    def work(written: list[Path]) -> dict:
        if ck_path.exists():  # written by the process that held the folder before us
            raise UserError(f"{out} already holds an autoencoder ({CHECKPOINT_NAME}); "
                            "use another --out")
        return _train(cfg, out, ck_path, written, quiet)

    # no autoencoder: nothing of this run is left
    return in_claimed_folder(out, work, keep=ck_path.exists)


def _write(path: Path, write, written: list[Path]) -> None:
    """One atomic write; a failed one is one UserError line; new files are recorded."""
    from train.output import checked

    new = not path.exists()
    checked(path, write)
    if new:
        written.append(path)


def _train(cfg: AEConfig, out: Path, ck_path: Path, written: list[Path], quiet: bool) -> dict:
    """The training loop of :func:`train_autoencoder`, into the locked folder ``out``."""
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.data, root=cfg.data_root, limit=cfg.data_limit,
                        **dataset_kwargs(cfg.to_dict()))
    if len(data.train) < 1 or len(data.val) < 1:
        raise UserError(f"dataset '{cfg.data}': the autoencoder needs non-empty train and "
                        "validation splits")
    stats = split_stats(data, cfg.zscore, cfg.max_image_size)
    sample = to_unit(data.train.images[:1], cfg.max_image_size)
    image_size, pixels = int(sample.shape[-1]), int(sample[0].numel())

    torch.manual_seed(cfg.seed)
    model = ShallowAutoencoder(pixels, cfg.latent, cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=cfg.factor,
                                                         patience=cfg.patience)
    config_path = out / "config.yaml"
    config_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    _write(config_path, lambda: atomic_write_text(config_path, config_text), written)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = data.train.images
    best, best_epoch, history = math.inf, 0, []
    metrics_path = out / "metrics.jsonl"
    _write(metrics_path, lambda: atomic_write_text(metrics_path, ""), written)
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(images), cfg.batch_size):
            x = flat_batch(images[perm[i:i + cfg.batch_size]], stats["train"],
                           cfg.max_image_size, device)
            loss = F.mse_loss(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            count += len(x)
        val = evaluate(model, data.val.images, stats["val"], cfg, device)
        if not math.isfinite(val):
            raise FloatingPointError(f"autoencoder validation loss became {val} at epoch {epoch}")
        plateau.step(val)
        line = {"epoch": epoch, "train_loss": total / max(1, count), "val_loss": val,
                "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(line)
        if val < best:  # the checkpoint first: metrics.jsonl never lists a best epoch it lacks
            best, best_epoch = val, epoch
            ck = _checkpoint(model, cfg, stats, image_size, pixels, best, best_epoch, epoch,
                             history)
            _write(ck_path, lambda ck=ck: atomic_torch_save(ck, ck_path), written)
        text = "".join(json.dumps(m) + "\n" for m in history)  # rewritten whole: never half a line
        _write(metrics_path, lambda text=text: atomic_write_text(metrics_path, text), written)
        if not quiet:
            print(f"ae epoch {epoch}/{cfg.epochs} | train {line['train_loss']:.5f} | "
                  f"val {val:.5f} | lr {line['lr']:.2e}" + (" *" if best_epoch == epoch else ""),
                  flush=True)
    summary = {"out": str(out), "checkpoint": str(ck_path), "best_val_loss": best,
               "best_epoch": best_epoch, "latent": cfg.latent}
    if len(data.test):
        raw = safe_torch_load(ck_path, "autoencoder checkpoint")
        model.load_state_dict(raw["state_dict"])
        summary["test_loss"] = evaluate(model, data.test.images, stats["test"], cfg, device)
    return summary


def _checkpoint(model, cfg, stats, image_size, pixels, best, best_epoch, epoch, history) -> dict:
    emb = model.embedding
    ts = stats["train"]
    return {
        "format": AE_FORMAT,
        "version": AE_VERSION,
        "config": cfg.to_dict(),
        "latent": int(cfg.latent),
        "hidden": int(cfg.hidden),
        "image_size": int(image_size),
        "pixels": int(pixels),
        "embedding": {"weight": emb.weight.detach().cpu().clone(),
                      "bias": emb.bias.detach().cpu().clone()},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "best_val_loss": float(best),
        "best_epoch": int(best_epoch),
        "epochs_run": int(epoch),
        "zscore": {"mode": cfg.zscore,
                   "mean": ts[0].tolist() if ts is not None else None,
                   "std": ts[1].tolist() if ts is not None else None},
        "history": [dict(h) for h in history],
    }


# ---------------------------------------------------------------------- the "ae" head
def load_ae_embedding(path: str | os.PathLike) -> dict:
    """{"weight": (latent, hidden), "bias", "latent", "hidden"} from an autoencoder file."""
    raw = safe_torch_load(path, "autoencoder checkpoint")
    if not (isinstance(raw, dict) and raw.get("format") == AE_FORMAT):
        raise UserError(f"{path}: not an autoencoder checkpoint written by `repdiag train-ae`")
    try:
        w, b = raw["embedding"]["weight"], raw["embedding"]["bias"]
    except (KeyError, TypeError):
        raise UserError(f"{path}: damaged autoencoder checkpoint (no embedding layer)") from None
    if not (isinstance(w, torch.Tensor) and w.ndim == 2
            and isinstance(b, torch.Tensor) and tuple(b.shape) == (w.shape[0],)):
        raise UserError(f"{path}: damaged autoencoder checkpoint (embedding layer shape)")
    return {"weight": w, "bias": b, "latent": int(w.shape[0]), "hidden": int(w.shape[1])}


def ae_checkpoint_path(template: str, hidden_dim: int) -> str:
    """``head.ae_checkpoint`` with ``{latent}`` replaced by ``head.hidden_dim`` (for sweeps
    over dim(g): ``--set head.ae_checkpoint=ae/latent{latent}/autoencoder.pt``)."""
    return template.replace("{latent}", str(hidden_dim))


def attach_ae_embedding(head: nn.Module, cfg, feature_dim: int, *, load: bool = True) -> None:
    """For ``head.kind == "ae"``: copy the autoencoder's embedding layer into the head's first
    Linear and freeze that layer (only) when ``head.ae_frozen``. Call before the optimizer
    is built. ``load=False`` (resume) only freezes; the weights come from the run checkpoint."""
    h = cfg.head
    if h.kind != "ae":
        return
    if not h.ae_checkpoint:
        raise UserError("head.kind=ae needs the autoencoder file: --set head.ae_checkpoint=PATH")
    emb = load_ae_embedding(ae_checkpoint_path(h.ae_checkpoint, h.hidden_dim)) if load else None
    if emb is not None and emb["hidden"] != feature_dim:
        hint = ("use resnet18/resnet34 at width 1" if emb["hidden"] == HIDDEN else
                f"train the autoencoder with hidden={feature_dim}")
        raise UserError(f"head.kind=ae: the autoencoder embedding layer takes {emb['hidden']} inputs "
                        f"but the backbone gives {feature_dim} features; {hint}")
    first = head.first_linear()
    if first is None or first.bias is None:
        raise UserError("head.kind=ae needs head.bias=true (the embedding layer has a bias)")
    if emb is not None:
        if emb["latent"] != h.hidden_dim:
            raise UserError(f"head.kind=ae: the autoencoder's latent size is {emb['latent']} but "
                            f"head.hidden_dim={h.hidden_dim}; set --set "
                            f"head.hidden_dim={emb['latent']}")
        with torch.no_grad():
            first.weight.copy_(emb["weight"].to(first.weight))
            first.bias.copy_(emb["bias"].to(first.bias))
    if h.ae_frozen:
        first.weight.requires_grad_(False)
        first.bias.requires_grad_(False)
