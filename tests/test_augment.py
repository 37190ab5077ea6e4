"""Tests for repdiag.augment: the batched, per-sample SimCLR augmentation."""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.overrides import TorchFunctionMode

from repdiag import augment as A
from repdiag.augment import (
    AugmentConfig,
    AugmentParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_params,
    augment_batch,
    color_jitter,
    eval_transform,
    gaussian_blur,
    sample_crop_boxes,
    sample_params,
    two_views,
)
from repdiag.errors import UserError

# every random op off, crop forced to the full (square) image
PLAIN = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "flip_p": 0.0,
    "jitter_p": 0.0,
    "gray_p": 0.0,
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=gen(seed))


def float_images(n: int = 8, h: int = 17, w: int = 23, seed: int = 0) -> torch.Tensor:
    """uint8-quantised floats plus grey and tied pixels (edge cases of the HSV maths)."""
    x = images(n, h, w, seed).float() / 255
    x[0] = x[0, :1]  # a fully grey image
    x[1, 1] = x[1, 0]  # r == g everywhere
    x[2, :, :4] = 1.0  # saturated white
    x[2, :, 4:8] = 0.0  # black
    return x


# ----------------------------------------------------------------------------- crop boxes


@pytest.mark.parametrize("h,w", [(32, 32), (24, 40), (40, 24)])
def test_crop_boxes_inside_image_with_valid_scale_and_ratio(h, w):
    cfg = AugmentConfig()
    boxes = sample_crop_boxes(5000, h, w, cfg, gen(1)).double()
    x0, y0, x1, y1 = boxes.unbind(1)
    assert boxes.shape == (5000, 4)
    assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w).all() and (y1 <= h).all())
    assert bool((x1 > x0).all() and (y1 > y0).all())
    bw, bh = x1 - x0, y1 - y0
    area = bw * bh / (h * w)
    ratio = bw / bh
    # torchvision's fallback (centre crop, clamped ratio) only fires for (nearly) never here
    assert bool((area >= 0.2 - 1e-5).all() and (area <= 1 + 1e-5).all())
    assert bool((ratio >= 3 / 4 - 1e-5).all() and (ratio <= 4 / 3 + 1e-5).all())
    # parameters are per sample: essentially all boxes distinct, spread over the range
    assert torch.unique(boxes, dim=0).shape[0] > 4990
    # the largest crop with ratio <= 4/3 covers min(1, (4/3) h / w) of a wide image
    assert area.min() < 0.25 and area.max() > 0.95 * min(1.0, 4 / 3 * h / w, 4 / 3 * w / h)
    assert math.log(ratio.min()) < math.log(3 / 4) + 0.05
    assert math.log(ratio.max()) > math.log(4 / 3) - 0.05


def test_crop_takes_first_fitting_candidate():
    cfg = AugmentConfig()
    u = torch.zeros(2, A.N_CROP_ATTEMPTS, 2, dtype=torch.float64)
    u[:, 0] = torch.tensor([1.0, 1.0])  # area 1, log-ratio max -> 4/3: too wide for a square
    u[:, 1] = torch.tensor([0.0, 0.5])  # area 0.2, ratio 1: fits
    u[:, 2] = torch.tensor([1.0, 0.5])  # fits too, but comes later
    pos = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    boxes = A._crop_boxes_from_uniforms(u, pos, 10, 10, cfg)
    side = math.sqrt(0.2 * 100)
    expect = torch.tensor([[0, 0, side, side], [10 - side, 10 - side, 10, 10]], dtype=torch.float64)
    torch.testing.assert_close(boxes, expect)


@pytest.mark.parametrize("h,w", [(30, 30), (10, 80), (10, 55)])
def test_crop_fallback_is_centre_crop_with_clamped_ratio(h, w):
    # full-area crops with ratio in [5, 6] (almost surely) never fit -> always the fallback
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(5.0, 6.0))
    boxes = sample_crop_boxes(50, h, w, cfg, gen(2))
    in_ratio = w / h
    if in_ratio < 5:
        bw, bh = w, w / 5
    elif in_ratio > 6:
        bw, bh = h * 6, h
    else:
        bw, bh = w, h
    expect = torch.tensor([(w - bw) / 2, (h - bh) / 2, (w + bw) / 2, (h + bh) / 2])
    torch.testing.assert_close(boxes, expect.expand(50, 4))


# ----------------------------------------------------------------------------- pipeline basics


@pytest.mark.parametrize("size,expect_hw", [(None, (32, 32)), (24, (24, 24)), ((20, 28), (20, 28))])
def test_output_dtype_range_and_shape(size, expect_hw):
    out = augment_batch(images(16), AugmentConfig(size=size, blur_p=0.5), gen())
    assert out.dtype == torch.float32
    assert out.shape == (16, 3, *expect_hw)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert bool(torch.isfinite(out).all())


def test_normalisation_matches_manual():
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    x = images(8)
    plain = augment_batch(x, AugmentConfig(), gen(5))
    normed = augment_batch(x, AugmentConfig(mean=mean, std=std), gen(5))
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, (plain - m) / s)


def test_identical_images_get_different_augmentations():
    x = images(1).expand(32, -1, -1, -1).contiguous()
    out = augment_batch(x, AugmentConfig(), gen(3)).flatten(1)
    dist = torch.cdist(out, out)
    off_diag = dist[~torch.eye(32, dtype=torch.bool)]
    assert float(off_diag.min()) > 1e-3


def test_full_crop_without_other_ops_is_identity():
    x = images(6, 32, 32)
    out = augment_batch(x, AugmentConfig(**PLAIN), gen())
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


def test_explicit_full_box_identity_on_non_square_images():
    x = images(4, 20, 36)
    params = sample_params(4, 20, 36, AugmentConfig(), gen())
    params.boxes = torch.tensor([[0.0, 0.0, 36.0, 20.0]]).expand(4, 4)
    cfg = AugmentConfig(flip_p=0.0, jitter_p=0.0, gray_p=0.0)
    params.flip = torch.zeros(4, dtype=torch.bool)
    out = apply_params(x, params, cfg)
    torch.testing.assert_close(out, x.float() / 255, atol=1e-5, rtol=0)


def test_downscaled_full_crop_is_area_average():
    # adaptive roi_align sampling averages 2x2 taps: an anti-aliased 2x downscale
    x = images(4, 32, 32)
    out = augment_batch(x, AugmentConfig(**PLAIN, size=16), gen())
    torch.testing.assert_close(out, F.avg_pool2d(x.float() / 255, 2), atol=1e-5, rtol=0)


def test_crop_matches_reference_resampling():
    # a sub-box resampled by roi_align equals bilinear grid_sample at the same points
    x = images(5, 24, 24).float() / 255
    boxes = sample_crop_boxes(5, 24, 24, AugmentConfig(), gen(7))
    out = A.resized_crop(x, boxes, (24, 24))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    theta = torch.zeros(5, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = bw / 24, (boxes[:, 0] + boxes[:, 2]) / 24 - 1
    theta[:, 1, 1], theta[:, 1, 2] = bh / 24, (boxes[:, 1] + boxes[:, 3]) / 24 - 1
    grid = F.affine_grid(theta, (5, 3, 24, 24), align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_flip_all():
    x = images(6)
    out = augment_batch(x, AugmentConfig(**{**PLAIN, "flip_p": 1.0}), gen())
    torch.testing.assert_close(out, torch.flip(x.float() / 255, dims=[-1]), atol=1e-5, rtol=0)


def test_flip_is_per_sample():
    x = images(64)
    params = sample_params(64, 32, 32, AugmentConfig(**PLAIN), gen(4))
    params.flip = torch.arange(64) % 3 == 0
    out = apply_params(x, params, AugmentConfig(**PLAIN))
    base = x.float() / 255
    expect = torch.where(params.flip.view(-1, 1, 1, 1), base.flip(-1), base)
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


def test_grayscale_all():
    x = images(6)
    out = augment_batch(x, AugmentConfig(**{**PLAIN, "gray_p": 1.0}), gen())
    f = x.float() / 255
    luma = 0.299 * f[:, 0] + 0.587 * f[:, 1] + 0.114 * f[:, 2]
    for c in range(3):
        torch.testing.assert_close(out[:, c], luma, atol=1e-5, rtol=0)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_sampled_probabilities_and_ranges():
    cfg = AugmentConfig(gray_p=0.1, blur_p=0.5)
    p = sample_params(20000, 32, 32, cfg, gen(9))
    assert abs(p.flip.float().mean().item() - 0.5) < 0.02
    assert abs(p.jitter.float().mean().item() - 0.8) < 0.02
    assert abs(p.gray.float().mean().item() - 0.1) < 0.015
    assert abs(p.blur.float().mean().item() - 0.5) < 0.02
    lo = torch.tensor([0.6, 0.6, 0.6, -0.1])
    hi = torch.tensor([1.4, 1.4, 1.4, 0.1])
    assert bool(((p.factors >= lo - 1e-6) & (p.factors <= hi + 1e-6)).all())
    assert bool((p.sigma >= 0.1).all() and (p.sigma <= 2.0).all())
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(20000, 4))
    # every one of the 24 orders occurs, roughly uniformly
    codes = (p.order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(codes, return_counts=True)[1]
    assert counts.numel() == 24 and counts.min() > 20000 / 24 * 0.8


# ----------------------------------------------------------------------------- colour ops


@pytest.mark.parametrize(
    "ours,theirs,lo,hi,atol",
    [
        (adjust_brightness, TF.adjust_brightness, 0.0, 2.0, 1e-6),
        (adjust_contrast, TF.adjust_contrast, 0.0, 2.0, 1e-4),
        (adjust_saturation, TF.adjust_saturation, 0.0, 2.0, 1e-4),
        (adjust_hue, TF.adjust_hue, -0.5, 0.5, 1e-3),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, lo, hi, atol):
    x = float_images(12)
    f = torch.empty(12).uniform_(lo, hi, generator=gen(11))
    f[3] = 1.0 if lo >= 0 else 0.0  # identity factor
    out = ours(x, f)
    ref = torch.stack([theirs(x[i], float(f[i])) for i in range(12)])
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)


def test_color_jitter_follows_per_sample_order_and_mask():
    n = 48
    x = float_images(n)
    p = sample_params(n, 17, 23, AugmentConfig(jitter=(0.8, 0.8, 0.8, 0.4)), gen(12))
    p.jitter[:4] = False
    out = color_jitter(x, p.factors, p.order, p.jitter)
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for i in range(n):  # reference: one image at a time, ops in its own order
        y = x[i : i + 1]
        if p.jitter[i]:
            for op in p.order[i].tolist():
                y = ops[op](y, p.factors[i : i + 1, op])
        torch.testing.assert_close(out[i : i + 1], y, atol=1e-5, rtol=0)
    assert torch.equal(out[:4], x[:4])  # unjittered samples are untouched, bit for bit


def test_gaussian_blur_matches_torchvision():
    x = float_images(6, 16, 16)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.8])
    out = gaussian_blur(x, sigma, 5)
    ref = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(s), float(s)]) for i, s in enumerate(sigma)])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_blur_only_hits_selected_samples():
    x = images(8)
    cfg = AugmentConfig(**{**PLAIN, "blur_p": 1.0})
    params = sample_params(8, 32, 32, cfg, gen())
    params.blur = torch.arange(8) < 4
    out = apply_params(x, params, cfg)
    base = x.float() / 255
    torch.testing.assert_close(out[4:], base[4:], atol=1e-5, rtol=0)
    assert float((out[:4] - base[:4]).abs().amax(dim=(1, 2, 3)).min()) > 1e-2


# ----------------------------------------------------------------------------- randomness


def test_reproducible_with_same_seed():
    x = images(16)
    a = augment_batch(x, AugmentConfig(blur_p=0.5), gen(42))
    b = augment_batch(x, AugmentConfig(blur_p=0.5), gen(42))
    c = augment_batch(x, AugmentConfig(blur_p=0.5), gen(43))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_two_views_independent_and_reproducible():
    x = images(16)
    v1, v2 = two_views(x, AugmentConfig(), gen(8))
    w1, w2 = two_views(x, AugmentConfig(), gen(8))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert v1.shape == v2.shape == (16, 3, 32, 32)
    per_sample = (v1 - v2).flatten(1).abs().amax(1)
    assert float(per_sample.min()) > 1e-3


def test_without_generator_runs():
    out = augment_batch(images(4))
    assert out.shape == (4, 3, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_with_cuda_images_matches_cpu():
    x = images(16)
    cpu = augment_batch(x, AugmentConfig(blur_p=0.5), gen(6))
    cuda = augment_batch(x.cuda(), AugmentConfig(blur_p=0.5), gen(6))
    assert cuda.is_cuda
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-4, rtol=0)
    g = torch.Generator(device="cuda").manual_seed(6)
    a = augment_batch(x.cuda(), AugmentConfig(), g)
    g.manual_seed(6)
    assert torch.equal(a, augment_batch(x.cuda(), AugmentConfig(), g))


# ----------------------------------------------------------------------------- eval transform


def test_eval_transform():
    x = images(4, 32, 32)
    torch.testing.assert_close(eval_transform(x), x.float() / 255, atol=0, rtol=0)
    small = eval_transform(x, size=16)
    ref = F.interpolate(x.float() / 255, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(small, ref)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normed = eval_transform(x, size=(16, 24), mean=mean, std=std)
    plain = eval_transform(x, size=(16, 24))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(normed, (plain - m) / s)


# ----------------------------------------------------------------------------- errors, edge cases


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 1, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 4, 8, 8, dtype=torch.uint8),
        torch.zeros(3, 8, 8, dtype=torch.uint8),
        torch.zeros(2, 3, 8, 8),
    ],
)
def test_bad_images_raise(bad):
    for fn in (augment_batch, two_views, eval_transform):
        with pytest.raises(ValueError):
            fn(bad)
    with pytest.raises(UserError):
        augment_batch(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.8, 0.2)},
        {"crop_ratio": (-1.0, 1.0)},
        {"flip_p": 1.5},
        {"jitter": (0.4, 0.4, 0.4)},
        {"jitter": (0.4, 0.4, 0.4, 0.7)},
        {"blur_kernel": 4},
        {"size": 0},
        {"mean": (0.5, 0.5, 0.5)},
        {"mean": (0.5, 0.5), "std": (0.2, 0.2)},
        {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.0, 0.2)},
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ValueError):
        AugmentConfig(**kwargs)


def test_empty_batch():
    x = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    assert augment_batch(x, AugmentConfig(size=16), gen()).shape == (0, 3, 16, 16)
    v1, v2 = two_views(x)
    assert v1.shape == v2.shape == (0, 3, 32, 32)
    assert eval_transform(x, size=8).shape == (0, 3, 8, 8)


def test_params_type():
    p = sample_params(3, 8, 8)
    assert isinstance(p, AugmentParams)
    assert p.boxes.shape == (3, 4) and p.factors.shape == (3, 4) and p.order.shape == (3, 4)


# ----------------------------------------------------------------------------- no per-sample loop


class _CountTorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_number_of_torch_calls_does_not_grow_with_batch_size():
    """A Python loop over samples would make the call count grow with N."""
    cfg = AugmentConfig(blur_p=0.5, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    counts = []
    for n in (2, 5, 300):
        with _CountTorchCalls() as counter:
            two_views(images(n, 16, 16), cfg, gen())
        counts.append(counter.calls)
    assert counts[0] == counts[1] == counts[2] > 0


def test_large_batch_is_fast():
    """1024 CIFAR-sized images: ~0.2 s on 2 idle CPU cores; the bound allows for busy machines."""
    x = images(1024, 32, 32)
    cfg = AugmentConfig(blur_p=0.5)
    augment_batch(x[:8], cfg, gen())  # warm-up
    best = math.inf
    for _ in range(2):
        t = time.perf_counter()
        out = augment_batch(x, cfg, gen())
        best = min(best, time.perf_counter() - t)
    assert out.shape == (1024, 3, 32, 32)
    assert best < 5.0, f"augmenting 1024 images took {best:.2f}s"
