"""Seeded, stratified splitting: validation carving, split scheme "s", ``limit``.

All partitions go through :func:`stratified_partition`, which shuffles with a
seeded ``torch.Generator`` and then orders samples by their relative rank
within their class, so every part gets (up to rounding) the same class
proportions as the whole. The same seed always gives the same split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from repdiag.data.base import ImageSplit

SPLIT_SCHEMES = ("standard", "s")
S_FRACTIONS = (0.7, 0.1, 0.2)

# distinct random streams for the different uses of one user seed
_SALT_VAL, _SALT_S, _SALT_LIMIT, _SALT_TEST = 11, 23, 37, 53


def generator(seed: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for ``seed``, with ``salt`` selecting an independent stream."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2**63))


def stratified_partition(
    labels: torch.Tensor, sizes: Sequence[int], gen: torch.Generator
) -> list[torch.Tensor]:
    """Randomly partition ``range(len(labels))`` into parts of the given sizes.

    ``sum(sizes)`` may be less than ``len(labels)`` (the rest is dropped). Each
    part is class-stratified and returned as sorted int64 indices.
    """
    n = int(labels.shape[0])
    if sum(sizes) > n or min(sizes, default=0) < 0:
        raise ValueError(f"cannot cut {n} samples into parts of sizes {list(sizes)}")
    if n == 0:
        return [torch.empty(0, dtype=torch.int64) for _ in sizes]
    perm = torch.randperm(n, generator=gen)
    lab = labels[perm]
    # rank of each (shuffled) sample within its class
    by_class = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[by_class] = torch.arange(n) - starts[lab[by_class]]
    quantile = (rank.double() + 0.5) / counts[lab].double()
    chosen = perm[torch.argsort(quantile, stable=True)]
    parts, start = [], 0
    for size in sizes:
        parts.append(torch.sort(chosen[start : start + size]).values)
        start += size
    return parts


def carve_val(train: ImageSplit, val_fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split ``train`` into (train, val) with ``round(val_fraction * N)`` in val."""
    n = len(train)
    n_val = round(val_fraction * n)
    if n > 1:
        n_val = min(n_val, n - 1)  # never leave train empty
    else:
        n_val = 0
    val_idx, train_idx = stratified_partition(
        train.labels, [n_val, n - n_val], generator(seed, _SALT_VAL)
    )
    return train.subset(train_idx), train.subset(val_idx)


def carve_test(pool: ImageSplit, test_fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """Split ``pool`` into (train, test) for datasets without an official test split."""
    n = len(pool)
    n_test = min(round(test_fraction * n), max(n - 1, 0))
    test_idx, train_idx = stratified_partition(
        pool.labels, [n_test, n - n_test], generator(seed, _SALT_TEST)
    )
    return pool.subset(train_idx), pool.subset(test_idx)


def scheme_s(
    train: ImageSplit, test: ImageSplit, seed: int
) -> tuple[ImageSplit, ImageSplit, ImageSplit]:
    """Split scheme "s": pool the official train and test splits and cut the pool
    70/10/20 into (train, val, test), stratified, with ``seed``."""
    pool = ImageSplit.concat([train, test])
    n = len(pool)
    n_train = round(S_FRACTIONS[0] * n)
    n_val = round(S_FRACTIONS[1] * n)
    parts = stratified_partition(
        pool.labels, [n_train, n_val, n - n_train - n_val], generator(seed, _SALT_S)
    )
    return tuple(pool.subset(p) for p in parts)  # type: ignore[return-value]


def apply_limit(split: ImageSplit, limit: int | None, seed: int, salt: int = 0) -> ImageSplit:
    """At most ``limit`` samples of ``split``: a seeded, stratified random subset."""
    if limit is None or len(split) <= limit:
        return split
    (idx,) = stratified_partition(split.labels, [limit], generator(seed, _SALT_LIMIT + salt))
    return split.subset(idx)
