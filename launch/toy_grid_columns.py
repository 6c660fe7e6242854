"""Cuts chosen columns out of `ladd-jax evaluate`'s labelled grids (grid_*.png, one per prompt) and stacks them into
one picture, each column keeping its label: a comparison that fits a page where the whole grid does not.

    python launch/toy_grid_columns.py FOLDER OUT.png --total 33 --columns 0 1 6 9 12
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image


def grid_columns(folder: Path, out: Path, total: int, columns: list[int]) -> Path:
    """Columns `columns` (0-based) of every grid in `folder`, which holds `total` equal columns, stacked by grid."""
    paths = sorted(folder.glob("grid_*.png"))
    if not paths:
        raise SystemExit(f"no grid_*.png in {folder}: point at a `ladd-jax evaluate --out` folder")
    if max(columns) >= total:
        raise SystemExit(f"column {max(columns)} does not exist: the grids hold {total} columns (0 to {total - 1})")
    rows = []
    for path in paths:
        grid = Image.open(path)
        width = grid.size[0] / total
        cells = [grid.crop((int(c * width), 0, int((c + 1) * width), grid.size[1])) for c in columns]
        row = Image.new("RGB", (sum(c.size[0] for c in cells), grid.size[1]), "white")
        for i, cell in enumerate(cells):
            row.paste(cell, (sum(c.size[0] for c in cells[:i]), 0))
        rows.append(row)
    picture = Image.new("RGB", (rows[0].size[0], sum(r.size[1] for r in rows)), "white")
    for i, row in enumerate(rows):
        picture.paste(row, (0, sum(r.size[1] for r in rows[:i])))
    picture.save(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a `ladd-jax evaluate --out` folder")
    ap.add_argument("out", type=Path, help="the picture to write (.png)")
    ap.add_argument("--total", type=int, required=True, help="columns in each grid (real, teacher rows, students)")
    ap.add_argument("--columns", type=int, nargs="+", required=True, help="the columns to keep, 0-based, in order")
    args = ap.parse_args()
    print(grid_columns(args.folder, args.out, args.total, args.columns))


if __name__ == "__main__":
    main()
