"""SD3Pipeline against diffusers' StableDiffusion3Pipeline on a tiny random pipeline folder, and `ladd-jax sample`.

Tolerance: fp32 on both sides, max |ours - diffusers| / max |diffusers| <= 1e-4 for embeddings and latents
(measured: ~2e-6), and max abs error <= 1e-4 for the [0, 1] images (measured: ~5e-6).
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cpu_devices import cpu_env
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax.cli import main
from ladd_jax.errors import LaddError
from ladd_jax.pipeline import SD3Pipeline

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
LONG = ", ".join(["a photo of a cat sitting on the red sofa in the morning light"] * 8)  # > 77 CLIP tokens
PROMPTS = ["a photo of a cat", LONG]
NEGATIVE = ["blurry", "a painting of a dog in the snow"]
MAX_SEQ = 40  # T5 tokens: LONG is truncated here too
H, W = 32, 48  # the tiny VAE downsamples 4x: 8x12 latents, 4x6 patches


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "pipe", seed=0)


@pytest.fixture(scope="module")
def pipes(folder):
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    ref.set_progress_bar_config(disable=True)
    return SD3Pipeline.from_pretrained(folder), ref


def torch_latents(seed: int = 0, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 16, H // 4, W // 4), dtype=np.float32)


@pytest.mark.parametrize("negative, cfg", [(NEGATIVE, True), (None, True), (None, False)])
def test_encode_prompt_matches_diffusers(pipes, negative, cfg):
    ours, ref = pipes
    assert len(ref.tokenizer(LONG).input_ids) > 77 and len(ref.tokenizer_3(LONG).input_ids) > MAX_SEQ
    got = ours.encode_prompt(PROMPTS, negative, max_sequence_length=MAX_SEQ, do_classifier_free_guidance=cfg)
    with torch.no_grad():
        want = ref.encode_prompt(
            PROMPTS, None, None, negative_prompt=negative, do_classifier_free_guidance=cfg, max_sequence_length=MAX_SEQ
        )
    assert got[0].shape == (2, 77 + MAX_SEQ, 96) and got[2].shape == (2, 32 + 48)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert rel_err(g, w.numpy()) <= TOL


def test_encode_prompt_without_t5(tmp_path):
    folder = write_tiny_sd3_folder(tmp_path / "pipe", seed=1, with_t5=False)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None]
    ours = SD3Pipeline.from_pretrained(folder)
    assert ours.t5_config is None
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    got = ours.encode_prompt(PROMPTS, NEGATIVE, max_sequence_length=16)
    with torch.no_grad():
        want = ref.encode_prompt(PROMPTS, None, None, negative_prompt=NEGATIVE, max_sequence_length=16)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w.numpy()) <= TOL
    assert not np.asarray(got[0][:, 77:]).any()  # T5's tokens are zeros


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_pipeline_matches_diffusers(pipes, guidance):
    ours, ref = pipes
    lat = torch_latents()
    kwargs = dict(num_inference_steps=3, guidance_scale=guidance, height=H, width=W, max_sequence_length=MAX_SEQ)
    steps = []
    got = ours(
        PROMPTS,
        NEGATIVE,
        latents=lat.transpose(0, 2, 3, 1),
        output_type="latent",
        progress=lambda i, n: steps.append((i, n)),
        **kwargs,
    )
    assert steps == [(0, 3), (1, 3), (2, 3)]
    with torch.no_grad():
        want = ref(PROMPTS, negative_prompt=NEGATIVE, latents=torch.from_numpy(lat), output_type="latent", **kwargs)
    want = want.images.permute(0, 2, 3, 1).numpy()
    assert got.shape == (2, H // 4, W // 4, 16)
    assert rel_err(got, want) <= TOL
    assert rel_err(got, lat.transpose(0, 2, 3, 1)) > 0.1  # the sampler did move the latents

    images = ours(PROMPTS, NEGATIVE, latents=lat.transpose(0, 2, 3, 1), **kwargs)
    with torch.no_grad():
        ref_images = ref(PROMPTS, negative_prompt=NEGATIVE, latents=torch.from_numpy(lat), output_type="np", **kwargs)
    assert images.shape == (2, H, W, 3) and images.dtype == np.float32
    assert np.abs(images - ref_images.images).max() <= TOL
    assert 0.2 < ((images > 0) & (images < 1)).mean()  # not all clipped: the comparison means something


def test_initial_latents_per_image_seeds(pipes):
    ours, _ = pipes
    both = np.asarray(ours.initial_latents(2, H, W, seed=[3, 4]))
    assert both.shape == (2, H // 4, W // 4, 16)
    np.testing.assert_array_equal(both[1], np.asarray(ours.initial_latents(1, H, W, seed=[4]))[0])
    np.testing.assert_array_equal(ours.initial_latents(2, H, W, seed=7), ours.initial_latents(2, H, W, seed=7))
    assert not np.allclose(both[0], both[1])


def _copy_with(folder, tmp_path, drop=(), index_patch=None, scheduler_patch=None):
    """A pipeline folder of symlinks to `folder`'s components, minus `drop`, with patched JSON files."""
    out = tmp_path / "pipe"
    out.mkdir()
    for sub in folder.iterdir():
        if sub.is_dir() and sub.name not in drop and not (scheduler_patch and sub.name == "scheduler"):
            os.symlink(sub, out / sub.name)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(index_patch or {})
    (out / "model_index.json").write_text(json.dumps(index))
    if scheduler_patch:
        (out / "scheduler").mkdir()
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        config.update(scheduler_patch)
        (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    return out


def test_missing_component_folder_is_named(folder, tmp_path):
    with pytest.raises(LaddError, match="'vae'.*missing"):
        SD3Pipeline.from_pretrained(_copy_with(folder, tmp_path, drop=("vae",)))


def test_unknown_class_is_named(folder, tmp_path):
    bad = _copy_with(folder, tmp_path, index_patch={"transformer": ["diffusers", "FluxTransformer2DModel"]})
    with pytest.raises(LaddError, match="FluxTransformer2DModel"):
        SD3Pipeline.from_pretrained(bad)


def test_unsupported_scheduler_option(folder, tmp_path):
    with pytest.raises(LaddError, match="use_dynamic_shifting"):
        SD3Pipeline.from_pretrained(_copy_with(folder, tmp_path, scheduler_patch={"use_dynamic_shifting": True}))


def test_bad_inputs(pipes):
    ours, _ = pipes
    with pytest.raises(LaddError, match="multiples of 8"):
        ours(PROMPTS, height=36, width=W)
    with pytest.raises(LaddError, match="latents have shape"):
        ours(PROMPTS, height=H, width=W, latents=np.zeros((2, 4, 4, 16), np.float32))
    with pytest.raises(LaddError, match="negative prompts"):
        ours.encode_prompt(PROMPTS, ["a", "b", "c"])


def test_cli_sample_writes_grid(folder, pipes, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "grids" / "grid.png"
    argv = ["sample", "--model", str(folder), "--prompt", PROMPTS[0], "--prompt", "a dog", "--seed", "5"]
    argv += ["--seeds", "2", "--steps", "2", "--cfg", "4", "--height", str(H), "--width", str(W)]
    argv += ["--max-sequence-length", str(MAX_SEQ), "--out", str(out)]
    assert main(argv) == 0
    assert "s per image" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * H, 2 * W, 3)
    # Row 1 (second prompt), column 1 (seed 6) is that image sampled alone.
    alone = pipes[0](
        ["a dog"], num_inference_steps=2, guidance_scale=4, height=H, width=W, seed=[6], max_sequence_length=MAX_SEQ
    )
    cell = grid[H:, W:].astype(np.float32) / 255
    assert np.abs(cell - alone[0]).max() <= 1 / 255 + 1e-6

    assert main(["sample", "--model", str(folder), "--prompt", "x", "--height", "36", "--out", str(out)]) == 2
    assert "multiples of 8" in capsys.readouterr().err


def test_batch_sharded_over_devices(folder, pipes):
    """Two host devices: the batch is split along "data" and the result equals the one-device run."""
    lat = torch_latents(seed=3).transpose(0, 2, 3, 1)
    want = pipes[0](PROMPTS, NEGATIVE, 2, 5.0, H, W, latents=lat, max_sequence_length=MAX_SEQ, output_type="latent")
    script = textwrap.dedent(
        f"""
        import numpy as np, jax
        from ladd_jax.pipeline import SD3Pipeline
        assert jax.device_count() == 2
        pipe = SD3Pipeline.from_pretrained({str(folder)!r})
        x = pipe._shard(np.zeros((4, 3), np.float32))
        assert len({{s.device for s in x.addressable_shards}}) == 2 and x.addressable_shards[0].data.shape == (2, 3)
        lat = np.load({str(folder / "lat.npy")!r})
        out = pipe({PROMPTS!r}, {NEGATIVE!r}, 2, 5.0, {H}, {W}, latents=lat, max_sequence_length={MAX_SEQ},
                   output_type="latent")
        np.save({str(folder / "out.npy")!r}, out)
        """
    )
    np.save(folder / "lat.npy", lat)
    env = cpu_env(2)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert rel_err(np.load(folder / "out.npy"), want) <= TOL
    for name in ("lat.npy", "out.npy"):
        (folder / name).unlink()


def test_write_tiny_folder_is_a_diffusers_pipeline(folder):
    # The layout from_pretrained reads; the temporary tokenizer sources are gone.
    assert {p.name for p in folder.iterdir() if p.is_dir()} == {
        "transformer",
        "vae",
        "text_encoder",
        "text_encoder_2",
        "text_encoder_3",
        "tokenizer",
        "tokenizer_2",
        "tokenizer_3",
        "scheduler",
    }
