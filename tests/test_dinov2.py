"""Flax DINOv2 against transformers' `Dinov2Model` on tiny random models, and its two-way converter."""

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_fixtures import randomize_

from ladd_jax.convert import dinov2 as convert
from ladd_jax.convert.safetensors_io import read_folder
from ladd_jax.errors import LaddError
from ladd_jax.models.dinov2 import Dinov2, Dinov2Config, bicubic_resize_matrix, interpolate_pos_encoding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-4  # fp32 parity: max abs error / max abs reference
BF16_TOL = 0.05  # bf16 compute vs fp32 on the same params, same measure
RESAMPLE_TOL = 2e-6  # our bicubic vs torch's, same measure: fp32 rounding (torch fuses some multiply-adds)

TINY = dict(hidden_size=32, num_attention_heads=4, image_size=28, patch_size=7)  # a 4 x 4 position grid
VARIANTS = {
    "gelu": dict(num_hidden_layers=2),
    # ViT-g's FFN (hidden 128 -> 88 after the two-thirds rounding), no q/k/v biases, no mask token.
    "swiglu-nobias-nomask": dict(num_hidden_layers=3, use_swiglu_ffn=True, qkv_bias=False, use_mask_token=False),
}
# Pixel sizes: the native 4 x 4 grid (transformers' early return), then resampled non-square grids, one growing
# both sides (5 x 7) and one shrinking the rows (3 x 9).
SIZES = [(28, 28), (35, 49), (21, 63)]


def _rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _hf_dinov2(variant: str):
    model = transformers.Dinov2Model(transformers.Dinov2Config(**TINY, **VARIANTS[variant])).eval()
    randomize_(model, seed=len(variant))
    gen = torch.Generator().manual_seed(len(variant))
    with torch.no_grad():  # O(1) position embeddings and layer scales, so resampling and every block count
        model.embeddings.position_embeddings.normal_(generator=gen)
        for layer in model.encoder.layer:
            for scale in (layer.layer_scale1.lambda1, layer.layer_scale2.lambda1):
                scale.uniform_(0.5, 1.5, generator=gen)
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def dinov2_folder(request, tmp_path_factory):
    model = _hf_dinov2(request.param)
    folder = tmp_path_factory.mktemp(f"dinov2-{request.param}")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.fixture(scope="module")
def loaded(dinov2_folder):
    """(config, params) as load_dinov2 reads the fixture's folder."""
    return convert.load_dinov2(dinov2_folder[1])


def _pixels(height: int, width: int, batch: int = 2) -> np.ndarray:
    """NCHW, as transformers' image processor gives them."""
    return np.random.default_rng(height * width).standard_normal((batch, 3, height, width), dtype=np.float32)


def _nhwc(pixels: np.ndarray) -> jax.Array:
    return jnp.asarray(pixels.transpose(0, 2, 3, 1))


def _assert_same_state_dicts(ours, ref) -> None:
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _assert_clean_load(info) -> None:
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), (key, info[key])


# ---------------------------------------------------------------- position embeddings


@pytest.mark.parametrize("in_hw,out_hw", [((4, 4), (5, 7)), ((4, 4), (3, 9)), ((37, 37), (16, 23)), ((3, 5), (11, 2))])
def test_bicubic_resize_matches_torch(in_hw, out_hw):
    grid = np.random.default_rng(0).standard_normal((1, 3, *in_hw), dtype=np.float32)
    ref = torch.nn.functional.interpolate(torch.tensor(grid), size=out_hw, mode="bicubic", align_corners=False)
    rows, cols = (bicubic_resize_matrix(i, o) for i, o in zip(in_hw, out_hw, strict=True))
    assert _rel_err(np.einsum("hi,cij,wj->chw", rows, grid[0], cols), ref[0]) <= RESAMPLE_TOL


def test_position_embeddings_match_transformers(dinov2_folder, loaded):
    hf_model, _ = dinov2_folder
    config, params = loaded
    pos = params["embeddings"]["position_embeddings"]
    p = config.patch_size
    for height, width in [*SIZES, (56, 56)]:
        h, w = height // p, width // p
        with torch.no_grad():
            ref = hf_model.embeddings.interpolate_pos_encoding(
                torch.zeros(1, 1 + h * w, config.hidden_size), height, width
            )
        ours = interpolate_pos_encoding(jnp.asarray(pos), h, w)
        assert ours.shape == (1, 1 + h * w, config.hidden_size)
        assert _rel_err(ours, ref.detach()) <= RESAMPLE_TOL, (height, width)  # the native size returns the param


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_transformers(dinov2_folder, loaded, size):
    hf_model, _ = dinov2_folder
    config, params = loaded
    n = config.num_hidden_layers
    pixels = _pixels(*size)
    with torch.no_grad():
        ref = hf_model(torch.tensor(pixels), output_hidden_states=True)
    layers = (*range(n + 1), -1, -(n + 1))
    apply = jax.jit(lambda p, x: Dinov2(config).apply({"params": p}, x, layers=layers))
    last, hidden = apply(params, _nhwc(pixels))
    grid = (size[0] // config.patch_size) * (size[1] // config.patch_size)
    assert last.shape == ref.last_hidden_state.shape == (2, 1 + grid, config.hidden_size)
    assert _rel_err(last, ref.last_hidden_state) <= TOL
    # The convention: layers index transformers' hidden_states (0 = embeddings, k = output of encoder.layer.{k-1}).
    assert len(ref.hidden_states) == n + 1 and len(hidden) == len(layers)
    for k, ours in zip(layers, hidden, strict=True):
        assert _rel_err(ours, ref.hidden_states[k]) <= TOL, k


def test_bf16_compute_close_to_fp32(loaded):
    config, params = loaded
    pixels = _nhwc(_pixels(35, 49))
    fp32 = jax.jit(Dinov2(config).apply)({"params": params}, pixels)
    bf16 = jax.jit(Dinov2(dataclasses.replace(config, dtype="bfloat16")).apply)({"params": params}, pixels)
    assert bf16.dtype == jnp.bfloat16
    assert _rel_err(bf16.astype(jnp.float32), fp32) <= BF16_TOL


def test_mask_token_matches_transformers(dinov2_folder, loaded):
    hf_model, _ = dinov2_folder
    config, params = loaded
    pixels = _pixels(config.image_size, config.image_size)
    mask = np.random.default_rng(3).random((2, config.position_grid**2)) < 0.5
    # Also the call without `layers`, returning the last hidden state alone.
    apply = lambda: jax.jit(Dinov2(config).apply)({"params": params}, _nhwc(pixels), bool_masked_pos=jnp.asarray(mask))
    if not config.use_mask_token:
        with pytest.raises(LaddError, match="use_mask_token=False"):
            apply()
        return
    with torch.no_grad():
        ref = hf_model(torch.tensor(pixels), bool_masked_pos=torch.tensor(mask)).last_hidden_state
    assert _rel_err(apply(), ref) <= TOL


# ---------------------------------------------------------------- converter


def test_round_trip_loads_identically_in_transformers(dinov2_folder, loaded, tmp_path):
    hf_model, folder = dinov2_folder
    config, params = loaded
    out = tmp_path / "exported"
    convert.save_dinov2(config, jax.tree_util.tree_map(jnp.asarray, params), out)  # device arrays, as after training
    # The on-disk (original DINOv2) names that save_pretrained writes, mask token included.
    assert read_folder(out, "model").keys() == read_folder(folder, "model").keys()
    reloaded, info = transformers.Dinov2Model.from_pretrained(out, output_loading_info=True)
    _assert_clean_load(info)
    _assert_same_state_dicts(reloaded, hf_model)
    pixels = torch.tensor(_pixels(35, 49))
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).last_hidden_state, hf_model(pixels).last_hidden_state)
    # And back: the exported folder loads to the same config and params.
    config2, params2 = convert.load_dinov2(out)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    with pytest.raises(LaddError, match="already exists"):
        convert.save_dinov2(config, params, out)
    convert.save_dinov2(config, params, out, dtype="bfloat16", overwrite=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    half = transformers.Dinov2Model.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    for k, v in hf_model.state_dict().items():
        assert torch.equal(half[k], v.to(torch.bfloat16)), k


def test_save_rejects_params_of_another_config(loaded, tmp_path):
    config, params = loaded
    other = dataclasses.replace(config, use_swiglu_ffn=not config.use_swiglu_ffn)
    with pytest.raises(LaddError, match="layer_0/mlp/"):
        convert.save_dinov2(other, params, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_wrong_folders_are_named(dinov2_folder, tmp_path):
    hf_model, folder = dinov2_folder
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text(json.dumps({"architectures": ["CLIPTextModelWithProjection"]}))
    with pytest.raises(LaddError, match="CLIPTextModelWithProjection.*Dinov2Model"):
        convert.load_dinov2(clip)
    with pytest.raises(LaddError, match="no config.json"):
        convert.load_dinov2(tmp_path / "nowhere")
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights)
    with pytest.raises(LaddError, match="neither model.safetensors"):
        convert.load_dinov2(no_weights)
    key = "encoder.layer.1.attention.output.dense.weight"  # as on disk (transformers 5 calls it ...o_proj...)
    dropped = tmp_path / "dropped"
    dropped.mkdir()
    shutil.copy(folder / "config.json", dropped)
    kept = {k: torch.from_numpy(t.load()) for k, t in read_folder(folder, "model").items() if k != key}
    safetensors_torch.save_file(kept, dropped / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LaddError, match=f"missing:\n +{key.replace('.', '[.]')}"):
        convert.load_dinov2(dropped)


# ---------------------------------------------------------------- configs, inputs


def test_config_round_trips_and_vit_g_param_count():
    giant = Dinov2Config(
        hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, image_size=518, use_swiglu_ffn=True
    )
    hf = transformers.Dinov2Config.from_dict(giant.to_hf())
    assert Dinov2Config.from_hf(hf.to_dict()) == giant
    assert giant.ffn_hidden_size == 4096  # dinov2-giant's weights_out is [1536, 4096]
    with torch.device("meta"):
        ref = transformers.Dinov2Model(hf)
    ours = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(convert.abstract_params(giant)))
    assert ours == sum(p.numel() for p in ref.parameters())
    with pytest.raises(LaddError, match="image_size"):
        Dinov2Config(image_size=[224, 224])
    with pytest.raises(LaddError, match="dtype"):
        Dinov2Config(dtype="int8")


def test_bad_inputs_are_named(loaded):
    config, params = loaded
    apply = lambda x, **kw: Dinov2(config).apply({"params": params}, x, **kw)
    with pytest.raises(LaddError, match="not a multiple of the patch size"):
        apply(jnp.zeros((1, 30, 28, 3)))
    with pytest.raises(LaddError, match="NHWC"):
        apply(jnp.zeros((1, 3, 28, 28)))  # NCHW, as the image processor gives them
    n = config.num_hidden_layers
    with pytest.raises(LaddError, match=f"layers \\[{n + 1}\\] are outside"):
        apply(jnp.zeros((1, 28, 28, 3)), layers=(0, n + 1))
