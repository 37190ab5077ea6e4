"""Time one bilevel step (paper G eq. 8, l inner steps) against one joint step on CPU.

Same model, same batch, alternating repetitions, median wall time of each; prints
the ratio bilevel/joint (target: <= 1.3 at l=5).

    .venv/bin/python bench/bench_schemes.py [--reps 7] [--batch 128] [--inner-steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from repdiag.models import BackboneSpec, HeadSpec, build_backbone, build_head
from train.config import TrainConfig
from train.schemes import build_scheme


def make(kind: str, inner_steps: int, width: float):
    cfg = TrainConfig()
    cfg.scheme.kind = kind
    cfg.scheme.inner_steps = inner_steps
    torch.manual_seed(0)
    backbone = build_backbone(BackboneSpec("resnet18", width, True))
    head = build_head(HeadSpec(kind="mlp", in_dim=backbone.feature_dim, hidden_dim=512,
                               out_dim=128))
    return build_scheme(cfg, backbone, head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--inner-steps", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    v1 = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    v2 = torch.rand(args.batch, 3, args.size, args.size, generator=g)
    schemes = {"joint": make("joint", 0, args.width),
               "bilevel": make("bilevel", args.inner_steps, args.width)}
    times: dict[str, list[float]] = {k: [] for k in schemes}
    for s in schemes.values():  # warm-up
        s.train_step(v1, v2)
    for _ in range(args.reps):
        for name, s in schemes.items():
            t0 = time.perf_counter()
            s.train_step(v1, v2)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"resnet18 width {args.width} at {args.size}px, batch {args.batch}, "
          f"MLP head {schemes['joint'].backbone.feature_dim}->512->128, "
          f"{torch.get_num_threads()} threads, {args.reps} reps")
    print(f"joint step:   median {1000 * med['joint']:.1f} ms")
    print(f"bilevel step: median {1000 * med['bilevel']:.1f} ms (l={args.inner_steps})")
    print(f"ratio bilevel/joint: {med['bilevel'] / med['joint']:.3f}")


if __name__ == "__main__":
    main()
