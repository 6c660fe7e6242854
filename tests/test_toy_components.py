"""The toy world's SD3 components: the folder loads in SD3Pipeline and in diffusers with equal text embeddings,
the random frozen text encoders tell every pair of grammar captions apart, and VAE training learns.

Tolerance of the encode_prompt comparison: fp32 both sides, max |ours - diffusers| / max |diffusers| <= 1e-5.
"""

import dataclasses
import itertools
import json

import jax
import numpy as np
import pytest

from ladd_jax.cli import main
from ladd_jax.convert.vae import load_vae
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import abstract_params
from ladd_jax.models.vae import (
    AutoencoderKL,
    VAEConfig,
    abstract_vae_params,
    sample_latents,
    scale_latents,
)
from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.toy.components import (
    CLIP_G_WIDTH,
    CLIP_L_WIDTH,
    CLIP_MAX_LENGTH,
    T5_MAX_LENGTH,
    T5_WIDTH,
    random_params,
    read_toy_world,
    toy_mmdit_config,
    toy_vae_config,
    write_toy_sd3_folder,
)
from ladd_jax.toy.vae import (
    calibrate_latent_scale,
    decoder_modules,
    reconstruction_psnr,
    to_model_range,
    train_vae,
    vae_loss,
)
from ladd_jax.toy.world import Obj, Scene, ToyWorld, render_dataset, sample_scenes

TOL = 1e-5
WORLD = ToyWorld()
CAPTIONS = [
    "a small red circle",
    "a large blue square above a small green triangle",
    "a large yellow triangle to the right of a small white square",
    "a small red circle above a large blue square",
    "a small blue circle above a large red square",
]
# Every pair of distinct captions: embeddings at least this far apart, relative to the median pairwise distance
# (measured: pooled 0.053 over all 20.7M pairs of the 6440 captions; CLIP and T5 context tokens 0.26 and 0.32
# among 800 random captions; the smallest pooled distance, 0.41, is 4e4 times the fp32 agreement with diffusers).
MIN_RELATIVE_DISTANCE = {"pooled": 0.02, "clip": 0.1, "t5": 0.1}
CONTEXT_SUBSET = 600  # captions whose context embeddings are compared pairwise (all 6440 would take minutes)


def all_captions(world: ToyWorld) -> list[str]:
    """Every caption the grammar can produce (one and two objects, every relation)."""
    objects = [Obj(shape, color, size) for size in world.sizes for color in world.colors for shape in world.shapes]
    scenes = [Scene((o,)) for o in objects]
    scenes += [Scene((a, b), rel) for a, b in itertools.product(objects, repeat=2) for rel in world.relations]
    return [s.caption() for s in scenes]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # Random VAE and transformer weights drawn without compiling an init (the text is what is tested here).
    vae_config, mmdit_config = toy_vae_config(), toy_mmdit_config(num_layers=1)
    vae_params = random_params(abstract_vae_params(vae_config), 0)
    mmdit_params = random_params(abstract_params(mmdit_config), 1)
    out = tmp_path_factory.mktemp("toy") / "sd3"
    return write_toy_sd3_folder(out, WORLD, vae_config, vae_params, mmdit_config, mmdit_params, seed=0)


@pytest.fixture(scope="module")
def pipe(folder):
    return SD3Pipeline.from_pretrained(folder)


def test_folder_layout(folder, pipe):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["tokenizer_3"][1] == "T5TokenizerFast"
    assert read_toy_world(folder) == WORLD
    assert pipe.shift == 1.0 and pipe.default_size == WORLD.image_size and pipe.clip_max_length == CLIP_MAX_LENGTH
    for sub in ("tokenizer", "tokenizer_2"):  # what the slow CLIPTokenizer and older transformers read
        assert (folder / sub / "vocab.json").is_file() and (folder / sub / "merges.txt").is_file()


def test_every_grammar_word_is_one_token(pipe):
    words = {w for c in all_captions(WORLD) for w in c.split()}
    for tok in (*pipe.tokenizers, pipe.t5_tokenizer):
        specials = 1 + (tok is not pipe.t5_tokenizer)  # CLIP adds <|startoftext|> and <|endoftext|>, T5 only </s>
        for word in words:
            assert len(tok(word).input_ids) == 1 + specials, (word, tok(word).input_ids)
    longest = max(all_captions(WORLD), key=lambda c: len(c.split()))
    assert len(pipe.tokenizers[0](longest).input_ids) <= CLIP_MAX_LENGTH
    assert len(pipe.t5_tokenizer(longest).input_ids) <= T5_MAX_LENGTH


def test_encode_prompt_matches_diffusers(folder, pipe):
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(folder)
    assert type(ref.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and ref.scheduler.config.shift == 1.0
    got = pipe.encode_prompt(CAPTIONS, max_sequence_length=T5_MAX_LENGTH)
    with torch.no_grad():
        want = ref.encode_prompt(CAPTIONS, None, None, max_sequence_length=T5_MAX_LENGTH)
    assert got[0].shape == (len(CAPTIONS), CLIP_MAX_LENGTH + T5_MAX_LENGTH, T5_WIDTH)
    for g, w in zip(got, want, strict=True):
        w = w.numpy()
        assert np.abs(np.asarray(g) - w).max() <= TOL * np.abs(w).max()


def _pairwise_distances(x: np.ndarray) -> np.ndarray:
    """[N, N] Euclidean distances between the rows of x (flattened), the diagonal set to infinity."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    sq = np.square(x).sum(1)
    d = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0))
    np.fill_diagonal(d, np.inf)
    return d


def _colour_swaps(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j): caption j is caption i with the two objects' colours swapped."""
    index = {c: i for i, c in enumerate(captions)}
    pairs = []
    for i, c in enumerate(captions):
        words = c.split()
        if len(words) > 4 and words[2] != words[-2]:
            words[2], words[-2] = words[-2], words[2]
            pairs.append((i, index[" ".join(words)]))
    return tuple(np.array(pairs).T)


@pytest.mark.slow  # 20 s; a measurement of the shipped encoders, which CI's other tests here load and check
def test_random_text_encoders_separate_every_caption_pair(pipe):
    captions = all_captions(WORLD)
    embeds, _, pooled, _ = pipe.encode_prompt(
        captions, max_sequence_length=T5_MAX_LENGTH, do_classifier_free_guidance=False
    )
    embeds, clip_width = np.asarray(embeds), CLIP_L_WIDTH + CLIP_G_WIDTH
    features = {
        "pooled": np.asarray(pooled),
        "clip": embeds[:, :CLIP_MAX_LENGTH, :clip_width],
        "t5": embeds[:, CLIP_MAX_LENGTH:],
    }
    subset = np.random.default_rng(0).choice(len(captions), CONTEXT_SUBSET, replace=False)
    a, b = _colour_swaps(captions)
    assert len(a) > 1000  # "a small red circle above a large blue square" <-> "... blue circle ... red square"
    for name, x in features.items():
        assert 0.3 < x.std() < 3.0, name  # O(1) features: the random weights are scaled for it
        d = _pairwise_distances(x[subset])
        least = MIN_RELATIVE_DISTANCE[name] * np.median(d[np.triu_indices(len(d), 1)])
        nearest = _pairwise_distances(x).min() if name == "pooled" else d.min()  # pooled: every pair of the grammar
        assert nearest > least, name
        swapped = np.linalg.norm((x[a] - x[b]).reshape(len(a), -1), axis=1)
        assert swapped.min() > least, name


def _ridge_probe_accuracy(x: np.ndarray, labels: list[str], train: int) -> float:
    """Held-out accuracy of a least-squares linear classifier (one-hot targets, small ridge) fit on the first
    `train` rows."""
    classes = sorted(set(labels))
    y = np.eye(len(classes))[[classes.index(label) for label in labels]]
    x = np.concatenate([x.reshape(len(x), -1), np.ones((len(x), 1))], axis=1)
    w = np.linalg.solve(x[:train].T @ x[:train] + 1e-2 * np.eye(x.shape[1]), x[:train].T @ y[:train])
    return float((np.argmax(x[train:] @ w, 1) == np.argmax(y[train:], 1)).mean())


@pytest.mark.slow  # 43 s; a measurement of the shipped encoders, which CI's other tests here load and check
def test_a_linear_probe_reads_every_attribute_from_the_frozen_text_features(pipe):
    """What the teacher's MMDiT must read from its random frozen encoders is there, linearly: colour, shape and
    size of both objects, their number and relation, from the context tokens and from the pooled vector alone
    (measured on the shipped encoders: 100% held-out for every attribute)."""
    scenes = sample_scenes(WORLD, "train", 1500, 0)
    captions = [s.caption() for s in scenes]
    embeds, _, pooled, _ = pipe.encode_prompt(
        captions, max_sequence_length=T5_MAX_LENGTH, do_classifier_free_guidance=False
    )
    attributes = {
        "count": lambda s: len(s.objects),
        "relation": lambda s: s.relation or "-",
        **{
            f"{a} {i}": (lambda s, a=a, i=i: getattr(s.objects[i], a) if i < len(s.objects) else "-")
            for a in ("color", "shape", "size")
            for i in (0, 1)
        },
    }
    for name, attribute in attributes.items():
        labels = [str(attribute(s)) for s in scenes]
        for what, x in (("context", np.asarray(embeds)), ("pooled", np.asarray(pooled))):
            assert _ridge_probe_accuracy(x, labels, train=1000) >= 0.98, (name, what)


TINY_VAE = VAEConfig(
    latent_channels=4,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    use_quant_conv=False,
    use_post_quant_conv=False,
    mid_block_add_attention=False,
)


def test_vae_training_reduces_the_loss_and_calibrates():
    images, _, _ = render_dataset(dataclasses.replace(WORLD, image_size=32), "train", 16, seed=0, progress=False)
    init = random_params(abstract_vae_params(TINY_VAE), 0)
    batch = to_model_range(images)
    loss = jax.jit(lambda params: vae_loss(params, TINY_VAE, batch, jax.random.key(1), 1e-4)[0])

    before, psnr_before = loss(init), reconstruction_psnr(TINY_VAE, init, images)
    params = train_vae(TINY_VAE, images, steps=20, batch=8, lr=3e-3, seed=0, progress=False, init_params=init)
    assert loss(params) < 0.5 * before
    assert reconstruction_psnr(TINY_VAE, params, images) > psnr_before + 3.0
    assert loss(init) == before  # the given params were not consumed (donated) by training

    config = calibrate_latent_scale(TINY_VAE, params, images, seed=0)
    encode = jax.jit(lambda p, x: AutoencoderKL(config).apply({"params": p}, x, method=AutoencoderKL.encode))
    z = scale_latents(sample_latents(*encode(params, batch), jax.random.key(7)), config)
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1.0) < 0.1


def test_decoder_only_fine_tune_keeps_the_encoder_and_improves_reconstruction():
    images, _, _ = render_dataset(dataclasses.replace(WORLD, image_size=32), "train", 16, seed=0, progress=False)
    init = random_params(abstract_vae_params(TINY_VAE), 0)
    params = train_vae(
        TINY_VAE, images, steps=20, batch=8, lr=3e-3, progress=False, init_params=init, trainable=("decoder",)
    )
    assert decoder_modules(TINY_VAE) == ("decoder",)  # no post_quant_conv in this config
    assert set(params) == set(init)
    same = jax.tree.map(np.array_equal, params["encoder"], init["encoder"])
    assert all(jax.tree.leaves(same))  # the latent space a diffusion model learned stays exactly where it was
    assert not np.array_equal(params["decoder"]["conv_out"]["kernel"], init["decoder"]["conv_out"]["kernel"])
    assert reconstruction_psnr(TINY_VAE, params, images) > reconstruction_psnr(TINY_VAE, init, images) + 1.0
    with pytest.raises(LaddError, match="trainable must name"):
        train_vae(TINY_VAE, images, steps=1, batch=2, progress=False, init_params=init, trainable=("post_quant_conv",))


def test_vae_training_rejects_bad_images():
    with pytest.raises(LaddError, match="uint8"):
        train_vae(TINY_VAE, np.zeros((4, 32, 32, 3), np.float32), steps=1, batch=2, progress=False)
    with pytest.raises(LaddError, match="multiples"):
        train_vae(TINY_VAE, np.zeros((4, 31, 31, 3), np.uint8), steps=1, batch=2, progress=False)
    init = random_params(abstract_vae_params(TINY_VAE), 0)
    with pytest.raises(LaddError, match="ran out"):
        train_vae(TINY_VAE, iter([]), steps=2, batch=2, progress=False, init_params=init)


def test_folder_rejects_mismatched_components(tmp_path):
    vae_config = toy_vae_config()
    bad = dataclasses.replace(toy_mmdit_config(num_layers=1), joint_attention_dim=64)
    with pytest.raises(LaddError, match="joint_attention_dim"):
        write_toy_sd3_folder(tmp_path / "sd3", WORLD, vae_config, {}, bad)
    assert not (tmp_path / "sd3").exists()


def test_cli_checks_arguments_before_work(tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    assert main(["toy-components", "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["toy-components", "--out", str(tmp_path / "new"), "--vae-steps", "0"]) == 2
    assert "--vae-steps" in capsys.readouterr().err


def test_vae_decoder_cli_checks_arguments_before_work(folder, tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    assert main(["toy-vae-decoder", "--model", str(folder), "--out", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["toy-vae-decoder", "--model", str(folder), "--out", str(tmp_path / "new"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["toy-vae-decoder", "--model", str(tmp_path), "--out", str(tmp_path / "new")]) == 2
    assert "toy_world.json" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_vae_decoder_cli_writes_a_vae_with_the_folders_encoder(folder, tmp_path):
    out = tmp_path / "vae"
    args = ["--steps", "2", "--batch", "2", "--train-images", "4", "--eval-images", "2"]
    assert main(["toy-vae-decoder", "--model", str(folder), "--out", str(out), *args]) == 0
    (config, params), (old_config, old_params) = load_vae(out), load_vae(folder / "vae")
    assert config == old_config
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, params["encoder"], old_params["encoder"])))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, params["decoder"], old_params["decoder"])))


@pytest.mark.slow
def test_cli_builds_a_loadable_folder(tmp_path):
    out = tmp_path / "sd3"
    args = ["--vae-steps", "3", "--train-images", "8", "--eval-images", "4", "--teacher-layers", "1"]
    assert main(["toy-components", "--out", str(out), *args]) == 0
    pipe = SD3Pipeline.from_pretrained(out)
    images = pipe(CAPTIONS[:2], num_inference_steps=2, guidance_scale=2.0, max_sequence_length=T5_MAX_LENGTH)
    assert images.shape == (2, WORLD.image_size, WORLD.image_size, 3)
    assert json.loads((out / "toy_world.json").read_text())["vae"]["steps"] == 3
