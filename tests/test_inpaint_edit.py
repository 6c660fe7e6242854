"""Inpainting and editing from data to samples: the toy world's items, their conditioning latents in records
(`encode-real` with masks or sources), a text-to-image teacher widened to take them (samples exactly as before),
conditioned fine-tuning, conditioned synth, conditioned LADD, and `ladd-jax sample --inpaint/--edit`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_synth
from PIL import Image
from test_train import ROOT

from ladd_jax import cli
from ladd_jax.conditioning import latent_mask, make_cond, masked_images
from ladd_jax.config_files import load_config_file
from ladd_jax.data.encode_real import encode_real, load_image, load_mask
from ladd_jax.data.records import iter_records
from ladd_jax.errors import LaddError
from ladd_jax.export import widen_for_conditioning
from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.toy.editing import MOVES, changed_pixels, sample_edits, write_editing_folder
from ladd_jax.toy.inpainting import write_inpainting_folder
from ladd_jax.toy.world import ToyWorld, draw, parse_caption, scene_split

WORLD = ToyWorld()


def test_latent_mask_marks_every_cell_the_hole_touches():
    masks = np.zeros((1, 8, 8), np.float32)
    masks[0, 3, 5] = 1.0  # one pixel: the cell (0, 1) of 4x4 cells
    cells = latent_mask(masks, 4)
    assert cells.shape == (1, 2, 2, 1) and cells[0, :, :, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]
    images = np.ones((1, 8, 8, 3), np.float32)
    assert masked_images(images, masks)[0, 3, 5].tolist() == [0.0, 0.0, 0.0]  # grey in [-1, 1]
    with pytest.raises(LaddError, match="latent cells"):
        latent_mask(np.zeros((1, 6, 8)), 4)


def test_edits_change_only_what_the_instruction_names():
    for split in ("train", "test"):
        for edit in sample_edits(WORLD, split, 40, seed=3):
            source, target = draw(WORLD, edit.source_placed), draw(WORLD, edit.target_placed)
            changed = changed_pixels(source, target)
            assert 0 < changed.sum() < changed.size / 4
            assert "test" if split == "test" else "train" == split
            held = {scene_split(WORLD, edit.source), scene_split(WORLD, edit.target)}
            assert ("test" in held) == (split == "test")
            assert parse_caption(WORLD, edit.target.caption()) == edit.target
            if edit.kind == "recolour":  # "make the SHAPE COLOUR": that shape now has that colour
                _, _, shape, color = edit.instruction.split()
                assert any(o.shape == shape and o.color == color for o in edit.target.objects)
            else:  # "move the SHAPE ...": the centre moved by a quarter of the side that way
                (before,), (after,) = edit.source_placed, edit.target_placed
                direction = next(d for d, (words, _) in MOVES.items() if edit.instruction.endswith(words))
                dy, dx = MOVES[direction][1]
                moved = np.subtract(after.center, before.center) / WORLD.image_size
                np.testing.assert_allclose(moved, (0.25 * dy, 0.25 * dx), atol=1e-9)


@pytest.fixture(scope="module")
def inpaint_world(world, tmp_path_factory):
    """The tiny teacher widened for inpainting, and 8 toy inpainting items encoded with their conditioning."""
    root = tmp_path_factory.mktemp("inpaint")
    items = write_inpainting_folder(WORLD, "train", 8, 0, root / "items")
    encode_real(world["teacher"], items / "captions.jsonl", root / "records", batch_size=4, max_sequence_length=8)
    widened = widen_for_conditioning(world["teacher"], "inpaint", root / "widened")
    return dict(items=items, records=root / "records", widened=widened, teacher=world["teacher"], root=root)


def test_inpainting_records_carry_the_masked_image_and_mask(inpaint_world):
    pipe = SD3Pipeline.from_pretrained(inpaint_world["teacher"])
    lines = [json.loads(x) for x in (inpaint_world["items"] / "captions.jsonl").read_text().splitlines()]
    records = list(iter_records(inpaint_world["records"]))
    assert len(records) == 8
    for line, record in zip(lines[:2], records[:2], strict=True):
        image = load_image(inpaint_world["items"] / line["image"], 64, 64)[None]
        mask = load_mask(inpaint_world["items"] / line["mask"], 64, 64)[None]
        assert 0 < mask.mean() < 1 and record["cond"].shape == (16, 16, 17)
        expected = make_cond("inpaint", pipe.encode_images, image, pipe.vae_scale_factor, mask)[0]
        np.testing.assert_allclose(record["cond"], expected, atol=1e-4)  # batch 4 vs 1: XLA rounds apart
        np.testing.assert_array_equal(record["cond"][..., -1:], latent_mask(mask, 4)[0])


def test_editing_records_carry_the_source_latent(world, tmp_path):
    items = write_editing_folder(WORLD, "test", 4, 0, tmp_path / "items")
    encode_real(world["teacher"], items / "captions.jsonl", tmp_path / "records", batch_size=4, max_sequence_length=8)
    pipe = SD3Pipeline.from_pretrained(world["teacher"])
    lines = [json.loads(x) for x in (items / "captions.jsonl").read_text().splitlines()]
    records = list(iter_records(tmp_path / "records"))
    assert [r["prompt"] for r in records] == [line["prompt"] for line in lines]
    sources = np.stack([load_image(items / line["source"], 64, 64) for line in lines])
    targets = np.stack([load_image(items / line["image"], 64, 64) for line in lines])
    np.testing.assert_allclose(np.stack([r["cond"] for r in records]), pipe.encode_images(sources), atol=1e-5)
    np.testing.assert_allclose(np.stack([r["latent"] for r in records]), pipe.encode_images(targets), atol=1e-5)

    # `sample --edit` on a freshly widened model (zero conditioning weights) draws what the base model draws.
    widened = widen_for_conditioning(world["teacher"], "edit", tmp_path / "widened")
    common = ["--prompt", lines[0]["prompt"], "--steps", "2", "--cfg", "2", "--max-sequence-length", "8"]
    assert (
        cli.main(
            [
                "sample",
                "--model",
                str(widened),
                *common,
                "--edit",
                str(items / lines[0]["source"]),
                "--out",
                str(tmp_path / "edit.png"),
            ]
        )
        == 0
    )
    assert cli.main(["sample", "--model", str(world["teacher"]), *common, "--out", str(tmp_path / "base.png")]) == 0
    edited, base = (np.asarray(Image.open(tmp_path / f"{n}.png"), np.int16) for n in ("edit", "base"))
    assert np.abs(edited - base).max() <= 1  # rounding to 8 bits


def test_widened_teacher_samples_exactly_as_before_and_needs_its_conditioning(inpaint_world):
    base = SD3Pipeline.from_pretrained(inpaint_world["teacher"])
    wide = SD3Pipeline.from_pretrained(inpaint_world["widened"])
    assert (base.cond_channels, wide.cond_channels) == (0, 17)
    cond = np.random.default_rng(0).standard_normal((2, 16, 16, 17)).astype(np.float32)
    kw = dict(num_inference_steps=2, guidance_scale=2.0, seed=[0, 1], max_sequence_length=8, output_type="latent")
    np.testing.assert_allclose(wide(["a", "b"], cond=cond, **kw), base(["a", "b"], **kw), atol=1e-5)
    with pytest.raises(LaddError, match="conditioning channels"):
        wide(["a", "b"], **kw)
    with pytest.raises(LaddError, match="takes no conditioning"):
        base(["a", "b"], cond=cond, **kw)
    with pytest.raises(LaddError, match="cond has shape"):
        wide(["a", "b"], cond=cond[..., :16], **kw)


def test_conditioned_pretrain_synth_and_sample(inpaint_world, tmp_path):
    """The chain on the tiny teacher: fine-tune the widened teacher on the records (2 steps), sample it on the
    records' conditioning (synth: records carry their cond; a latent equals the pipeline's own sample), and fill a
    hole with `ladd-jax sample --inpaint --mask`. (LADD on such records: tests/test_conditioning.py.)"""
    from ladd_jax.train.pretrain import pretrain

    c = load_config_file(ROOT / "configs" / "pretrain.py", "tiny")
    c.model, c.data, c.max_sequence_length, c.total_steps = str(inpaint_world["widened"]), "", 8, 2
    c.data, c.conditioned = str(inpaint_world["records"]), True
    pretrain(c, tmp_path / "pretrain")
    teacher = tmp_path / "pretrain" / "pipeline"

    manifest = tiny_synth(teacher, inpaint_world["records"], tmp_path / "synth", batch_size=1)
    assert manifest["fields"]["cond"]["shape"] == [16, 16, 17]
    source = list(iter_records(inpaint_world["records"]))
    synth = list(iter_records(tmp_path / "synth"))
    assert [r["prompt"] for r in synth] == [r["prompt"] for r in source]
    np.testing.assert_array_equal(synth[3]["cond"], source[3]["cond"])
    pipe = SD3Pipeline.from_pretrained(teacher)
    own = pipe(
        [synth[3]["prompt"]],
        num_inference_steps=2,
        guidance_scale=2.0,
        seed=[synth[3]["seed"]],
        max_sequence_length=8,
        output_type="latent",
        cond=source[3]["cond"][None],
    )
    np.testing.assert_allclose(synth[3]["latent"], own[0], atol=1e-6)
    (tmp_path / "prompts.txt").write_text("a small red circle\n")
    with pytest.raises(LaddError, match="conditioned model"):
        tiny_synth(teacher, tmp_path / "prompts.txt", tmp_path / "no_cond")

    line = json.loads((inpaint_world["items"] / "captions.jsonl").read_text().splitlines()[0])
    args = [
        "sample",
        "--model",
        str(teacher),
        "--prompt",
        line["prompt"],
        "--steps",
        "1",
        "--cfg",
        "1",
        "--max-sequence-length",
        "8",
        "--inpaint",
        str(inpaint_world["items"] / line["image"]),
        "--mask",
        str(inpaint_world["items"] / line["mask"]),
        "--seeds",
        "2",
        "--out",
        str(tmp_path / "fill.png"),
    ]
    assert cli.main(args) == 0
    assert Image.open(tmp_path / "fill.png").size == (128, 64)
    assert cli.main([*args[:-2], "--out", str(tmp_path / "x.png"), "--edit", line["image"]]) == 2  # one kind
    text_to_image = [*args[:2], str(inpaint_world["teacher"]), *args[3:]]
    assert cli.main(text_to_image) == 2  # a text-to-image model cannot inpaint


@pytest.mark.parametrize("kind", ["inpaint", "edit"])
def test_measures_tell_the_answer_from_the_input(kind, tmp_path):
    """The evaluation's references: the answer (original / edited render) scores perfectly, the input (the holed
    render / the unedited source) does not."""
    from ladd_jax.toy.conditioned_eval import measure, read_items
    from ladd_jax.toy.evaluator import load_evaluator
    from ladd_jax.toy.metrics import reference_stats

    write = write_inpainting_folder if kind == "inpaint" else write_editing_folder
    items = read_items(kind, write(WORLD, "train", 32, 5, tmp_path / "items"), "train", 32)
    evaluator = load_evaluator()
    reference = reference_stats(evaluator, 64, 1, split="train")
    answer = measure(kind, items, items.answers, evaluator, reference)
    given = measure(kind, items, items.inputs, evaluator, reference)
    assert answer["alignment"] > 0.9 and answer["psnr_out"] > 80  # an exact copy outside the region
    if kind == "edit":
        assert answer["success"] == 1.0 and given["success"] == 0.0 and given["psnr_out"] > 80
    else:
        assert given["alignment"] < 0.5 < answer["alignment"] and given["fd"] > answer["fd"]


@pytest.mark.slow  # 40 s; CI checks the conditioned step (tests/test_conditioning.py) and the chain above
def test_conditioned_ladd_run_and_its_student_inpaints(inpaint_world, tmp_path):
    from ladd_jax.train.export import export_workdir
    from ladd_jax.train.loop import train_and_evaluate

    teacher = inpaint_world["widened"]
    tiny_synth(teacher, inpaint_world["records"], tmp_path / "synth", batch_size=4)
    c = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    c.teacher, c.data, c.conditioned, c.max_sequence_length = str(teacher), str(tmp_path / "synth"), True, 8
    c.total_steps, c.sample_every = 2, 0
    train_and_evaluate(c, tmp_path / "ladd")
    student = export_workdir(tmp_path / "ladd", tmp_path / "student", ema=True)
    line = json.loads((inpaint_world["items"] / "captions.jsonl").read_text().splitlines()[0])
    args = ["sample", "--model", str(student), "--prompt", line["prompt"], "--steps", "1", "--cfg", "1"]
    args += ["--max-sequence-length", "8", "--inpaint", str(inpaint_world["items"] / line["image"])]
    args += ["--mask", str(inpaint_world["items"] / line["mask"]), "--out", str(tmp_path / "fill.png")]
    assert cli.main(args) == 0
    c.sample_every = 10
    with pytest.raises(LaddError, match="sample_every=0"):
        train_and_evaluate(c, tmp_path / "again")
