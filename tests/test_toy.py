"""The toy world: dataset determinism and splits, the caption grammar, the shipped evaluator and its metrics."""

import itertools
import json

import jax
import numpy as np
import pytest
from PIL import Image

from ladd_jax.cli import main
from ladd_jax.errors import LaddError
from ladd_jax.toy.world import (
    RELATION_GEOMETRY,
    Obj,
    Scene,
    ToyWorld,
    is_held_out,
    mismatched,
    parse_caption,
    place,
    render,
    render_dataset,
    sample_scenes,
    scene_split,
    write_image_folder,
    write_mismatched_prompts,
    write_prompts,
)

WORLD = ToyWorld()
BUCKETS = ((48, 80), (80, 48))  # the toy world's multi-aspect buckets besides 64x64 (data/buckets.py)
CHECK_IMAGES = 512  # per set in the evaluator and metric tests: enough for stable 128-dim feature statistics


def all_scenes(world):
    objects = [Obj(shape, color, size) for shape in world.shapes for color in world.colors for size in world.sizes]
    singles = [Scene((o,)) for o in objects]
    pairs = [Scene(pair, rel) for pair in itertools.product(objects, repeat=2) for rel in world.relations]
    return singles + pairs


def test_same_seed_same_bytes_other_seed_differs():
    images, captions, scenes = render_dataset(WORLD, "train", 24, seed=3)
    again, captions_again, _ = render_dataset(WORLD, "train", 24, seed=3)
    assert images.dtype == np.uint8 and images.shape == (24, 64, 64, 3)
    assert images.tobytes() == again.tobytes() and captions == captions_again
    other, other_captions, _ = render_dataset(WORLD, "train", 24, seed=4)
    assert other.tobytes() != images.tobytes() and other_captions != captions
    # Rendering depends only on (scene, seed): same scene, new seed -> new jitter.
    assert np.array_equal(render(WORLD, scenes[0], 7), render(WORLD, scenes[0], 7))
    assert not np.array_equal(render(WORLD, scenes[0], 7), render(WORLD, scenes[0], 8))


def test_splits_hold_out_colour_shape_pairs():
    train = sample_scenes(WORLD, "train", 2000, seed=0)
    test = sample_scenes(WORLD, "test", 2000, seed=0)
    assert not any(is_held_out(WORLD, o) for sc in train for o in sc.objects)
    assert all(any(is_held_out(WORLD, o) for o in sc.objects) for sc in test)
    assert not {sc.caption() for sc in train} & {sc.caption() for sc in test}
    # Every word still occurs in train; both scene kinds and every relation occur in both splits.
    for scenes in (train, test):
        words = set(" ".join(sc.caption() for sc in scenes).split())
        assert set(WORLD.shapes + WORLD.colors + WORLD.sizes) <= words
        assert {len(sc.objects) for sc in scenes} == {1, 2}
        assert {sc.relation for sc in scenes} == {None, *WORLD.relations}
    with pytest.raises(LaddError, match="split"):
        sample_scenes(WORLD, "validation", 1, seed=0)


def test_every_caption_of_the_grammar_parses_back():
    for scene in all_scenes(WORLD):
        assert parse_caption(WORLD, scene.caption()) == scene
    assert parse_caption(WORLD, "  A Small  red CIRCLE ") == Scene((Obj("circle", "red", "small"),))


@pytest.mark.parametrize(
    "caption",
    ["a huge red circle", "a small red circle next to a large blue square", "a small red", "", "a small red circle."],
)
def test_captions_outside_the_grammar_fail(caption):
    with pytest.raises(LaddError, match="outside the toy grammar"):
        parse_caption(WORLD, caption)


def test_canonical_scene_reads_top_to_bottom_left_to_right():
    below = parse_caption(WORLD, "a small red circle below a large blue square")
    assert below.canonical() == parse_caption(WORLD, "a large blue square above a small red circle")
    right = parse_caption(WORLD, "a small red circle to the right of a large blue square")
    assert right.canonical() == parse_caption(WORLD, "a large blue square to the left of a small red circle")


def test_world_round_trips_json_and_rejects_bad_settings():
    assert ToyWorld.from_dict(json.loads(json.dumps(WORLD.to_dict()))) == WORLD
    with pytest.raises(LaddError, match="palette"):
        ToyWorld(colors=("red",))
    with pytest.raises(LaddError, match="held-out"):
        ToyWorld(held_out=(("pink", "circle"),))
    with pytest.raises(LaddError, match="do not fit"):
        ToyWorld(size_ranges=((0.08, 0.11), (0.2, 0.3)))


@pytest.mark.parametrize("bucket", BUCKETS)
def test_every_scene_fits_a_bucket_with_its_relation_and_size_words_intact(bucket):
    world = WORLD.at_bucket(bucket)
    assert world.shape == bucket and WORLD.at_bucket((64, 64)) == WORLD and world.unit == np.sqrt(48 * 80)
    assert ToyWorld.from_dict(json.loads(json.dumps(world.to_dict()))) == world
    assert render_dataset(world, "test", 3, seed=0, progress=False)[0].shape == (3, *bucket, 3)
    radii = {size: [] for size in world.sizes}
    for i, scene in enumerate(all_scenes(world)):
        placed = place(world, scene, seed=i)
        for p in placed:
            (y, x), r = p.center, p.r
            assert r <= y <= bucket[0] - r and r <= x <= bucket[1] - r, (scene.caption(), p)
            radii[p.obj.size].append(r)
        if len(placed) == 1:  # nothing to fit: the size word's range of the pixel budget's side
            lo, hi = world.size_ranges[world.sizes.index(scene.objects[0].size)]
            assert lo * world.unit <= placed[0].r <= hi * world.unit
            continue
        axis, first_leads = RELATION_GEOMETRY[scene.relation]
        lead, trail = placed if first_leads else placed[::-1]
        gap = trail.center[axis] - lead.center[axis] - lead.r - trail.r
        assert gap > 0 and abs(lead.center[1 - axis] - trail.center[1 - axis]) <= 2 * world.cross_jitter * world.unit
    # Scenes shrunk to fit stay legible: every large object is larger than every small one.
    assert max(radii["small"]) < min(radii["large"])


def test_image_folder_and_prompt_file(tmp_path):
    folder = write_image_folder(WORLD, "test", 5, seed=1, out_dir=tmp_path / "real")
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()]
    images, captions, _ = render_dataset(WORLD, "test", 5, seed=1)
    assert [line["prompt"] for line in lines] == captions
    for line, image in zip(lines, images, strict=True):
        assert np.array_equal(np.asarray(Image.open(folder / line["image"])), image)
    with pytest.raises(LaddError, match="already exists"):
        write_image_folder(WORLD, "test", 5, seed=1, out_dir=folder)

    prompts = write_prompts(WORLD, "train", 7, seed=2, path=tmp_path / "prompts.txt")
    assert prompts.read_text().splitlines() == [sc.caption() for sc in sample_scenes(WORLD, "train", 7, seed=2)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "real"]  # no temporary leftovers


def test_mismatched_captions_differ_in_one_attribute_and_keep_the_split(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for scene in sample_scenes(WORLD, split, 200, seed=3):
            for attribute in ("shape", "color", "size"):
                try:
                    changed = mismatched(WORLD, scene, attribute, rng)
                except LaddError as e:  # a one-object test scene: changing its held-out pair leaves the split
                    assert split == "test" and len(scene.objects) == 1 and "keeps" in str(e)
                    continue
                assert scene_split(WORLD, changed) == split and changed.relation == scene.relation
                diffs = [(a, b) for a, b in zip(scene.objects, changed.objects, strict=True) if a != b]
                assert len(diffs) == 1
                (a, b), other = diffs[0], {"shape", "color", "size"} - {attribute}
                assert getattr(a, attribute) != getattr(b, attribute)
                assert all(getattr(a, k) == getattr(b, k) for k in other)
    with pytest.raises(LaddError, match="choose shape, color or size"):
        mismatched(WORLD, scene, "relation", rng)
    path = write_mismatched_prompts(WORLD, "train", 7, 2, ("shape",), tmp_path / "p.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["prompt"] for line in lines] == write_prompts(
        WORLD, "train", 7, 2, tmp_path / "p.txt"
    ).read_text().split("\n")[:-1]
    assert all(line["mismatch"] != line["prompt"] for line in lines)
    # A mix: each caption changes one of the attributes, drawn per caption; a lone string is refused.
    path = write_mismatched_prompts(WORLD, "train", 60, 2, ("shape", "color"), tmp_path / "mix.jsonl", overwrite=True)
    changed, attributes = set(), ("shape", "color", "size")
    for line in map(json.loads, path.read_text().splitlines()):
        pairs = zip(*(parse_caption(WORLD, line[k]).objects for k in ("prompt", "mismatch")), strict=True)
        (diff,) = [{k for k in attributes if getattr(a, k) != getattr(b, k)} for a, b in pairs if a != b]
        changed |= diff
        assert len(diff) == 1
    assert changed == {"shape", "color"}
    with pytest.raises(LaddError, match="non-empty list of attributes"):
        write_mismatched_prompts(WORLD, "train", 7, 2, "shape", tmp_path / "q.jsonl")


@pytest.fixture(scope="module")
def evaluator():
    from ladd_jax.toy.evaluator import load_evaluator

    return load_evaluator()


@pytest.fixture(scope="module")
def real_test_renders():
    images, captions, _ = render_dataset(WORLD, "test", CHECK_IMAGES, seed=1234, progress=False)
    return images, captions


def test_shipped_evaluator_reads_fresh_renders(evaluator):
    from ladd_jax.toy.evaluator import measure_accuracy

    assert evaluator.world == WORLD
    assert sum(np.size(p) for p in jax.tree.leaves(evaluator.params)) < 250_000  # < 1 MB in float32
    for split, acc in measure_accuracy(evaluator, CHECK_IMAGES // 2, seed=98765).items():
        assert acc["all"] >= 0.98, (split, acc)


@pytest.mark.parametrize("bucket", BUCKETS)
def test_shipped_bucket_evaluators_read_fresh_renders_of_their_bucket(bucket):
    from ladd_jax.toy.evaluator import DEFAULT_DIR, load_bucket_evaluator, measure_accuracy

    evaluator = load_bucket_evaluator(DEFAULT_DIR, WORLD.at_bucket(bucket))
    assert evaluator.world.shape == bucket
    for split, acc in measure_accuracy(evaluator, CHECK_IMAGES // 2, seed=98765).items():
        assert acc["all"] >= 0.98, (split, acc)
    with pytest.raises(LaddError, match=r"toy-evaluator --bucket"):
        evaluator.run(np.zeros((1, 64, 64, 3), np.uint8))


def test_bucket_evaluator_missing_or_of_another_world_is_one_clear_error(tmp_path):
    import shutil

    from ladd_jax.toy.evaluator import DEFAULT_DIR, load_bucket_evaluator

    with pytest.raises(LaddError, match=r"no evaluator for 48x80 images .*BUCKET=48x80"):
        load_bucket_evaluator(tmp_path / "evaluator", WORLD.at_bucket((48, 80)))
    shutil.copytree(DEFAULT_DIR.with_name("evaluator_80x48"), tmp_path / "evaluator_48x80")
    with pytest.raises(LaddError, match="another toy world"):
        load_bucket_evaluator(tmp_path / "evaluator", WORLD.at_bucket((48, 80)))
    assert load_bucket_evaluator(DEFAULT_DIR, WORLD).world == WORLD  # the square world: the folder itself


def blur(images, passes):
    """Repeated 5-point box blur of uint8 images -> floats in [0, 1]."""
    x = images.astype(np.float32) / 255.0
    for _ in range(passes):
        x = (x + np.roll(x, 1, 1) + np.roll(x, -1, 1) + np.roll(x, 1, 2) + np.roll(x, -1, 2)) / 5
    return x


def test_frechet_distance_is_zero_on_itself_and_grows_with_distortion(evaluator, real_test_renders):
    from ladd_jax.toy.metrics import (
        feature_stats,
        features,
        frechet_distance,
        frechet_distance_from_stats,
        reference_stats,
    )

    images, _ = real_test_renders
    real = features(evaluator, images)
    assert abs(frechet_distance(real, real)) < 1e-6 * np.trace(np.cov(real, rowvar=False))
    # Against an independent reference set; clean renders give the estimator's bias at this sample size.
    reference = reference_stats(evaluator, CHECK_IMAGES, seed=99)
    fd = lambda x: frechet_distance_from_stats(feature_stats(features(evaluator, x)), reference)
    clean, blur2, blur4 = fd(images), fd(blur(images, 2)), fd(blur(images, 4))
    shifted = fd(np.clip(images[..., ::-1].astype(np.int16) // 2 + 60, 0, 255).astype(np.uint8))  # R<->B, washed
    assert clean < blur2 < blur4 and 2 * clean < shifted, (clean, blur2, blur4, shifted)


def test_alignment_of_renders_with_their_captions(evaluator, real_test_renders):
    from ladd_jax.toy.metrics import alignment

    images, captions = real_test_renders
    assert alignment(evaluator, images, captions) >= 0.98
    shuffled = list(np.random.default_rng(0).permutation(captions))
    assert alignment(evaluator, images, shuffled) < 0.1
    with pytest.raises(LaddError, match="one caption per image"):
        alignment(evaluator, images, captions[:-1])


def test_measure_reads_fd_alignment_and_attributes_in_one_pass(evaluator, real_test_renders):
    from ladd_jax.toy.evaluate import Measure
    from ladd_jax.toy.metrics import alignment

    images, captions = real_test_renders
    shuffled = list(np.random.default_rng(1).permutation(captions))
    measured = {}
    for name, x, caps in (
        ("clean", images, captions),
        ("shuffled", images, shuffled),
        ("blurred", blur(images, 8), captions),
    ):
        m = Measure(evaluator, "test", caps, reference_images=256, seed=5)(x)
        assert m["alignment"] == alignment(evaluator, x, caps) == m["attributes"]["all"], name
        measured[name] = m["attributes"]
    assert 0.2 < measured["blurred"]["all"] < 0.9  # the equality above was checked away from 0 and 1 too
    assert set(measured["clean"]) == {"count", "axis", "shape", "color", "size", "all", "one_object", "two_objects"}
    shapes = Measure(evaluator, "test", captions, reference_images=256, seed=5)(images)["shapes"]
    assert list(shapes) == [*WORLD.shapes, *WORLD.sizes] and min(v for v in shapes.values() if v is not None) >= 0.97
    assert min(measured["clean"].values()) >= 0.97
    one = [parse_caption(WORLD, c).objects for c in captions]
    share_one = np.mean([len(o) == 1 for o in one])
    whole = measured["shuffled"]
    assert whole["all"] == pytest.approx(share_one * whole["one_object"] + (1 - share_one) * whole["two_objects"])


def test_shape_accuracy_by_the_asked_shape_and_size():
    from ladd_jax.toy.evaluator import accuracy, scene_labels, shape_accuracy_by

    captions = ("a small red cross", "a large blue circle above a small green cross", "a large white square")
    true = scene_labels(WORLD, [parse_caption(WORLD, c) for c in captions])
    predicted = {k: v.copy() for k, v in true.items()}
    (slot,) = [k for k in (0, 1) if true["shape"][1, k] == WORLD.shapes.index("cross")]
    predicted["shape"][1, slot] = WORLD.shapes.index("circle")  # the second prompt's cross drawn as a circle
    by = shape_accuracy_by(predicted, true, WORLD)
    assert by == dict(circle=1.0, square=1.0, triangle=None, cross=0.5, small=0.5, large=1.0)
    assert accuracy(predicted, true)["shape"] == 0.75  # the four objects, one of them wrong


def test_evaluator_trains_saves_and_loads(tmp_path):
    from ladd_jax.toy.evaluator import EvaluatorConfig, TrainConfig, load_evaluator, train_evaluator

    train = TrainConfig(steps=3, batch_size=8, pool_size=16, eval_size=8)
    report = train_evaluator(WORLD, tmp_path / "ev", train, EvaluatorConfig(channels=(8, 8), groups=4, hidden=16))
    assert set(report["accuracy"]) == {"train", "test"}
    loaded = load_evaluator(tmp_path / "ev")
    images = render_dataset(WORLD, "train", 4, seed=0, progress=False)[0]
    assert loaded.run(images)[0].shape == (4, loaded.config.hidden)
    assert json.loads((tmp_path / "ev" / "evaluator.json").read_text())["train"]["steps"] == 3
    with pytest.raises(LaddError, match="not an evaluator folder"):
        load_evaluator(tmp_path)


def test_cli_checks_before_training(tmp_path, capsys):
    assert main(["toy-evaluator", "--out", str(tmp_path), "--steps", "5"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["toy-evaluator", "--out", str(tmp_path / "new"), "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
