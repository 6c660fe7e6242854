"""A weight average ("model soup") of two teachers of one architecture: the transformer params w * A + (1 - w) * B,
the rest of the pipeline folder (VAE, text encoders, scheduler) B's. Two checkpoints of one training run, e.g. the
ends of two pretraining stages, average into a model that is sometimes better than either; measure the result with
launch/toy_teacher_eval.py.

    python launch/toy_teacher_soup.py --a STAGE6 --b STAGE7 --weight 0.25 --out SOUP
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from ladd_jax.errors import LaddError


def main() -> None:
    from ladd_jax.convert.mmdit import load_mmdit
    from ladd_jax.export import export_student

    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="a teacher pipeline folder (weight w)")
    ap.add_argument("--b", required=True, help="a teacher pipeline folder of the same architecture (1 - w)")
    ap.add_argument("--weight", type=float, required=True, help="w, A's share, in [0, 1]")
    ap.add_argument("--out", required=True, help="the soup's pipeline folder (must not exist)")
    args = ap.parse_args()
    if not 0.0 <= args.weight <= 1.0:
        ap.error(f"--weight {args.weight}: A's share must lie in [0, 1]")
    try:
        (config_a, a), (config_b, b) = load_mmdit(args.a), load_mmdit(args.b)
        if config_a != config_b:
            raise LaddError(
                f"--a {args.a} and --b {args.b} hold transformers of different architectures; average "
                "two checkpoints of one model"
            )
        w = np.float32(args.weight)
        soup = jax.tree.map(lambda x, y: w * np.asarray(x) + (np.float32(1) - w) * np.asarray(y), a, b)
        print(export_student(args.b, config_b, soup, args.out))
    except LaddError as e:
        ap.error(str(e))


if __name__ == "__main__":
    main()
