"""The training curves of toy runs from any folders in one picture, each under its own label, drawn as
`toy_ladd_sweep.py` draws its own: for runs of several sweeps, or runs resumed in another folder (whose
metrics.jsonl holds their whole history).

    python launch/toy_curves.py OUT.png "no pairs=runs/a/ns/ns" "random pairs=runs/b/random/random"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toy_ladd_sweep import draw_curves  # launch/ is the script's folder, so on its import path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the picture to write (.png)")
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER: a trainer workdir with its metrics.jsonl")
    ap.add_argument("--split", default="test", help="the split of the runs' probe prompts (toy_ladd_sweep's --split)")
    args = ap.parse_args()
    runs = {}
    for text in args.runs:
        label, sep, folder = text.partition("=")
        if not sep or not label or not (Path(folder) / "metrics.jsonl").is_file():
            raise SystemExit(f"{text!r}: give LABEL=RUN_FOLDER, a run folder holding its metrics.jsonl")
        runs[label] = Path(folder)
    print(draw_curves(runs, args.out, args.split))


if __name__ == "__main__":
    main()
