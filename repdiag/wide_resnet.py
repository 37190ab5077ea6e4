"""The WideResNet of solo-learn (``wide_resnet28w2`` / ``wide_resnet28w8``), key for key.

solo-learn's WideResNet (``solo/backbones/wide_resnet``, from FixMatch) is not in
torchvision or timm, so it is rebuilt here with the same module names, so its
state dicts load unchanged, and the same forward: pre-activation basic blocks
with LeakyReLU(0.1) and BatchNorm(eps=1e-3); the first block of stage 1
activates its input before the residual split; the first blocks of stages 2 and
3 feed the *unactivated* input to both branches (their ``bn1`` is computed and
unused, as in the original); h is the global average of the final
``relu(bn1(.))``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class WideResnetBasicBlock(nn.Module):
    """One pre-activation basic block (names as solo-learn's)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int,
                 activate_before_residual: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.001, eps=0.001)
        self.relu1 = nn.LeakyReLU(negative_slope=0.1)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=0.001, eps=0.001)
        self.relu2 = nn.LeakyReLU(negative_slope=0.1)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=True)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=True)
        self.activate_before_residual = activate_before_residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.equal_in_out and self.activate_before_residual:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x)) if self.equal_in_out else x
        out = self.relu2(self.bn2(self.conv1(out)))
        out = self.conv2(out)
        return (x if self.equal_in_out else self.convShortcut(x)) + out


class WideResnetNetworkBlock(nn.Module):
    """A stage of ``n`` blocks (``.layer``, an nn.Sequential, as in solo-learn)."""

    def __init__(self, n: int, in_planes: int, out_planes: int, stride: int,
                 activate_before_residual: bool = False):
        super().__init__()
        self.layer = nn.Sequential(*(
            WideResnetBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                 stride if i == 0 else 1, activate_before_residual)
            for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen_factor feature extractor images -> h (N, 64 * widen_factor)."""

    def __init__(self, depth: int = 28, widen_factor: int = 2, first_stride: int = 1):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.feature_dim = self.num_features = channels[3]
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=True)
        self.block1 = WideResnetNetworkBlock(n, channels[0], channels[1], first_stride,
                                             activate_before_residual=True)
        self.block2 = WideResnetNetworkBlock(n, channels[1], channels[2], 2)
        self.block3 = WideResnetNetworkBlock(n, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3], momentum=0.001, eps=0.001)
        self.relu = nn.LeakyReLU(negative_slope=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).flatten(1)
