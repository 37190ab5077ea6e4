"""``repdiag train``: the trainer's command-line entry (also ``python -m train``)."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from repdiag.errors import UserError
from repdiag.outputs import dumps
from train.config import (
    apply_overrides,
    check_resume_overrides,
    list_presets,
    load_config,
    validate,
)


def add_commands(subparsers) -> None:
    """The trainer's sub-commands of ``repdiag``, in listing order: ``train``, ``train-ae``,
    ``sweep``.  Declared as the ``repdiag.commands`` entry point ``train`` in pyproject.toml
    (see :func:`repdiag.cli.command_providers`)."""
    add_train_parser(subparsers)
    add_train_ae_parser(subparsers)
    add_sweep_parser(subparsers)


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` sub-command on a repdiag CLI sub-parser set."""
    p = subparsers.add_parser(
        "train", help="train SimCLR with a projection head and write checkpoints",
        description="Train a self-supervised model and write a run folder "
                    "(config.yaml, metrics.jsonl, checkpoints/, last.pt).")
    add_train_arguments(p)
    p.set_defaults(func=run_train)
    return p


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="NAME_OR_YAML",
                   help=f"preset name ({', '.join(list_presets())}) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted for nested ones (head.kind=linear); "
                        "repeatable")
    p.add_argument("--out", metavar="DIR", help="run folder to create")
    p.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def run_train(args: argparse.Namespace) -> int:
    """Build the config, train, print the final metrics line as JSON."""
    from train.trainer import Trainer, check_resume_epochs, resume_state  # heavy imports

    if args.resume:
        check_resume_arguments(args)
        if not (Path(args.resume) / "last.pt").is_file():
            raise UserError(f"{args.resume}: nothing to resume (no last.pt)")
        cfg, done = resume_state(args.resume)
        stored = copy.deepcopy(cfg)
        apply_overrides(cfg, args.overrides)
        validate(cfg)
        check_resume_overrides(stored, cfg, args.resume)
        check_resume_epochs(cfg, done, args.resume)
        out, resume = args.resume, True
    else:
        if not args.config:
            raise UserError("train needs --config NAME_OR_YAML (or --resume DIR)")
        if not args.out:
            raise UserError("train needs --out DIR")
        cfg = load_config(args.config, args.overrides)
        out, resume = args.out, False
    trainer = Trainer(cfg, out, quiet=args.quiet, resume=resume)
    try:
        final = trainer.run()
    finally:
        if trainer.world.distributed:  # started by torchrun: leave the process group
            from train.distributed import shutdown

            shutdown()
    if trainer.world.is_main:  # one result line, not one per process
        print(dumps({"out": str(out), **final}))
    return 0


def check_resume_arguments(args: argparse.Namespace) -> None:
    """``--resume DIR`` takes the run's config from DIR/last.pt and writes DIR: a ``--config``,
    or an ``--out`` other than DIR, would be silently ignored, so both are refused."""
    if args.config:
        raise UserError(f"--resume {args.resume} continues the run with the config stored in "
                        f"it; drop --config {args.config} (use --set for what may change)")
    if args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise UserError(f"--resume {args.resume} writes into {args.resume}; drop --out "
                        f"{args.out} (to start another run, use --config and --out without "
                        "--resume)")


def add_train_ae_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``train-ae``: paper S's pixel autoencoder (see train/autoencoder.py)."""
    p = subparsers.add_parser(
        "train-ae", help="train paper S's pixel autoencoder for the 'ae' projection head",
        description="Train a shallow MLP autoencoder on a dataset's pixels (paper S); its "
                    "embedding layer becomes the first layer of head.kind=ae "
                    "(--set head.ae_checkpoint=DIR/autoencoder.pt).")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset name")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for autoencoder.pt")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field: latent (128/256/512), epochs, lr, batch_size, "
                        "zscore (none/train/per-split), data_limit, seed, ...; repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_train_ae)
    return p


def run_train_ae(args: argparse.Namespace) -> int:
    from train.autoencoder import make_ae_config, train_autoencoder

    cfg = make_ae_config(args.data, args.overrides)
    print(dumps(train_autoencoder(cfg, args.out, quiet=args.quiet)))
    return 0


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``sweep``: a resumable grid of training runs (see train/sweep.py)."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of training configs and seeds, resumable, with a CSV summary",
        description="Run every config of GRID.yaml (base, set, grid, seeds) into its own "
                    "folder under --out; finished runs are skipped and stopped ones resumed. "
                    "Writes results.csv and summary.csv (min, max, mean, range, IQR, std "
                    "over seeds).")
    p.add_argument("grid", metavar="GRID.yaml", help="grid file")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_sweep_cmd)
    return p


def run_sweep_cmd(args: argparse.Namespace) -> int:
    from train.sweep import run_sweep

    print(dumps(run_sweep(args.grid, args.out, quiet=args.quiet)))
    return 0
