"""export_student: the exported folder loads in diffusers and in SD3Pipeline, and both give the same 1-step output.

Tolerance: fp32 on both sides, max |ours - diffusers| / max |diffusers| <= 1e-5 on the 1-step latents.
"""

from __future__ import annotations

import dataclasses
import filecmp
import json

import jax
import numpy as np
import pytest
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax.convert.mmdit import checkpoint_dtype, load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.export import export_student
from ladd_jax.pipeline import SD3Pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-5
PROMPTS = ["a red circle", "two blue squares on the left"]
H, W = 32, 48  # the tiny VAE downsamples 4x: 8x12 latents
MAX_SEQ = 16


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return write_tiny_sd3_folder(tmp_path_factory.mktemp("teacher") / "pipe", seed=0)


def _perturbed(params, seed: int = 0, scale: float = 0.05):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(tree, [x + scale * rng.standard_normal(x.shape, np.float32) for x in leaves])


def _student(teacher, which: str = "same_size"):
    """The teacher perturbed (a distilled student of the same size), or a 1-block student made of the teacher's
    last block (the one with the pre-only context stream) and its embeddings, perturbed."""
    config, params = load_mmdit(teacher / "transformer")
    if which == "same_size":
        return config, _perturbed(params)
    assert [name for name, _, _ in config.block_groups()] == ["blocks_0_1", "blocks_1_2"]
    params = {k: v for k, v in params.items() if not k.startswith("blocks_")} | {"blocks_0_1": params["blocks_1_2"]}
    return dataclasses.replace(config, num_layers=1), _perturbed(params)


def _one_step(folder, latents_nhwc):
    """1-step latents, no CFG, from the same initial latents: (ladd_jax, diffusers), both NHWC."""
    kwargs = dict(num_inference_steps=1, guidance_scale=1.0, height=H, width=W, max_sequence_length=MAX_SEQ)
    ours = SD3Pipeline.from_pretrained(folder)(PROMPTS, latents=latents_nhwc, output_type="latent", **kwargs)
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    with torch.no_grad():
        nchw = torch.from_numpy(np.ascontiguousarray(latents_nhwc.transpose(0, 3, 1, 2)))
        want = ref(PROMPTS, latents=nchw, output_type="latent", **kwargs).images
    return ours, want.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("which", ["same_size", "fewer_layers"])
def test_export_loads_in_diffusers_and_matches(teacher, tmp_path, which):
    config, params = _student(teacher, which)
    out = export_student(teacher, config, params, tmp_path / "student")

    written = json.loads((out / "transformer" / "config.json").read_text())
    assert written["num_layers"] == config.num_layers
    _, loaded = load_mmdit(out / "transformer")
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)  # the student's params, not the teacher's
    # Every other component is the teacher's, byte for byte.
    for f in teacher.rglob("*"):
        rel = f.relative_to(teacher)
        if f.is_file() and rel.parts[0] != "transformer":
            assert filecmp.cmp(f, out / rel, shallow=False), rel

    latents = np.random.default_rng(0).standard_normal((len(PROMPTS), H // 4, W // 4, 16), dtype=np.float32)
    ours, want = _one_step(out, latents)
    assert ours.shape == want.shape == latents.shape
    err = float(np.abs(ours - want).max() / np.abs(want).max())
    assert err <= TOL, err


def test_existing_destination_is_left_intact(teacher, tmp_path):
    config, params = _student(teacher)
    out = tmp_path / "student"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(LaddError, match="already exists"):
        export_student(teacher, config, params, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind

    export_student(teacher, config, params, out, dtype="bfloat16", overwrite=True)
    assert not (out / "keep.txt").exists()
    assert checkpoint_dtype(out / "transformer") == "bfloat16"


def test_bad_inputs(teacher, tmp_path):
    config, params = _student(teacher)
    wrong = dataclasses.replace(config, pooled_projection_dim=config.pooled_projection_dim + 1)
    with pytest.raises(LaddError, match="pooled_projection_dim"):
        export_student(teacher, wrong, params, tmp_path / "a")
    with pytest.raises(LaddError, match="teacher folder"):
        export_student(tmp_path / "nowhere", config, params, tmp_path / "b")
    with pytest.raises(LaddError, match="teacher folder itself"):
        export_student(teacher, config, params, teacher, overwrite=True)
    assert not list(tmp_path.iterdir())


def test_a_workdir_without_checkpoints_is_named(tmp_path):
    from ladd_jax.train.checkpoint import read_meta

    with pytest.raises(LaddError, match="has no checkpoints/ folder"):
        read_meta(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(LaddError, match="holds no checkpoint yet: a run saves one every config.checkpoint_every"):
        read_meta(tmp_path)
