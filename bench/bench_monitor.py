"""Seconds per HeadMonitor call against one epoch of the training it monitors.

The training is the main job's CPU scale (``analyses/main_job.py``): SimCLR on
Fashion-MNIST (28 px, 6,000 training images, batch 256), ResNet-18 at width
1/8 (m = 64), MLP head 64 -> 32 -> 32, trained by ``train.trainer.Trainer``;
one training epoch (``Trainer._train_epoch``) is timed. The monitor
(``repdiag.HeadMonitor``) watches that model on a ``--bank``-image bank
(training images, 10,000 by default, drawn with replacement when the split is
smaller) and ``--queries`` test images; ``--repeats`` calls of ``step`` are
timed and their median reported, with the ratio monitor call / epoch.

    .venv/bin/python bench/bench_monitor.py                  # --bank 10000 --queries 2000
    .venv/bin/python bench/bench_monitor.py --data synthetic # without Fashion-MNIST
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--bank", type=int, default=10000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()

    from repdiag.augment import eval_transform
    from repdiag.monitor import HeadMonitor
    from train.config import load_config
    from train.trainer import Trainer

    overrides = [f"data={args.data}", "backbone=resnet18", "width=0.125", "batch_size=256",
                 "knn_every=0", "data_limit=6000", "epochs=1", "optim.lr=0.003",
                 "temperature=0.2", "val_fraction=0", "save_every=0", "head.kind=mlp",
                 "head.hidden_dim=32", "head.out_dim=32"]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(load_config("fmnist-tiny", overrides), os.path.join(tmp, "run"),
                          quiet=True)
        t0 = time.perf_counter()
        trainer._train_epoch(1)
        epoch_s = time.perf_counter() - t0
        data, (mean, std) = trainer.data, trainer.input_norm
        gen = torch.Generator().manual_seed(0)
        b = torch.randint(len(data.train), (args.bank,), generator=gen)
        q = torch.randint(len(data.test), (args.queries,), generator=gen)
        bank = (eval_transform(data.train.images[b], mean=mean, std=std), data.train.labels[b])
        queries = (eval_transform(data.test.images[q], mean=mean, std=std), data.test.labels[q])
        mon = HeadMonitor(trainer.backbone, trainer.head, bank, queries, max_bank=None,
                          max_queries=None)
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            line = mon.step(i)
            times.append(time.perf_counter() - t0)
    call_s = statistics.median(times)
    out = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or
           platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "data": args.data, "train_images": len(data.train),
           "steps_per_epoch": trainer.steps_per_epoch, "epoch_s": epoch_s,
           "bank": args.bank, "queries": args.queries, "monitor_call_s": times,
           "monitor_median_s": call_s, "ratio_call_per_epoch": call_s / epoch_s,
           "last_line": line}
    print(f"one training epoch ({len(data.train)} images, {trainer.steps_per_epoch} steps): "
          f"{epoch_s:.2f} s")
    print(f"HeadMonitor.step, bank {args.bank}, queries {args.queries}: median {call_s:.2f} s "
          f"of {', '.join(f'{t:.2f}' for t in times)}; ratio {call_s / epoch_s:.2f} of an epoch")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
