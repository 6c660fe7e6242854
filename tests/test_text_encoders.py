"""Flax CLIP and T5 text encoders against transformers on tiny random models, and their two-way converters."""

import copy
import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_fixtures import randomize_

from ladd_jax.convert import clip as convert_clip
from ladd_jax.convert import t5 as convert_t5
from ladd_jax.errors import LaddError
from ladd_jax.models.clip import CLIPTextConfig, CLIPTextEncoder
from ladd_jax.models.t5 import T5Config, T5Encoder, relative_position_buckets

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TOL = 1e-4  # fp32 parity: max abs error / max abs reference
# bf16 compute vs fp32 on the same params, same measure: within 5% of the output's scale, or within 1.5x the
# error of transformers' own bf16 model where that is larger (random tiny T5s amplify rounding: ~0.2 there).
BF16_TOL, BF16_VS_TORCH = 0.05, 1.5

CLIP_VARIANTS = {
    # SD3's CLIP-L flavour: quick_gelu, legacy eos_token_id 2 (pool at the argmax of the ids).
    "quick_gelu-eos2": dict(hidden_act="quick_gelu", eos_token_id=2, num_hidden_layers=3),
    # SD3's bigG flavour (exact gelu) with a modern eos id (pool at the first eos).
    "gelu-eos7": dict(hidden_act="gelu", eos_token_id=7, num_hidden_layers=2),
}
T5_VARIANTS = {"gated-gelu": 3, "relu": 2}  # feed_forward_proj -> num_layers


def _rel_err(ours, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max())


def _hf_clip(variant: str):
    config = transformers.CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        projection_dim=24,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=0,
        pad_token_id=1,
        **CLIP_VARIANTS[variant],
    )
    model = transformers.CLIPTextModelWithProjection(config).eval()
    randomize_(model, seed=len(variant))
    return model


def _hf_t5(feed_forward_proj: str):
    config = transformers.T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=T5_VARIANTS[feed_forward_proj],
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj=feed_forward_proj,
    )
    model = transformers.T5EncoderModel(config).eval()
    randomize_(model, seed=len(feed_forward_proj))
    return model


@pytest.fixture(scope="module", params=list(CLIP_VARIANTS))
def clip_folder(request, tmp_path_factory):
    model = _hf_clip(request.param)
    folder = tmp_path_factory.mktemp(f"clip-{request.param}")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


@pytest.fixture(scope="module", params=list(T5_VARIANTS))
def t5_folder(request, tmp_path_factory):
    model = _hf_t5(request.param)
    folder = tmp_path_factory.mktemp(f"t5-{request.param}")
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def _clip_ids(eos: int, length: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(8, 990, size=(4, length))
    ids[0, 5:] = 999  # the highest id as eot padding: the legacy rule takes its first position
    ids[1, [2, 6]] = eos  # eos twice: the modern rule takes the first
    ids[2, 3] = 2  # id 2 mid-sequence: only the legacy config's eos, never the highest id
    ids[2, length - 1] = eos
    ids[3, :] = rng.integers(8, 990, size=length)  # no eos at all: the modern rule falls back to 0
    return ids


def _assert_same_state_dicts(ours, ref) -> None:
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _assert_clean_load(info) -> None:
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not info.get(key), (key, info[key])


# ---------------------------------------------------------------- CLIP


@pytest.mark.parametrize("length", [16, 11])
def test_clip_matches_transformers(clip_folder, length):
    hf_model, folder = clip_folder
    config, params = convert_clip.load_clip(folder)
    assert config.to_hf()["hidden_act"] == hf_model.config.hidden_act
    ids = _clip_ids(config.eos_token_id, length)
    with torch.no_grad():
        ref = hf_model(torch.tensor(ids), output_hidden_states=True)
    out = jax.jit(CLIPTextEncoder(config).apply)({"params": params}, jnp.asarray(ids, jnp.int32))
    assert len(out.hidden_states) == len(ref.hidden_states) == config.num_hidden_layers + 1
    for ours, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        assert _rel_err(ours, theirs) <= TOL
    assert _rel_err(out.hidden_states[-2], ref.hidden_states[-2]) <= TOL  # what SD3 conditions on
    assert _rel_err(out.last_hidden_state, ref.last_hidden_state) <= TOL
    assert _rel_err(out.text_embeds, ref.text_embeds) <= TOL
    assert out.text_embeds.shape == (ids.shape[0], config.projection_dim)


def test_clip_bf16_compute_close_to_fp32(clip_folder):
    hf_model, folder = clip_folder
    config, params = convert_clip.load_clip(folder)
    ids = _clip_ids(config.eos_token_id, 16)
    fp32 = jax.jit(CLIPTextEncoder(config).apply)({"params": params}, jnp.asarray(ids, jnp.int32))
    bf16 = jax.jit(CLIPTextEncoder(config, dtype=jnp.bfloat16).apply)({"params": params}, jnp.asarray(ids, jnp.int32))
    with torch.no_grad():
        torch_bf16 = copy.deepcopy(hf_model).to(torch.bfloat16)(torch.tensor(ids), output_hidden_states=True)
    assert bf16.hidden_states[-2].dtype == jnp.bfloat16
    for ours, theirs, ref in (
        (bf16.hidden_states[-2], torch_bf16.hidden_states[-2], fp32.hidden_states[-2]),
        (bf16.text_embeds, torch_bf16.text_embeds, fp32.text_embeds),
    ):
        assert _rel_err(ours, ref) <= max(BF16_TOL, BF16_VS_TORCH * _rel_err(theirs.float(), ref))


def test_clip_round_trip_loads_identically_in_transformers(clip_folder, tmp_path):
    hf_model, folder = clip_folder
    config, params = convert_clip.load_clip(folder)
    out = tmp_path / "exported"
    convert_clip.save_clip(config, params, out)
    reloaded, info = transformers.CLIPTextModelWithProjection.from_pretrained(out, output_loading_info=True)
    _assert_clean_load(info)
    _assert_same_state_dicts(reloaded, hf_model)
    with pytest.raises(LaddError, match="already exists"):
        convert_clip.save_clip(config, params, out)
    convert_clip.save_clip(config, params, out, dtype="bfloat16", overwrite=True)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    half = transformers.CLIPTextModelWithProjection.from_pretrained(out, dtype=torch.bfloat16).state_dict()
    for k, v in hf_model.state_dict().items():
        assert torch.equal(half[k], v.to(torch.bfloat16)), k


def test_clip_save_rejects_params_of_another_config(clip_folder, tmp_path):
    _, folder = clip_folder
    config, params = convert_clip.load_clip(folder)
    other = dataclasses.replace(config, projection_dim=8)
    with pytest.raises(LaddError, match="text_projection/kernel"):
        convert_clip.save_clip(other, params, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- T5


def test_t5_relative_position_buckets_match_transformers():
    bucket = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket
    for num_buckets, max_distance, length in [(8, 16, 70), (32, 128, 300)]:
        relative = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        ref = bucket(relative, bidirectional=True, num_buckets=num_buckets, max_distance=max_distance).numpy()
        np.testing.assert_array_equal(relative_position_buckets(length, length, num_buckets, max_distance), ref)


def test_t5_matches_transformers(t5_folder):
    hf_model, folder = t5_folder
    config, params = convert_t5.load_t5(folder)
    rng = np.random.default_rng(1)
    length = 40  # longer than max_distance (16), so the logarithmic and saturated buckets are used
    ids = rng.integers(0, config.vocab_size, size=(3, length))
    mask = np.ones_like(ids)
    mask[0, 29:] = 0  # right padding
    mask[1, :4] = 0  # left padding
    apply = jax.jit(T5Encoder(config).apply)
    for attention_mask in (None, mask):
        with torch.no_grad():
            ref = hf_model(
                torch.tensor(ids), attention_mask=None if attention_mask is None else torch.tensor(attention_mask)
            ).last_hidden_state
        out = apply({"params": params}, jnp.asarray(ids, jnp.int32), attention_mask)
        assert out.shape == (3, length, config.d_model)
        assert _rel_err(out, ref) <= TOL


def test_t5_bf16_compute_close_to_fp32(t5_folder):
    hf_model, folder = t5_folder
    config, params = convert_t5.load_t5(folder)
    ids = np.random.default_rng(2).integers(0, config.vocab_size, size=(2, 40))
    fp32 = jax.jit(T5Encoder(config).apply)({"params": params}, jnp.asarray(ids, jnp.int32))
    bf16 = jax.jit(T5Encoder(config, dtype=jnp.bfloat16).apply)({"params": params}, jnp.asarray(ids, jnp.int32))
    with torch.no_grad():
        torch_bf16 = copy.deepcopy(hf_model).to(torch.bfloat16)(torch.tensor(ids)).last_hidden_state.float()
    assert bf16.dtype == jnp.bfloat16
    assert _rel_err(bf16, fp32) <= max(BF16_TOL, BF16_VS_TORCH * _rel_err(torch_bf16, fp32))


def test_t5_round_trip_loads_identically_in_transformers(t5_folder, tmp_path):
    hf_model, folder = t5_folder
    config, params = convert_t5.load_t5(folder)
    out = tmp_path / "exported"
    convert_t5.save_t5(config, jax.tree_util.tree_map(jnp.asarray, params), out)  # device arrays, as after training
    reloaded, info = transformers.T5EncoderModel.from_pretrained(out, output_loading_info=True)
    _assert_clean_load(info)
    _assert_same_state_dicts(reloaded, hf_model)
    assert reloaded.shared.weight is reloaded.encoder.embed_tokens.weight


def test_t5_reads_either_tied_embedding_name_and_shards(t5_folder, tmp_path):
    hf_model, folder = t5_folder
    _, params = convert_t5.load_t5(folder)
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items()}
    for keep in ("shared.weight", "encoder.embed_tokens.weight", None):
        sub = tmp_path / f"keep-{keep}"
        sub.mkdir()
        shutil.copy(folder / "config.json", sub)
        drop = {"shared.weight", "encoder.embed_tokens.weight"} - {keep} if keep else set()
        tensors = {k: v.clone() for k, v in state.items() if k not in drop}
        safetensors_torch.save_file(tensors, sub / "model.safetensors", metadata={"format": "pt"})
        _, loaded = convert_t5.load_t5(sub)
        jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    sharded = tmp_path / "sharded"
    hf_model.save_pretrained(sharded, safe_serialization=True, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    _, loaded = convert_t5.load_t5(sharded)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)


# ---------------------------------------------------------------- presets, configs, errors


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", ["clip-l", "clip-g", "t5-xxl"])
def test_preset_param_counts_match_pytorch(name):
    if name.startswith("clip"):
        config = CLIPTextConfig.preset(name)
        ours = _count(convert_clip.abstract_params(config))
        with torch.device("meta"):
            ref = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_dict(config.to_hf()))
    else:
        config = T5Config.preset(name)
        ours = _count(convert_t5.abstract_params(config))
        with torch.device("meta"):
            ref = transformers.T5EncoderModel(transformers.T5Config.from_dict(config.to_hf()))
    # parameters() yields the tied shared / encoder.embed_tokens embedding once.
    assert ours == sum(p.numel() for p in ref.parameters())
    expected = {"clip-l": 123_650_304, "clip-g": 694_659_840, "t5-xxl": 4_762_310_656}
    assert ours == expected[name]


def test_presets_are_sd3_shapes():
    clip_l, clip_g, t5 = CLIPTextConfig.preset("clip-l"), CLIPTextConfig.preset("clip-g"), T5Config.preset("t5-xxl")
    assert (clip_l.hidden_size, clip_l.projection_dim, clip_l.hidden_act, clip_l.eos_token_id) == (
        768,
        768,
        "quick_gelu",
        2,
    )
    assert (clip_g.hidden_size, clip_g.num_hidden_layers, clip_g.num_attention_heads, clip_g.hidden_act) == (
        1280,
        32,
        20,
        "gelu",
    )
    assert clip_l.hidden_size + clip_g.hidden_size == 2048  # SD3's pooled and context widths
    assert (t5.d_model, t5.d_ff, t5.num_layers, t5.num_heads, t5.dense_act_fn, t5.is_gated_act) == (
        4096,
        10240,
        24,
        64,
        "gelu_new",
        True,
    )


def test_configs_round_trip_through_transformers():
    for config in (CLIPTextConfig.preset("clip-g"), CLIPTextConfig(eos_token_id=49407, hidden_act="gelu")):
        hf = transformers.CLIPTextConfig.from_dict(config.to_hf())
        assert CLIPTextConfig.from_hf(hf.to_dict()) == config
    config = T5Config.preset("t5-xxl")
    hf = transformers.T5Config.from_dict(config.to_hf())
    assert hf.is_gated_act and hf.dense_act_fn == "gelu_new"
    assert T5Config.from_hf(hf.to_dict()) == config
    with pytest.raises(LaddError, match="hidden_act"):
        CLIPTextConfig(hidden_act="mish")
    with pytest.raises(LaddError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gelu-gated")


def test_wrong_architecture_is_named(clip_folder, t5_folder):
    _, clip_dir = clip_folder
    _, t5_dir = t5_folder
    with pytest.raises(LaddError, match="T5EncoderModel.*CLIPTextModelWithProjection"):
        convert_clip.load_clip(t5_dir)
    with pytest.raises(LaddError, match="CLIPTextModelWithProjection.*T5EncoderModel"):
        convert_t5.load_t5(clip_dir)


def _write_without(model, folder, tmp_path, drop: set[str]):
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in drop}
    shutil.copy(folder / "config.json", tmp_path)
    safetensors_torch.save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    return tmp_path


def _missing(key: str) -> str:
    return f"missing:\n +{key.replace('.', '[.]')}"


@pytest.mark.parametrize("key", ["text_model.encoder.layers.1.mlp.fc2.weight", "text_projection.weight"])
def test_clip_missing_key_is_named(clip_folder, tmp_path, key):
    model, folder = clip_folder
    with pytest.raises(LaddError, match=_missing(key)):
        convert_clip.load_clip(_write_without(model, folder, tmp_path, {key}))


@pytest.mark.parametrize(
    "key",
    [
        "encoder.block.1.layer.1.DenseReluDense.wo.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        "shared.weight",  # with its tied twin gone too: no embedding at all
    ],
)
def test_t5_missing_key_is_named(t5_folder, tmp_path, key):
    model, folder = t5_folder
    # save_pretrained writes shared.weight alone; drop its tied twin as well.
    with pytest.raises(LaddError, match=_missing(key)):
        convert_t5.load_t5(_write_without(model, folder, tmp_path, {key, "encoder.embed_tokens.weight"}))
