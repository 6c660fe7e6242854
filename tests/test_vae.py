"""Tests for ladd_jax.models.vae and ladd_jax.convert.vae against diffusers' AutoencoderKL (tiny random models)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizer_fixtures import randomize_

from ladd_jax.convert.params import flatten
from ladd_jax.convert.vae import load_vae, param_count, save_vae, vae_table
from ladd_jax.errors import LaddError
from ladd_jax.models.vae import AutoencoderKL, VAEConfig, abstract_vae_params, scale_latents, unscale_latents

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = dict(
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    latent_channels=16,
    sample_size=32,
)
VARIANTS = {
    "sd3_style": dict(TINY, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.53, shift_factor=0.06),
    # gelu resnets also check that conv_act stays SiLU whatever act_fn says, as in diffusers
    "quant_conv": dict(TINY, use_quant_conv=True, use_post_quant_conv=True, act_fn="gelu"),
}
B, H, W = 2, 32, 48  # non-square on purpose
FP32_TOL = 1e-4  # max abs error relative to the reference output's max abs value
BF16_TOL = 5e-2  # bf16 compute vs fp32, same measure


def _nhwc(t) -> np.ndarray:
    return t.detach().numpy().transpose(0, 2, 3, 1)


def _rel_err(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


class Case:
    """A random diffusers VAE saved to disk, loaded back with load_vae, and diffusers' outputs on fixed inputs."""

    def __init__(self, name: str, folder):
        self.vae = diffusers.AutoencoderKL(**VARIANTS[name]).eval()
        randomize_(self.vae, seed=len(name))
        self.folder = folder / name
        self.vae.save_pretrained(self.folder)
        self.config, self.params = load_vae(self.folder)
        gen = torch.Generator().manual_seed(1)
        self.x = torch.rand((B, 3, H, W), generator=gen) * 2 - 1
        n = len(TINY["block_out_channels"]) - 1
        self.z = torch.randn((B, TINY["latent_channels"], H >> n, W >> n), generator=gen)
        with torch.no_grad():
            dist = self.vae.encode(self.x).latent_dist
            self.mean, self.logvar = _nhwc(dist.mean), _nhwc(dist.logvar)
            self.decoded = _nhwc(self.vae.decode(self.z).sample)

    def run(self, dtype=jnp.float32):
        model = AutoencoderKL(self.config, dtype=dtype)
        encode = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.encode))
        decode = jax.jit(lambda p, z: model.apply({"params": p}, z, method=model.decode))
        mean, logvar = encode(self.params, _nhwc(self.x))
        return np.asarray(mean), np.asarray(logvar), np.asarray(decode(self.params, _nhwc(self.z)))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def case(request, tmp_path_factory) -> Case:
    return Case(request.param, tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def outputs(case):
    return case.run()


def test_config_from_diffusers(case):
    cfg = case.config
    assert cfg == VAEConfig.from_diffusers(dict(case.vae.config))
    assert cfg.use_quant_conv == VARIANTS[case.folder.name]["use_quant_conv"]
    ours = cfg.to_diffusers()
    theirs = {k: v for k, v in dict(case.vae.config).items() if not k.startswith("_")}
    assert ours.pop("_class_name") == "AutoencoderKL"
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert ours[k] == (list(v) if isinstance(v, tuple) else v), k


def test_table_matches_diffusers_state_dict(case):
    sd = case.vae.state_dict()
    table = vae_table(case.config)
    assert [r.src[0] for r in table] == list(sd)  # every tensor, in diffusers' own order
    shapes = {k: v.shape for k, v in flatten(abstract_vae_params(case.config)).items()}
    assert sorted(r.dst[0] for r in table) == sorted(shapes)


def test_encode_matches_diffusers(case, outputs):
    mean, logvar, _ = outputs
    assert mean.shape == logvar.shape == case.mean.shape == (B, H // 2, W // 2, 16)
    assert mean.dtype == np.float32
    assert _rel_err(mean, case.mean) <= FP32_TOL
    assert _rel_err(logvar, case.logvar) <= FP32_TOL


def test_decode_matches_diffusers(case, outputs):
    decoded = outputs[2]
    assert decoded.shape == case.decoded.shape == (B, H, W, 3)
    assert _rel_err(decoded, case.decoded) <= FP32_TOL


def test_bf16_compute_close_to_fp32(case, outputs):
    mean, logvar, decoded = case.run(jnp.bfloat16)
    for got, ref in zip((mean, logvar, decoded), outputs, strict=True):
        assert got.dtype == np.float32
        assert _rel_err(got, ref) <= BF16_TOL


def test_round_trip_to_diffusers(case, tmp_path):
    out = save_vae(case.config, case.params, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["_class_name"] == "AutoencoderKL"
    again = diffusers.AutoencoderKL.from_pretrained(out)
    assert VAEConfig.from_diffusers(dict(again.config)) == case.config
    ours, theirs = again.state_dict(), case.vae.state_dict()
    assert list(ours) == list(theirs)
    for k, v in theirs.items():
        assert torch.equal(ours[k], v), k
    with pytest.raises(LaddError, match="already exists"):
        save_vae(case.config, case.params, out)
    save_vae(case.config, case.params, out, dtype="bfloat16", overwrite=True)
    half = diffusers.AutoencoderKL.from_pretrained(out, torch_dtype=torch.bfloat16)
    for k, v in theirs.items():
        assert torch.equal(half.state_dict()[k], v.to(torch.bfloat16)), k


def test_legacy_attention_forms_load(case, tmp_path):
    # Pre-0.14 names (query/key/value/proj_attn) and 1x1-conv weights [out, in, 1, 1] load to the same params.
    sd = {k: v.clone() for k, v in case.vae.state_dict().items()}
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for k in [k for k in sd if ".attentions.0." in k]:
        v = sd.pop(k)
        new = k
        for a, b in legacy.items():
            new = new.replace(f".{a}.", f".{b}.")
        sd[new] = v[:, :, None, None] if v.ndim == 2 else v
    folder = tmp_path / "legacy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(case.vae.config)))
    safetensors_torch.save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    _, params = load_vae(folder)
    ref = flatten(case.params)
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)


def test_missing_and_misshaped_keys_named(case, tmp_path):
    sd = dict(case.vae.state_dict())
    sd.pop("decoder.conv_out.bias")
    sd["encoder.conv_in.weight"] = sd["encoder.conv_in.weight"][:8]
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(case.vae.config)))
    sd = {k: v.contiguous() for k, v in sd.items()}
    safetensors_torch.save_file(sd, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(LaddError, match="decoder.conv_out.bias") as err:
        load_vae(folder)
    assert "encoder.conv_in.weight" in str(err.value)


def test_save_rejects_params_of_another_config(case, tmp_path):
    other = VAEConfig.from_diffusers(dict(VARIANTS[case.folder.name], block_out_channels=(16, 16)))
    with pytest.raises(LaddError, match="do not match"):
        save_vae(other, case.params, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_wrong_class_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", "in_channels": 4}))
    with pytest.raises(LaddError, match="UNet2DConditionModel"):
        load_vae(tmp_path)
    with pytest.raises(LaddError, match="config.json"):
        load_vae(tmp_path / "nowhere")


def test_config_validation():
    with pytest.raises(LaddError, match="AttnDownEncoderBlock2D"):
        VAEConfig.from_diffusers(dict(TINY, down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D")))
    with pytest.raises(LaddError, match="same non-zero length"):
        VAEConfig(block_out_channels=(16, 32))
    with pytest.raises(LaddError, match="norm_num_groups"):
        VAEConfig.from_diffusers(dict(TINY, norm_num_groups=3))
    with pytest.raises(LaddError, match="act_fn"):
        VAEConfig.from_diffusers(dict(TINY, act_fn="tanh"))


def test_sd3_preset_param_count():
    cfg = VAEConfig.preset("sd3")
    kwargs = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")}
    with torch.device("meta"):
        reference = diffusers.AutoencoderKL(**kwargs)
    expected = sum(p.numel() for p in reference.parameters())
    assert param_count(cfg) == expected == 83_819_683
    assert vae_table(cfg)[0].src == ("encoder.conv_in.weight",)
    assert [r.src[0] for r in vae_table(cfg)] == list(reference.state_dict())


def test_scale_unscale_latents():
    cfg = VAEConfig.preset("sd3")
    z = jnp.linspace(-3, 3, 16).reshape(1, 1, 1, 16)
    scaled = scale_latents(z, cfg)
    np.testing.assert_allclose(scaled, (z - 0.0609) * 1.5305, rtol=1e-6)
    np.testing.assert_allclose(unscale_latents(scaled, cfg), z, rtol=1e-6, atol=1e-6)
    legacy = VAEConfig()  # shift_factor None -> 0
    np.testing.assert_allclose(scale_latents(z, legacy), z * 0.18215, rtol=1e-6)
