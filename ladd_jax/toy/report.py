"""The demo's pictures and reports: training curves, labelled sample grids, the targets check, report.md/html.

Everything here reads measured numbers (the demo's table, the runs' metrics.jsonl) and draws or writes them; no
model runs here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ladd_jax.train.writer import read_metrics

SPLITS = ("train", "test")
CELL_SCALE = 2  # grid cells are drawn at 2x (nearest), so 64x64 samples are legible beside their labels


def row_label(row: dict) -> str:
    """How a table row is named in tables and in grid headers."""
    if row["model"] == "real":
        return "real render"
    cfg = f", CFG {row['cfg']:g}" if row["cfg"] > 1 else ""
    return f"{row['model']} {row['steps']} step{'s' if row['steps'] > 1 else ''}{cfg}"


# ------------------------------------------------------------------------------------------------------ curves


def training_curves(runs: dict[str, Path], references: dict[str, list[tuple[str, float]]], out: Path) -> Path:
    """2x2 panels over training steps for each run (e.g. LADD and the frozen-heads control): discriminator
    accuracy, the logit gap real - fake, and the student's 1-step FD and alignment on held-out prompts (the
    `eval/` metrics); `references` maps a metric to labelled horizontal lines (teacher, real renders)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    panels = (
        (axes[0, 0], "d_acc", "discriminator accuracy (per location, real and fake)"),
        (axes[0, 1], "logit_gap", "logit gap: mean D(real) - mean D(fake)"),
        (axes[1, 0], "eval/fd_1step", "student 1-step FD, held-out prompts (lower is better)"),
        (axes[1, 1], "eval/alignment_1step", "student 1-step alignment, held-out prompts"),
    )
    for ax, key, title in panels:
        for name, workdir in runs.items():
            rows = [r for r in read_metrics(workdir) if key in r]
            marker = "." if key.startswith("eval/") else None
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker=marker, label=name)
        for label, value in references.get(key, []):
            ax.axhline(value, ls="--", lw=1, color="gray")
            ax.annotate(label, (0, value), fontsize=7, color="gray", va="bottom")
        if key == "d_acc":
            ax.axhline(0.5, ls=":", lw=1, color="gray")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("LADD step", fontsize=8)
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

EXPLAINER = (
    "**What you are looking at.** A 4-block MMDiT teacher, pretrained on renders of coloured shapes, is sampled "
    "with {n} Euler steps and classifier-free guidance (how often it draws exactly what its caption asks for: the "
    "alignment column). Asked for one step it can only draw the average of all pictures the caption allows: a "
    "blur. LADD trains a student (initialised as the teacher) to "
    "draw in 1-4 steps: discriminator heads on the frozen teacher's features learn to tell the teacher's samples "
    "(real) from the student's (fake), and the student follows their gradient through the teacher. The control "
    "run is identical except that its heads are frozen at a random initialisation: if the control's student "
    "does as well, the improvement did not come from the adversarial game. FD: Frechet distance to real renders "
    "in the features of an evaluator network that no training step ever sees (lower is better); alignment: the "
    "share of images in which the evaluator finds exactly the objects, colours, sizes and relation the caption "
    "asks for. Train-split prompts use (colour, shape) pairs the teacher was trained on; test-split prompts each "
    "contain a pair it never saw (compositional generalisation)."
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


def targets_markdown(targets: list[dict]) -> str:
    head = "| target | split | measured | bound | |\n|---|---|---|---|---|\n"
    verdict = lambda t: "holds" if t["holds"] else "MISSED"
    return head + "".join(
        f"| {t['target']} | {t['split']} | {t['value']:.3f} | {t['bound']:.3f} | {verdict(t)} |\n" for t in targets
    )


def write_reports(out: Path, result: dict[str, Any], grids: list[tuple[str, Path]]) -> None:
    """metrics.json (everything measured), report.md and report.html (the same, for people)."""
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    rows, real, targets = result["rows"], result["real_renders"], result["targets"]
    n = next(r["steps"] for r in rows if r["model"] == "teacher" and r["sampler"] == "euler")
    minutes = result["seconds"] / 60
    intro = (
        f"Measured in {minutes:.1f} minutes on {result['devices']}. Teacher: `{result['teacher']}`; LADD student: "
        f"`{result['student']}`; frozen-heads control: `{result['control']}`. {result['eval_prompts']} prompts "
        "per split, one image each per row, every row from the same initial noise. Few-step rows use the "
        "student's schedule (t = 1, then re-noising to 1 - k/n): diffusers' own 2-step flow schedule is "
        "[1, 0.001], which would make a 2-step teacher a 1-step one."
    )
    md = [
        "# ladd-jax demo: LADD in the toy world\n\n",
        intro + "\n\n",
        EXPLAINER.format(n=n) + "\n\n",
        table_markdown(rows, real),
        "\n## Targets\n\n",
        targets_markdown(targets),
        "\n## Training\n\n![training curves](curves.png)\n\n",
        CURVES_HOWTO + "\n\n## Samples\n",
        *[f"\n**{p}**\n\n![{p}]({g.name})\n" for p, g in grids],
    ]
    (out / "report.md").write_text("".join(md))

    def table_html(markdown: str) -> str:
        lines = [ln.strip("|").split("|") for ln in markdown.strip().splitlines()]
        header = "".join(f"<th>{html.escape(c.strip())}</th>" for c in lines[0])
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in cells) + "</tr>" for cells in lines[2:]
        )
        return f"<table border=1 cellpadding=4><tr>{header}</tr>{body}</table>"

    strip_md = lambda s: html.escape(s.replace("**", ""))
    figures = "".join(
        f"<h3>{html.escape(p)}</h3><img src='{g.name}' style='image-rendering:pixelated;max-width:100%'>"
        for p, g in grids
    )
    (out / "report.html").write_text(
        "<html><head><meta charset='utf-8'><title>ladd-jax demo</title></head>"
        "<body style='font-family:sans-serif;max-width:1200px'>"
        f"<h1>LADD in the toy world</h1><p>{html.escape(intro)}</p><p>{strip_md(EXPLAINER.format(n=n))}</p>"
        f"{table_html(table_markdown(rows, real))}<h2>Targets</h2>{table_html(targets_markdown(targets))}"
        f"<h2>Training</h2><img src='curves.png'><p>{strip_md(CURVES_HOWTO)}</p><h2>Samples</h2>{figures}"
        "</body></html>"
    )
