"""`ladd-jax toy-evaluator`: trains the toy world's evaluator (what `launch/toy_evaluator.sh` ships)."""

from __future__ import annotations

import argparse

from ladd_jax import arguments
from ladd_jax.errors import LaddError

DEFAULTS = "default: TrainConfig's, in ladd_jax/toy/evaluator.py"  # not imported here: it would load jax


def add_toy_evaluator_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `toy-evaluator` subcommand (jax and flax load only when it runs)."""
    p = subparsers.add_parser("toy-evaluator", help="train the toy world's evaluator (alignment and FD features)")
    p.add_argument("--out", required=True, help="the folder to write (shipped: ladd_jax/toy/assets/evaluator)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps; " + DEFAULTS)
    p.add_argument("--batch-size", type=int, default=None, help=DEFAULTS)
    p.add_argument("--pool-size", type=int, default=None, help="rendered training images; " + DEFAULTS)
    p.add_argument("--bucket", default=None, help="HEIGHTxWIDTH: the toy world drawn at this bucket (default 64x64)")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    p.set_defaults(fn=run_toy_evaluator)


def run_toy_evaluator(args: argparse.Namespace) -> None:
    import dataclasses
    from pathlib import Path

    from ladd_jax.atomic import check_writable_destination
    from ladd_jax.data.buckets import parse_bucket
    from ladd_jax.toy.evaluator import TrainConfig, train_evaluator
    from ladd_jax.toy.world import ToyWorld

    options = {name: getattr(args, name) for name in ("steps", "batch_size", "pool_size")}
    given = {name: value for name, value in options.items() if value is not None}
    for name, value in given.items():
        if value < 1:
            raise LaddError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    world = ToyWorld() if args.bucket is None else ToyWorld().at_bucket(parse_bucket(args.bucket))
    check_writable_destination(Path(args.out), args.overwrite)  # before minutes of training
    train = dataclasses.replace(TrainConfig(seed=args.seed), **given)
    report = train_evaluator(world, args.out, train, overwrite=args.overwrite)
    for split, acc in report["accuracy"].items():
        print(f"{split}-split renders: " + ", ".join(f"{k} {v:.2%}" for k, v in acc.items()))
    print(f"wrote {args.out} ({report['num_params']:,} params, trained in {report['train_seconds']:.0f} s)")
