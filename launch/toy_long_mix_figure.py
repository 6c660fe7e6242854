"""Long runs of `launch/toy_long_mix.sh` against the demo's student targets: each run's students' 1- and 4-step
alignment and FD (`ladd-jax evaluate` rows, train and test prompts) over its steps, single students (LADD's steps
after a run) as stars, the demo's LADD student as a dashed line, and the targets' bounds (`toy.report.check_targets`,
from the first evaluation's teacher rows) as dotted lines. Each student's x (after "@") is its training step, or any
other measure of its training (`--xlabel` names it: CPU minutes, to compare runs whose steps cost differently).

    python launch/toy_long_mix_figure.py --out OUT/figure.png \
        --series 'mix=OUT/compare/metrics.json:mix600@600,mix1200@1200,mix2400@2400' \
        --star 'mix, then 150 LADD steps=OUT/compare/metrics.json:ladd_from_mix2400@2550' \
        --ladd EVAL.json:toy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ladd_jax.toy.report import check_targets

SPLITS = ("train", "test")
COLOURS = {"train": "C0", "test": "C1"}
# Line styles of the series: never ":", which marks the bounds (the fourth is dash-dot-dot).
SERIES_STYLES = ("-", "--", "-.", (0, (6, 2, 1, 2, 1, 2)))


def read_metrics(path: Path) -> dict:
    """An evaluation's metrics.json, or one clear error naming the file."""
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: point at the metrics.json that `ladd-jax evaluate --out` wrote")
    return json.loads(path.read_text())


def points(spec: str) -> tuple[str, list[tuple[float, dict]]]:
    """LABEL=EVAL.json:NAME@X,NAME@X -> (label, [(x, {(steps): row})])."""
    label, _, rest = spec.partition("=")
    path, _, names = rest.rpartition(":")
    if not (label and path and names):
        raise SystemExit(f"{spec!r}: write LABEL=EVAL.json:NAME@X[,NAME@X...]")
    rows = read_metrics(Path(path))["rows"]
    out = []
    for item in names.split(","):
        name, _, x = item.partition("@")
        found = {r["steps"]: r for r in rows if r["model"] == name}
        if not found:
            raise SystemExit(f"{path} has no rows of {name!r}: name a student its `ladd-jax evaluate` measured")
        try:
            out.append((float(x), found))
        except ValueError:
            raise SystemExit(f"{spec!r}: {item!r} needs its x after '@', a number (its step)") from None
    return label, sorted(out, key=lambda p: p[0])


def bounds(path: Path) -> dict[str, float]:
    """The student targets' bounds per f"{alignment|fd}{steps}_{split}" (the 1-step FD one against the teacher's
    full-step FD), from an evaluation's teacher rows; the student rows are placeholders that `check_targets` needs."""
    metrics = read_metrics(path)
    teacher = [r for r in metrics["rows"] if r["model"] == "teacher"]
    placeholders = [dict(teacher[0], model="student", steps=s, cfg=1.0) for s in (1, 4)]
    out = {}
    for t in check_targets(teacher + placeholders, metrics["real_renders"]):
        if t["target"].startswith("student") and "0.5x" not in t["target"]:
            what = "alignment" if "alignment" in t["target"] else "fd"
            out[f"{what}{4 if '4 steps' in t['target'] else 1}_{t['split']}"] = t["bound"]
    return out


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--series", action="append", required=True, help="LABEL=EVAL.json:NAME@X,NAME@X,... (X: its step, or --xlabel)"
    )
    ap.add_argument("--star", action="append", default=[], help="LABEL=EVAL.json:NAME@X, a single student")
    ap.add_argument("--ladd", help="EVAL.json:NAME, the demo's LADD student (a reference line)")
    ap.add_argument("--xlabel", default="training steps", help="what the numbers after '@' measure")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    series = [points(s) for s in args.series]
    stars = [points(s) for s in args.star]
    limit = bounds(Path(args.series[0].partition("=")[2].rpartition(":")[0]))
    ladd = None
    if args.ladd:
        path, _, name = args.ladd.rpartition(":")
        ladd = {r["steps"]: r for r in read_metrics(Path(path))["rows"] if r["model"] == name}

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    markers = "os^Dvp"
    for col, what in enumerate(("alignment", "fd")):
        for row, n in enumerate((1, 4)):
            ax = axes[row, col]
            for split in SPLITS:
                key, c = f"{what}_{split}", COLOURS[split]
                for i, (label, pts) in enumerate(series):
                    m, ls = markers[i % len(markers)], SERIES_STYLES[i % len(SERIES_STYLES)]
                    ax.plot(
                        [s for s, _ in pts],
                        [r[n][key] for _, r in pts],
                        marker=m,
                        ls=ls,
                        color=c,
                        label=f"{label}, {split}",
                    )
                for i, (label, pts) in enumerate(stars):
                    m = "*PX"[i % 3]
                    ax.plot(
                        [s for s, _ in pts], [r[n][key] for _, r in pts], m, ms=13, color=c, label=f"{label}, {split}"
                    )
                ax.axhline(limit[f"{what}{n}_{split}"], color=c, ls=":", lw=2, label=f"bound, {split}")
                if ladd is not None:
                    ax.axhline(ladd[n][key], color=c, ls="--", alpha=0.4, label=f"LADD (the demo), {split}")
            better = "higher" if what == "alignment" else "lower"
            ax.set_title(f"{n}-step student: {'alignment' if what == 'alignment' else 'FD'} ({better} is better)")
            if row == 1:
                ax.set_xlabel(args.xlabel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.035 * -(-len(labels) // 4), 1, 1))  # room for the legend's rows
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
