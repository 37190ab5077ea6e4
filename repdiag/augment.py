"""SimCLR two-view augmentation for whole batches, vectorised over samples.

Paper G §5 ("Augmentations used"): RandomResizedCrop (scale [0.2, 1], ratio
[3/4, 4/3]) -> horizontal flip (p=0.5) -> ColorJitter(0.4, 0.4, 0.4, 0.1)
with p=0.8 -> RandomGrayscale (p=0.2; 0.1 for TinyImageNet) -> optional
Gaussian blur (paper S: p=0.5; off by default) -> optional normalisation.

Every sample gets its own random parameters, yet nothing loops over samples:
the parameters are drawn as (N, ...) tensors and every operation is a batched
tensor op, so the same code runs on CPU and GPU.

Design choices (differences from torchvision's per-image pipeline):

* **Crop boxes are continuous.**  torchvision rounds the crop's width/height
  and position to whole pixels; here the box ``(x0, y0, x1, y1)`` is real
  valued (pixel-edge coordinates, ``0 <= x0 < x1 <= W``) and the crop+resize is
  one bilinear resampling with ``torchvision.ops.roi_align`` (``aligned=True``,
  ``sampling_ratio=0``, i.e. adaptive: a single bilinear tap per output pixel
  when upsampling -- the usual case, as the crop is never larger than the
  image -- and ``ceil(crop/out)`` taps per axis averaged when downsampling,
  which acts as an anti-alias box filter).  A full-image box at the input size
  is the identity.  Candidate selection is torchvision's: 10 candidates
  (area fraction ~ U[scale], log-ratio ~ U[log ratio]) per sample, drawn at
  once as an (N, 10) tensor; the first that fits is used, otherwise the
  centre crop with the ratio clamped to the allowed range.
* **Colour jitter order is random per sample**, as torchvision's ColorJitter
  draws a fresh permutation of (brightness, contrast, saturation, hue) on each
  call, i.e. per image.  It is evaluated without a sample loop and without a
  host-device sync: brightness, contrast and saturation are all blends
  ``clamp(f*x + (1-f)*ref)`` (``ref`` = 0, mean grey, grey), so each step is one
  blend with a per-sample ``f`` and ``ref``; the expensive hue op is evaluated
  once for the whole batch, with the blends ordered before/after it per
  sample (3 blend steps, hue, 3 blend steps; inactive steps use f=1).
* **Hue is rotated in HSV** (closest to torchvision, which also works in HSV);
  RGB->HSV->RGB is fused: hue rotation keeps max, min and hence V and S, so
  ``out_n = max - (max - min) * clamp(min(k_n, 4 - k_n), 0, 1)`` with
  ``k_n = (n + 6 h') mod 6``, n = 5, 3, 1 for R, G, B.
* **Greyscale weights** are ITU-R 601 (0.299, 0.587, 0.114) everywhere (the
  greyscale op and the grey references of contrast and saturation);
  torchvision uses 0.2989 for red, a difference below 1e-4.
* Each colour op clamps to [0, 1], as torchvision does for float images.
* The Gaussian blur uses sigma ~ U[0.1, 2.0] per sample, an odd kernel of
  about 10% of the output side (at least 3), reflect padding, as a separable
  depthwise convolution over the batch.

Randomness: every draw goes through the ``generator`` when one is given, on
the generator's device (CPU generator + CUDA images works: the parameters are
tiny and are moved over).  The draws are made in a fixed order that does not
depend on the configuration, so the same seed gives the same output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from repdiag.errors import UserError

__all__ = [
    "LUMA_WEIGHTS",
    "AugmentConfig",
    "AugmentError",
    "AugmentParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_params",
    "augment_batch",
    "color_jitter",
    "eval_transform",
    "gaussian_blur",
    "normalize",
    "random_grayscale",
    "resized_crop",
    "sample_crop_boxes",
    "sample_params",
    "to_grayscale",
    "two_views",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights for R, G, B."""

N_CROP_ATTEMPTS = 10
BLUR_SIGMA = (0.1, 2.0)

_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3


class AugmentError(UserError, ValueError):
    """A bad image batch or augmentation setting (a UserError and a ValueError)."""


def _pair(x: float | Sequence[float], name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in x)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise AugmentError(f"{name} must be a pair of numbers, got {x!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise AugmentError(f"{name} must be a finite (low, high) pair with low <= high, got {x!r}")
    return lo, hi


def _size_pair(size: int | Sequence[int] | None, name: str = "size") -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    else:
        try:
            h, w = size  # type: ignore[misc]
        except (TypeError, ValueError):
            raise AugmentError(f"{name} must be an int or an (h, w) pair, got {size!r}") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (h, w)):
            raise AugmentError(f"{name} must hold integers, got {size!r}")
    if h < 1 or w < 1:
        raise AugmentError(f"{name} must be positive, got {size!r}")
    return int(h), int(w)


def _stats(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise AugmentError("mean and std must be given together (or neither)")
    try:
        m = tuple(float(v) for v in mean)
        s = tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise AugmentError(f"mean/std must be sequences of 3 numbers, got {mean!r}, {std!r}") from None
    if len(m) != 3 or len(s) != 3:
        raise AugmentError(f"mean and std must have 3 values (RGB), got {len(m)} and {len(s)}")
    if not all(math.isfinite(v) for v in m) or not all(math.isfinite(v) and v > 0 for v in s):
        raise AugmentError(f"mean must be finite and std positive, got {m}, {s}")
    return m, s


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """All augmentation parameters; defaults are paper G's SimCLR settings.

    ``jitter`` is (brightness, contrast, saturation, hue) strength as in
    torchvision's ColorJitter: factors are drawn from [1-s, 1+s] (floored at
    0) for the first three and from [-h, h] for hue; 0 disables an op.
    ``size`` is the output (h, w) or an int for square output; None keeps the
    input size.  ``mean``/``std`` (both or neither) normalise the output.
    ``blur_kernel`` None means an odd kernel of ~10% of the output side.
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    blur_kernel: int | None = None
    size: int | tuple[int, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        lo, hi = _pair(self.crop_scale, "crop_scale")
        if not 0.0 < lo <= hi <= 1.0:
            raise AugmentError(f"crop_scale must satisfy 0 < low <= high <= 1, got {(lo, hi)}")
        object.__setattr__(self, "crop_scale", (lo, hi))
        lo, hi = _pair(self.crop_ratio, "crop_ratio")
        if not 0.0 < lo:
            raise AugmentError(f"crop_ratio must be positive, got {(lo, hi)}")
        object.__setattr__(self, "crop_ratio", (lo, hi))
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
                raise AugmentError(f"{name} must be a probability in [0, 1], got {p!r}")
            object.__setattr__(self, name, float(p))
        try:
            jit = tuple(float(v) for v in self.jitter)
        except (TypeError, ValueError):
            raise AugmentError(f"jitter must be 4 numbers, got {self.jitter!r}") from None
        if len(jit) != 4 or not all(math.isfinite(v) and v >= 0 for v in jit):
            raise AugmentError(f"jitter must be 4 non-negative numbers, got {self.jitter!r}")
        if jit[3] > 0.5:
            raise AugmentError(f"hue jitter must be at most 0.5, got {jit[3]}")
        object.__setattr__(self, "jitter", jit)
        lo, hi = _pair(self.blur_sigma, "blur_sigma")
        if not 0.0 < lo:
            raise AugmentError(f"blur_sigma must be positive, got {(lo, hi)}")
        object.__setattr__(self, "blur_sigma", (lo, hi))
        k = self.blur_kernel
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0):
            raise AugmentError(f"blur_kernel must be a positive odd int or None, got {k!r}")
        object.__setattr__(self, "size", _size_pair(self.size))
        st = _stats(self.mean, self.std)
        if st is not None:
            object.__setattr__(self, "mean", st[0])
            object.__setattr__(self, "std", st[1])


@dataclasses.dataclass
class AugmentParams:
    """Per-sample random parameters of one augmentation call (all length N).

    ``boxes``: (N, 4) float crop boxes ``(x0, y0, x1, y1)`` in pixel-edge
    coordinates of the input.  ``flip``, ``jitter``, ``gray``, ``blur``:
    (N,) bool masks.  ``factors``: (N, 4) float brightness, contrast,
    saturation, hue factors.  ``order``: (N, 4) long, a permutation of
    (0=brightness, 1=contrast, 2=saturation, 3=hue) per sample.  ``sigma``:
    (N,) float blur sigmas.
    """

    boxes: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor

    def to(self, device: torch.device | str) -> AugmentParams:
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})

    def select(self, index: torch.Tensor) -> AugmentParams:
        """The parameters of the samples at ``index`` (a long tensor), in that order.

        Lets several processes draw the parameters of a whole global batch from
        one seeded generator and each apply those of its own slice, so every
        image gets the augmentation it would get in a single process.
        """
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


# ----------------------------------------------------------------------------- input checks


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise AugmentError(f"{name} must be a torch tensor, got {type(images).__name__}")
    if images.ndim != 4:
        raise AugmentError(f"{name} must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        raise AugmentError(f"{name} must be uint8, got {images.dtype}")
    if images.shape[1] != 3:
        raise AugmentError(f"{name} must have 3 channels (RGB), got shape {tuple(images.shape)}")
    if images.shape[2] < 1 or images.shape[3] < 1:
        raise AugmentError(f"{name} has an empty spatial size: {tuple(images.shape)}")


def _check_float(x: torch.Tensor, factor: torch.Tensor | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise AugmentError(f"expected a float (N, 3, H, W) batch, got {shape}")
    if not x.is_floating_point():
        raise AugmentError(f"expected a floating-point batch in [0, 1], got {x.dtype}")
    if factor is not None and tuple(factor.shape) != (x.shape[0],):
        raise AugmentError(
            f"expected one factor per sample, shape ({x.shape[0]},), got {tuple(factor.shape)}"
        )


def _gen_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return torch.device(generator.device) if generator is not None else torch.device(fallback)


# ----------------------------------------------------------------------------- sampling


def _crop_boxes_from_uniforms(
    u_cand: torch.Tensor, u_pos: torch.Tensor, h: int, w: int, cfg: AugmentConfig
) -> torch.Tensor:
    """Boxes from U[0,1) draws: ``u_cand`` (N, A, 2) scale/log-ratio, ``u_pos`` (N, 2)."""
    area = float(h * w)
    s_lo, s_hi = cfg.crop_scale
    r_lo, r_hi = cfg.crop_ratio
    lr_lo, lr_hi = math.log(r_lo), math.log(r_hi)
    target = area * (s_lo + (s_hi - s_lo) * u_cand[..., 0])
    ratio = torch.exp(lr_lo + (lr_hi - lr_lo) * u_cand[..., 1])
    cw = torch.sqrt(target * ratio)
    ch = torch.sqrt(target / ratio)
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first True (0 if none)
    any_fit = fits.any(dim=1)
    cw = cw.gather(1, first).squeeze(1)
    ch = ch.gather(1, first).squeeze(1)
    # fallback (torchvision): centre crop of the whole image with the ratio clamped
    in_ratio = w / h
    if in_ratio < r_lo:
        fw, fh = float(w), w / r_lo
    elif in_ratio > r_hi:
        fw, fh = h * r_hi, float(h)
    else:
        fw, fh = float(w), float(h)
    cw = torch.where(any_fit, cw, torch.full_like(cw, fw)).clamp(max=float(w))
    ch = torch.where(any_fit, ch, torch.full_like(ch, fh)).clamp(max=float(h))
    pos = torch.where(any_fit.unsqueeze(1), u_pos, torch.full_like(u_pos, 0.5))
    x0 = pos[:, 0] * (w - cw)
    y0 = pos[:, 1] * (h - ch)
    x1 = torch.minimum(x0 + cw, torch.full_like(x0, float(w)))
    y1 = torch.minimum(y0 + ch, torch.full_like(y0, float(h)))
    return torch.stack((x0, y0, x1, y1), dim=1)


def sample_crop_boxes(
    n: int,
    h: int,
    w: int,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw ``n`` RandomResizedCrop boxes for an ``h`` x ``w`` image.

    Returns an (n, 4) float32 tensor ``(x0, y0, x1, y1)`` in pixel-edge
    coordinates with ``0 <= x0 < x1 <= w`` and ``0 <= y0 < y1 <= h``.  Sampled
    on the generator's device (else ``device``, else CPU).
    """
    cfg = cfg or AugmentConfig()
    dev = _gen_device(generator, torch.device(device) if device is not None else "cpu")
    u_cand = torch.rand((n, N_CROP_ATTEMPTS, 2), generator=generator, device=dev, dtype=torch.float64)
    u_pos = torch.rand((n, 2), generator=generator, device=dev, dtype=torch.float64)
    return _crop_boxes_from_uniforms(u_cand, u_pos, h, w, cfg).to(torch.float32)


def sample_params(
    n: int,
    h: int,
    w: int,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> AugmentParams:
    """Draw all per-sample parameters for a batch of ``n`` ``h`` x ``w`` images.

    The draws happen on the generator's device (else ``device``, else CPU) in a
    fixed order that does not depend on ``cfg``; the result is moved to
    ``device`` when given.
    """
    cfg = cfg or AugmentConfig()
    dev = _gen_device(generator, torch.device(device) if device is not None else "cpu")
    boxes = sample_crop_boxes(n, h, w, cfg, generator, dev)
    u = torch.rand((n, 10), generator=generator, device=dev)
    flip = u[:, 0] < cfg.flip_p
    jitter = u[:, 1] < cfg.jitter_p
    gray = u[:, 2] < cfg.gray_p
    blur = u[:, 3] < cfg.blur_p
    b, c, s, hue = cfg.jitter
    lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -hue], device=dev)
    hi = torch.tensor([1 + b, 1 + c, 1 + s, hue], device=dev)
    factors = lo + (hi - lo) * u[:, 4:8]
    s_lo, s_hi = cfg.blur_sigma
    sigma = s_lo + (s_hi - s_lo) * u[:, 8]
    order = torch.rand((n, 4), generator=generator, device=dev).argsort(dim=1)
    params = AugmentParams(boxes, flip, jitter, factors, order, gray, blur, sigma)
    return params.to(device) if device is not None else params


# ----------------------------------------------------------------------------- geometric ops


def resized_crop(
    x: torch.Tensor,
    boxes: torch.Tensor,
    size: tuple[int, int],
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crop ``boxes`` (N, 4) out of ``x`` (N, C, H, W) and resize each to ``size``.

    One ``roi_align`` call (bilinear, aligned=True, adaptive sampling ratio).
    ``flip`` (N,) bool mirrors the selected outputs horizontally.
    """
    _check_float(x)
    n = x.shape[0]
    if tuple(boxes.shape) != (n, 4):
        raise AugmentError(f"boxes must have shape ({n}, 4), got {tuple(boxes.shape)}")
    boxes = boxes.to(device=x.device, dtype=x.dtype)
    idx = torch.arange(n, device=x.device, dtype=x.dtype).unsqueeze(1)
    out = roi_align(
        x,
        torch.cat((idx, boxes), dim=1),
        output_size=size,
        spatial_scale=1.0,
        sampling_ratio=0,
        aligned=True,
    )
    if flip is not None:
        # per-sample mirror as one gather (cheaper than flip + where on CPU)
        ow = out.shape[-1]
        cols = torch.arange(ow, device=out.device)
        cols = torch.where(flip.to(out.device).view(n, 1), ow - 1 - cols, cols)
        out = out.gather(-1, cols.view(n, 1, 1, ow).expand_as(out))
    return out


def _blur_kernel_size(h: int, w: int, cfg: AugmentConfig) -> int:
    if cfg.blur_kernel is not None:
        k = cfg.blur_kernel
    else:
        k = int(0.1 * min(h, w))
        k = max(3, k + 1 - k % 2)
    return min(k, 2 * min(h, w) - 1)  # reflect padding needs k // 2 < side


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Blur each image of ``x`` (N, C, H, W) with its own ``sigma`` (N,).

    Separable Gaussian, odd ``kernel_size``, reflect padding (as torchvision),
    as two depthwise convolutions over the whole batch.
    """
    _check_float(x, sigma)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise AugmentError(f"kernel_size must be a positive odd int, got {kernel_size}")
    n, c, h, w = x.shape
    if n == 0 or kernel_size == 1:
        return x
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    sig = sigma.to(device=x.device, dtype=x.dtype).clamp(min=1e-6).unsqueeze(1)
    k = torch.exp(-0.5 * (t / sig) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (N*C, K)
    y = F.pad(x.reshape(1, n * c, h, w), (half, half, half, half), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, kernel_size, 1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, 1, kernel_size), groups=n * c)
    return y.view(n, c, h, w)


# ----------------------------------------------------------------------------- colour ops


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) ITU-R 601 luma of an RGB batch."""
    r, g, b = x.unbind(dim=1)
    return (LUMA_WEIGHTS[0] * r + LUMA_WEIGHTS[1] * g + LUMA_WEIGHTS[2] * b).unsqueeze(1)


def _per_sample(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma (0.299 R + 0.587 G + 0.114 B) replicated to 3 channels."""
    _check_float(x)
    return _luma(x).expand_as(x).contiguous()


def random_grayscale(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the samples selected by ``mask`` (N,) bool with their greyscale."""
    _check_float(x, mask)
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), _luma(x), x)


def _blend(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1.0 - f) * ref).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * f)`` with one factor per sample (torchvision semantics)."""
    _check_float(x, factor)
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with the mean of its greyscale, one factor per sample."""
    _check_float(x, factor)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, _per_sample(factor, x))


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend each image with its greyscale, one factor per sample."""
    _check_float(x, factor)
    return _blend(x, _luma(x), _per_sample(factor, x))


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each image by its ``factor`` (N,) in [-0.5, 0.5] turns.

    Hue rotation keeps V = max and S = (max - min) / max, so RGB->HSV->RGB
    reduces to ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)`` per channel
    with ``k = (n + 6 h') mod 6``, n = 5, 3, 1 for R, G, B.  Grey pixels
    (max == min) are left unchanged, as in torchvision.
    """
    _check_float(x, factor)
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    delta = maxc - x.amin(dim=1)
    # hue in sixths of a turn, times delta: (g - b), (b - r) + 2 delta or (r - g) + 4 delta
    # when the max is r, g or b (ties: first wins, which gives the same hue anyway)
    num = torch.where(
        r == maxc,
        g - b,
        torch.where(g == maxc, (b - r).add_(delta, alpha=2.0), (r - g).add_(delta, alpha=4.0)),
    )
    h6 = num.div_(torch.where(delta > 0, delta, torch.ones_like(delta)))
    h6 = h6.add_(6.0 * factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1)).remainder_(6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = h6.unsqueeze(1) + n  # in [1, 11): one wrap brings it to [0, 6)
    k = k.sub_((k >= 6.0).to(k.dtype), alpha=6.0)
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return k.mul_(delta.unsqueeze(1)).neg_().add_(maxc.unsqueeze(1)).clamp_(0.0, 1.0)


def color_jitter(
    x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """ColorJitter with per-sample factors, per-sample op order and apply mask.

    ``factors`` (N, 4): brightness, contrast, saturation, hue factors;
    ``order`` (N, 4): a permutation of 0..3 (same op numbering) per sample;
    ``mask`` (N,) bool: which samples are jittered.  Samples outside the mask
    are returned unchanged (bit-exact).
    """
    _check_float(x, mask)
    n = x.shape[0]
    if tuple(factors.shape) != (n, 4) or tuple(order.shape) != (n, 4):
        raise AugmentError(f"factors and order must have shape ({n}, 4)")
    dev = x.device
    factors = factors.to(device=dev, dtype=x.dtype)
    order = order.to(dev)
    mask = mask.to(dev)
    hue_pos = (order == _HUE).to(torch.int64).argmax(dim=1)  # (N,)
    # the three blend ops in their per-sample order, hue removed: (N, 3)
    rest = order.gather(1, torch.argsort((order == _HUE).to(torch.int64), dim=1, stable=True))[:, :3]
    rest_f = factors.gather(1, rest)
    slot = torch.arange(3, device=dev).unsqueeze(0)
    before = slot < hue_pos.unsqueeze(1)  # blend slot t runs before hue iff t < hue_pos
    sat = rest == _SATURATION
    con = rest == _CONTRAST
    for phase in (before, ~before):
        for t in range(3):
            # one blend step: x <- clamp(f x + (1 - f) ref), ref = 0 / mean grey / grey;
            # inactive samples get f = 1 and ref = 0, which leaves them bit-exact
            active = mask & phase[:, t]
            f = torch.where(active, rest_f[:, t], torch.ones_like(rest_f[:, t])).view(n, 1, 1, 1)
            w_sat = (1.0 - f) * sat[:, t].view(n, 1, 1, 1)
            w_con = (1.0 - f) * con[:, t].view(n, 1, 1, 1)
            gray = _luma(x)
            ref = gray * w_sat + gray.mean(dim=(2, 3), keepdim=True) * w_con
            x = torch.addcmul(ref, x, f).clamp_(0.0, 1.0)
        if phase is before:
            x = torch.where(mask.view(n, 1, 1, 1), adjust_hue(x, factors[:, _HUE]), x)
    return x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel."""
    st = _stats(mean, std)
    assert st is not None
    m = torch.tensor(st[0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(st[1], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


# ----------------------------------------------------------------------------- pipeline


def apply_params(images: torch.Tensor, params: AugmentParams, cfg: AugmentConfig) -> torch.Tensor:
    """Apply already drawn ``params`` to a uint8 batch; deterministic."""
    _check_images(images)
    n, _, h, w = images.shape
    size = cfg.size or (h, w)
    p = params.to(images.device)
    x = images.to(torch.float32).div_(255.0)
    x = resized_crop(x, p.boxes, size, p.flip)
    if n == 0:
        x = x.reshape(0, 3, *size)
    else:
        if cfg.jitter_p > 0 and any(v > 0 for v in cfg.jitter):
            x = color_jitter(x, p.factors, p.order, p.jitter)
        if cfg.gray_p > 0:
            x = random_grayscale(x, p.gray)
        if cfg.blur_p > 0:
            blurred = gaussian_blur(x, p.sigma, _blur_kernel_size(size[0], size[1], cfg))
            x = torch.where(p.blur.view(n, 1, 1, 1), blurred, x)
    if cfg.mean is not None:
        x = normalize(x, cfg.mean, cfg.std)  # type: ignore[arg-type]
    return x


def augment_batch(
    images: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One SimCLR view of a uint8 (N, 3, H, W) batch -> float32 (N, 3, h, w).

    Values are in [0, 1] unless ``cfg.mean``/``cfg.std`` normalise them.
    Per-sample random parameters come from ``generator`` when given.
    """
    cfg = cfg or AugmentConfig()
    _check_images(images)
    n, _, h, w = images.shape
    params = sample_params(n, h, w, cfg, generator, device=_gen_device(generator, images.device))
    return apply_params(images, params, cfg)


def two_views(
    images: torch.Tensor,
    cfg: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of the same batch (one batched call)."""
    _check_images(images)
    n = images.shape[0]
    both = augment_batch(torch.cat((images, images), dim=0), cfg, generator)
    return both[:n], both[n:]


def eval_transform(
    images: torch.Tensor,
    size: int | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1], resized (bilinear, antialiased)
    to ``size`` when given, then normalised when ``mean``/``std`` are given."""
    _check_images(images)
    hw = _size_pair(size)
    st = _stats(mean, std)
    x = images.to(torch.float32).div_(255.0)
    if hw is not None and hw != tuple(x.shape[-2:]) and x.shape[0] > 0:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    elif hw is not None and x.shape[0] == 0:
        x = x.new_zeros((0, 3, *hw))
    if st is not None:
        x = normalize(x, *st)
    return x
