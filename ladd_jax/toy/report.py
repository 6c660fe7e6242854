"""The pictures and reports of `ladd-jax demo` and `ladd-jax evaluate`: training curves, labelled sample grids,
the targets check, report.md/html.

Everything here reads measured numbers (the tables, the runs' metrics.jsonl) and draws or writes them; no model
runs here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ladd_jax.train.writer import read_metrics

SPLITS = ("train", "test")
CELL_SCALE = 2  # grid cells are drawn at 2x (nearest), so 64x64 samples are legible beside their labels


def row_label(row: dict) -> str:
    """How a table row is named in tables and in grid headers (the real renders' column is labelled apart)."""
    cfg = f", CFG {row['cfg']:g}" if row["cfg"] > 1 else ""
    return f"{row['model']} {row['steps']} step{'s' if row['steps'] > 1 else ''}{cfg}"


# ------------------------------------------------------------------------------------------------------ curves


# Panels drawn on a log scale: FD falls from thousands (the teacher's 1-step blur; the control's run climbs past
# 3000) to about the teacher's, where on a linear axis its last stretch and the reference lines merge.
LOG_SCALE_KEYS = ("eval/fd_1step",)
EVAL_PANELS = (
    ("eval/fd_1step", "student 1-step FD, held-out prompts (lower is better)"),
    ("eval/alignment_1step", "student 1-step alignment, held-out prompts"),
)


def training_curves(
    runs: dict[str, Path],
    references: dict[str, list[tuple[str, float]]],
    out: Path,
    eval_panels: tuple[tuple[str, str], tuple[str, str]] = EVAL_PANELS,
) -> Path:
    """2x2 panels over training steps for each run (e.g. LADD and the frozen-heads control): discriminator
    accuracy, the logit gap real - fake, and two `eval/` metrics (key, title) of the student, by default its
    1-step FD and alignment on held-out prompts; `references` maps a metric to labelled horizontal lines
    (teacher, real renders), each labelled with its value. The panels of LOG_SCALE_KEYS have a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    if len(runs) > 10:  # past the default cycle's 10 colours, lines would share one
        for ax in axes.flat:
            ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)
    panels = (
        (axes[0, 0], "d_acc", "D accuracy (per location) on each step's batch, before its D updates"),
        (axes[0, 1], "logit_gap", "logit gap: mean D(real) - mean D(fake), the same"),
        (axes[1, 0], *eval_panels[0]),
        (axes[1, 1], *eval_panels[1]),
    )
    for ax, key, title in panels:
        for name, workdir in runs.items():
            rows = [r for r in read_metrics(workdir) if key in r]
            marker = "." if key.startswith("eval/") else None
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=marker, label=name)
        if key in LOG_SCALE_KEYS:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 200, not 2 x 10^2
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.yaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2, 3, 5)))
        for label, value in references.get(key, []):
            ax.axhline(value, ls="--", lw=1, color="gray")
            ax.annotate(f"{label} ({value:.3g})", (0, value), fontsize=7, color="gray", va="bottom")
        if key == "d_acc":
            ax.axhline(0.5, ls=":", lw=1, color="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step", fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------------- grids


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, width: int, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    return lines + [line]


def labelled_grid(columns: Sequence[tuple[str, np.ndarray]], title: str) -> Image.Image:
    """One picture: a title line, then a header naming each column, then the columns' images (lines = seeds).

    `columns`: (label, images [S, H, W, 3] in [0, 1]) with the same S in every column."""
    seeds, h, w = columns[0][1].shape[:3]
    cw, ch = w * CELL_SCALE, h * CELL_SCALE
    font, title_font = _font(11), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(label, cw - 4, probe, font) for label, _ in columns]
    header = 14 * max(len(x) for x in wrapped) + 6
    top = 22
    canvas = Image.new("RGB", (cw * len(columns), top + header + ch * seeds), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black", font=title_font)
    for c, ((_, images), lines) in enumerate(zip(columns, wrapped, strict=True)):
        for i, line in enumerate(lines):
            draw.text((c * cw + 3, top + 2 + 14 * i), line, fill="black", font=font)
        for s in range(seeds):
            pixels = (np.clip(images[s], 0, 1) * 255).round().astype(np.uint8)
            cell = Image.fromarray(pixels).resize((cw, ch), Image.NEAREST)
            canvas.paste(cell, (c * cw, top + header + s * ch))
        if c:
            draw.line([(c * cw, top), (c * cw, canvas.height)], fill="white", width=2)
    return canvas


# ----------------------------------------------------------------------------------------------------- targets


def check_targets(rows: list[dict], real: dict[str, dict]) -> list[dict]:
    """The toy-world targets of the LADD demo, each with the measured values and whether it holds (per split).

    Rows are found by (model, steps, cfg); `real` holds the real renders' FD floor and alignment per split."""
    find = {(r["model"], r["steps"], r["cfg"]): r for r in rows}
    teacher = next(r for r in rows if r["model"] == "teacher" and r["sampler"] == "euler")
    t1 = find[("teacher", 1, teacher["cfg"])]
    s1, s4, c1 = find[("student", 1, 1.0)], find.get(("student", 4, 1.0)), find.get(("control", 1, 1.0))
    n = teacher["steps"]
    out = []

    def target(name: str, split: str, value: float, bound: float, higher_is_better: bool) -> None:
        ok = value >= bound if higher_is_better else value <= bound
        out.append(dict(target=name, split=split, value=value, bound=bound, holds=bool(ok)))

    for sp in SPLITS:
        fd, align = (lambda r, sp=sp: r[f"fd_{sp}"]), (lambda r, sp=sp: r[f"alignment_{sp}"])
        want = 0.90 if sp == "train" else 0.60
        target(f"teacher {n} steps alignment >= {want}", sp, align(teacher), want, True)
        target(f"teacher {n} steps FD <= 3x real-render floor", sp, fd(teacher), 3 * real[sp]["fd"], False)
        target(f"teacher 1 step FD >= 3x its {n}-step FD", sp, fd(t1), 3 * fd(teacher), True)
        target("student 1 step FD <= 1.5x teacher's", sp, fd(s1), 1.5 * fd(teacher), False)
        target("student 1 step alignment >= teacher's - 0.10", sp, align(s1), align(teacher) - 0.10, True)
        target("student 1 step FD <= 0.5x teacher 1 step CFG", sp, fd(s1), 0.5 * fd(t1), False)
        if s4 is not None:
            target("student 4 steps FD <= 1.2x teacher's", sp, fd(s4), 1.2 * fd(teacher), False)
            target("student 4 steps alignment >= teacher's - 0.05", sp, align(s4), align(teacher) - 0.05, True)
        if c1 is not None:
            target("frozen-heads control 1 step FD >= 1.25x student's", sp, fd(c1), 1.25 * fd(s1), True)
    return out


# ----------------------------------------------------------------------------------------------------- reports

METRICS_EXPLAINED = (
    "FD: Frechet distance to real renders in the features of an evaluator network that no training step ever "
    "sees (lower is better); alignment: the share of images in which the evaluator finds exactly the objects, "
    "colours, sizes and relation the caption asks for. Train-split prompts use (colour, shape) pairs the teacher "
    "was trained on; test-split prompts each contain a pair it never saw (compositional generalisation)."
)

EXPLAINER = (
    "**What you are looking at.** A 4-block MMDiT teacher, pretrained on renders of coloured shapes, is sampled "
    "with {n} Euler steps and classifier-free guidance (how often it draws exactly what its caption asks for: the "
    "alignment column). Asked for one step it can only draw the average of all pictures the caption allows: a "
    "blur. {method} The control "
    "run is identical except that its heads are frozen at a random initialisation: if the control's student "
    "does as well, the improvement did not come from the adversarial game. " + METRICS_EXPLAINED
)

EVALUATION_EXPLAINER = (
    "**What you are looking at.** Every row samples the same prompts from the same initial noise; only the model, "
    "the number of steps and the guidance differ. The teacher's rows are the references: {n} Euler steps with "
    "classifier-free guidance (CFG) is the quality a student chases; the same teacher in few steps on the "
    "student's schedule is what it draws without distillation (at one step the average of all pictures the "
    "caption allows: a blur), and its 1 step without CFG is where a student distilled from it starts. Each "
    "student is sampled without CFG (distillation bakes the guidance in). The real renders row measures pictures "
    "of the same prompts drawn by the renderer: FD's floor at this number of images (FD is biased upward at few "
    "images, so compare rows with each other and with the floor, not with zero). " + METRICS_EXPLAINED + " In "
    "the grids each line is one seed, the same noise in every column; the first column is a real render."
)

SCHEDULE = (
    "Few-step rows use the student's schedule (t = 1, then re-noising to 1 - k/n): diffusers' own 2-step flow "
    "schedule is [1, 0.001], which would make a 2-step teacher a 1-step one."
)

CURVES_HOWTO = (
    "**Reading the curves.** Top left: the heads' accuracy on the current batch. It rises above 0.5 when the "
    "heads find a difference between the student's samples and the teacher's; it drifts back toward 0.5 as the "
    "student closes the gap (the bottom panels tell this apart from heads that stopped learning: FD falls and "
    "alignment rises at the same time). Top right: the gap between the heads' mean logits on real and fake. The "
    "control's heads never train, so its accuracy and gap only say how its random heads happen to score. "
    "Bottom: the EMA student's 1-step samples on held-out test prompts every few steps; the dashed lines are the "
    "teacher at full steps with CFG and real renders, measured on the same prompts."
)


BUCKETS_EXPLAINED = (
    "The same rows at each multi-aspect bucket: the prompts sampled at the bucket's size from the same noise in "
    "every row, FD against real renders of the world drawn at that size and alignment, both with the evaluator "
    "trained at that size (FD values of different buckets come from different feature spaces: compare rows within "
    "a bucket, and each with its floor). Objects keep their size in pixels across buckets. The teacher was "
    "pretrained at 64x64 only; its rows elsewhere say how well it draws there, and the student learns from them."
)


class Figure(NamedTuple):
    caption: str
    path: Path


Block = str | Figure  # markdown text: a paragraph, a "## heading" or a table (lines starting with "|")


def table_markdown(rows: list[dict], real: dict[str, dict]) -> str:
    head = (
        "| model | steps | CFG | sampler | FD train | alignment train | FD test | alignment test |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['model']} | {r['steps']} | {r['cfg']:g} | {r['sampler']} | {r['fd_train']:.1f} | "
        f"{r['alignment_train']:.3f} | {r['fd_test']:.1f} | {r['alignment_test']:.3f} |\n"
        for r in rows
    )
    floor = (
        f"| real renders (floor) | | | | {real['train']['fd']:.1f} | {real['train']['alignment']:.3f} | "
        f"{real['test']['fd']:.1f} | {real['test']['alignment']:.3f} |\n"
    )
    return head + body + floor


ATTRIBUTE_COLUMNS = (
    ("count", "count"),
    ("axis", "relation"),
    ("shape", "shape"),
    ("color", "colour"),
    ("size", "size"),
    ("one_object", "one object: all"),
    ("two_objects", "two objects: all"),
)

ATTRIBUTES_EXPLAINED = (
    "**Where alignment is lost.** The evaluator's reading of each row, per attribute (train / test split): the "
    "share of images with the right number of objects, of two-object images with the right relation, and of "
    "objects with the right shape, colour and size; then alignment over the one-object and the two-object prompts "
    "alone. An image is aligned when every one of them is right."
)


def shares_markdown(rows: list[dict], real: dict[str, dict], measure: str, columns: list[tuple[str, str]]) -> str:
    """A `Measure` field of shares (`measure`: "attributes", "shapes") of every row and of the real renders,
    "train / test" in each cell; `columns`: (key, header) pairs."""
    head = "| model | steps | CFG | " + " | ".join(name for _, name in columns) + " |\n"
    head += "|---|---|---|" + "---|" * len(columns) + "\n"
    share = lambda v: "-" if v is None else f"{v:.2f}"  # "-": no prompt of that kind among the measured ones
    cells = lambda a: " | ".join(f"{share(a['train'][k])} / {share(a['test'][k])}" for k, _ in columns)
    body = "".join(
        f"| {r['model']} | {r['steps']} | {r['cfg']:g} | " + cells({sp: r[f"{measure}_{sp}"] for sp in SPLITS}) + " |\n"
        for r in rows
    )
    floor = "| real renders | | | " + cells({sp: real[sp][measure] for sp in SPLITS}) + " |\n"
    return head + body + floor


def attributes_markdown(rows: list[dict], real: dict[str, dict]) -> str:
    """Per-attribute accuracy of every row and of the real renders."""
    return shares_markdown(rows, real, "attributes", list(ATTRIBUTE_COLUMNS))


SHAPES_EXPLAINED = (
    "**Which shapes.** The share of objects drawn with the right shape, per shape and per size the prompt asks "
    "for (train / test split): where the shape errors of the table above fall."
)


def shapes_markdown(rows: list[dict], real: dict[str, dict]) -> str:
    """The right shape per asked shape and size (`Measure`'s shapes) of every row and of the real renders."""
    return shares_markdown(rows, real, "shapes", [(k, k) for k in real[SPLITS[0]]["shapes"]])


def targets_markdown(targets: list[dict]) -> str:
    head = "| split | target | measured | bound | |\n|---|---|---|---|---|\n"
    verdict = lambda t: "holds" if t["holds"] else "MISSED"
    return head + "".join(
        f"| {t['split']} | {t['target']} | {t['value']:.3f} | {t['bound']:.3f} | {verdict(t)} |\n" for t in targets
    )


def table_html(markdown: str) -> str:
    """A markdown table as HTML, consecutive rows with the same first cell (a model, a split) in one group,
    the groups set apart by a rule, so that a table of several students reads model by model."""
    lines = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in markdown.strip().splitlines()]
    groups: list[list[list[str]]] = []
    for cells in lines[2:]:  # lines[1] is the |---| rule
        if not groups or groups[-1][0][0] != cells[0]:
            groups.append([])
        groups[-1].append(cells)
    row = lambda cells, tag: "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"
    body = "".join(
        "<tbody style='border-top:3px solid'>" + "".join(row(c, "td") for c in g) + "</tbody>" for g in groups
    )
    table = "<table border=1 cellpadding=4 style='border-collapse:collapse'>"
    return f"{table}<thead>{row(lines[0], 'th')}</thead>{body}</table>"


def write_reports(out: Path, result: dict[str, Any], title: str, blocks: Sequence[Block]) -> None:
    """metrics.json (`result`: everything measured), and report.md and report.html: `title`, then `blocks`."""
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    md, body = [f"# {title}"], [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Figure):
            md.append(f"**{block.caption}**\n\n![{block.caption}]({block.path.name})")
            body.append(
                f"<h3>{html.escape(block.caption)}</h3>"
                f"<img src='{block.path.name}' style='image-rendering:pixelated;max-width:100%'>"
            )
            continue
        md.append(block.strip())
        if block.startswith("## "):
            body.append(f"<h2>{html.escape(block[3:].strip())}</h2>")
        elif block.startswith("|"):
            body.append(table_html(block))
        else:
            body.append(f"<p>{html.escape(block.replace('**', ''))}</p>")
    (out / "report.md").write_text("\n\n".join(md) + "\n")
    (out / "report.html").write_text(
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif;max-width:1200px'>{''.join(body)}</body></html>\n"
    )


def save_grids(grids: dict[str, Image.Image], out: Path) -> list[Figure]:
    """grid_0.png, grid_1.png, ... in `out`, as figures captioned with their titles."""
    figures = []
    for i, (title, image) in enumerate(grids.items()):
        image.save(out / f"grid_{i}.png")
        figures.append(Figure(title, out / f"grid_{i}.png"))
    return figures


def _measured(result: dict[str, Any], models: str) -> str:
    return (
        f"Measured in {result['seconds'] / 60:.1f} minutes{_phases(result)} on {result['devices']}. {models} "
        f"{result['eval_prompts']} prompts per split, one image each per row, every row from the same initial "
        f"noise. {SCHEDULE}"
    )


def _phases(result: dict[str, Any]) -> str:
    """The run's parts and their seconds, e.g. " (setup 9 s, synthesis 41 s, ...)", where it records them (the
    demo does); empty otherwise."""
    parts = result.get("phase_seconds") or {}
    return f" ({', '.join(f'{name} {sec:.0f} s' for name, sec in parts.items())})" if parts else ""


def _full_steps(rows: list[dict]) -> int:
    return next(r["steps"] for r in rows if r["model"] == "teacher" and r["sampler"] == "euler")


def demo_report(out: Path, result: dict[str, Any], grids: list[Figure], curves: Path) -> None:
    """The demo's report: the table, the targets, the training curves, the grids."""
    recipe = result["recipe"]
    models = (
        f"Teacher: `{result['teacher']}`; {recipe['label']} student (`configs/{recipe['file']}:{recipe['variant']}`): "
        f"`{result['student']}`; frozen-heads control: `{result['control']}`."
    )
    blocks = [
        _measured(result, models),
        EXPLAINER.format(n=_full_steps(result["rows"]), method=recipe["method"]),
        table_markdown(result["rows"], result["real_renders"]),
        ATTRIBUTES_EXPLAINED,
        attributes_markdown(result["rows"], result["real_renders"]),
        SHAPES_EXPLAINED,
        shapes_markdown(result["rows"], result["real_renders"]),
        "## Targets",
        targets_markdown(result["targets"]),
        "## Training",
        Figure("training curves", curves),
        CURVES_HOWTO,
        *_bucket_blocks(result.get("buckets") or {}),
        "## Samples",
        *grids,
    ]
    write_reports(out, result, f"ladd-jax demo: {recipe['label']} in the toy world", blocks)


def _bucket_blocks(buckets: dict[str, dict]) -> list[Block]:
    """A multi-aspect demo's section: the table of each bucket (height x width), each measured at its size."""
    if not buckets:
        return []
    blocks: list[Block] = ["## Per bucket", BUCKETS_EXPLAINED]
    for name, measured in buckets.items():
        blocks += [f"**{name}** (height x width)", table_markdown(measured["rows"], measured["real_renders"])]
    return blocks


def evaluation_report(out: Path, result: dict[str, Any], grids: list[Figure]) -> None:
    """`ladd-jax evaluate`'s report: the table of every student beside the teacher, the grids."""
    students = "; ".join(f"{name}: `{folder}`" for name, folder in result["students"].items())
    models = f"Teacher: `{result['teacher']}`. Students: {students}. Evaluator: `{result['evaluator']}`."
    blocks = [
        _measured(result, models),
        EVALUATION_EXPLAINER.format(n=_full_steps(result["rows"])),
        table_markdown(result["rows"], result["real_renders"]),
        ATTRIBUTES_EXPLAINED,
        attributes_markdown(result["rows"], result["real_renders"]),
        SHAPES_EXPLAINED,
        shapes_markdown(result["rows"], result["real_renders"]),
        "## Samples",
        *grids,
    ]
    write_reports(out, result, "ladd-jax evaluate: students in the toy world", blocks)
