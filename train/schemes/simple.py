"""Joint (standard backprop) and fixed (never-updated) heads."""

from __future__ import annotations

from train.schemes.base import Scheme, freeze


class JointScheme(Scheme):
    """Standard SimCLR/SimSiam: one backward pass through head and backbone together."""


class FixedScheme(Scheme):
    """The head is never updated (paper G Table 2, "fixed projection head").

    Its parameters get ``requires_grad=False`` and are left out of the
    optimizer; its BatchNorm layers (if any) still normalise with batch
    statistics in training mode but their running statistics are restored after
    every forward, so the head's whole state dict is bitwise unchanged. With
    ``head.init=glorot`` this is G's fixed random head, with
    ``head.kind=directclr`` DirectCLR (z = h[:, :d0]), and with
    ``head.pretrained=PATH`` the head of another run, frozen.
    """

    head_in_main_optimizer = False
    freeze_head_stats = True

    def __init__(self, cfg, backbone, head):
        freeze(head)
        super().__init__(cfg, backbone, head)
