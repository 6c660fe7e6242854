"""Writes a folder of the toy world's inpainting or editing items (toy/inpainting.py, toy/editing.py), the image
folder `ladd-jax encode-real` turns into conditioned records:

    python -m ladd_jax.toy.items --kind inpaint --world TEACHER_FOLDER --split train --num 8192 --seed 0 --out DIR
"""

from __future__ import annotations

import argparse
import sys

from ladd_jax import arguments
from ladd_jax.errors import LaddError, run_command
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.editing import write_editing_folder
from ladd_jax.toy.inpainting import write_inpainting_folder

WRITERS = {"inpaint": write_inpainting_folder, "edit": write_editing_folder}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=sorted(WRITERS), required=True)
    p.add_argument("--world", required=True, help="a toy pipeline folder (its toy_world.json)")
    p.add_argument("--split", choices=("train", "test"), required=True)
    p.add_argument("--num", type=int, required=True)
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.num < 1:
        raise LaddError(f"--num must be at least 1, got {args.num}")
    world = read_toy_world(args.world)
    out = WRITERS[args.kind](world, args.split, args.num, args.seed, args.out, args.overwrite)
    print(f"wrote {args.num} {args.split} {args.kind} items to {out}")


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m ladd_jax.toy.items"))
