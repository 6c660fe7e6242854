"""MMDiT conversion: diffusers folder <-> Flax <-> SD3 single file <-> orbax, and every bad input."""

from __future__ import annotations

import json
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from conftest import TINY_MMDIT, mmdit_inputs, rel_err, tiny_sd3_transformer, torch_mmdit_forward
from tokenizer_fixtures import randomize_

from ladd_jax import cli
from ladd_jax.convert import mmdit as conv
from ladd_jax.convert.safetensors_io import SafetensorsFile, read_folder
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiT, with_extra_inputs


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_diffusers_flax_diffusers_round_trip(variant, tmp_path):
    from diffusers import SD3Transformer2DModel

    model = tiny_sd3_transformer(variant)
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    conv.save_mmdit(config, params, tmp_path / "back")
    back = SD3Transformer2DModel.from_pretrained(tmp_path / "back").eval()
    _assert_same_state(_state(model), _state(back))
    assert tuple(back.config.dual_attention_layers) == tuple(model.config.dual_attention_layers)


def test_conditioned_model_converts_and_widening_keeps_the_base(tmp_path):
    """An MMDiT with conditioning channels (in_channels > out_channels, as inpainting and editing models) converts
    both ways and equals diffusers; a base widened with zero extra inputs is the base for any conditioning."""
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(**{**TINY_MMDIT, "in_channels": 9, "out_channels": 4}).eval()
    randomize_(model, 0)
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    assert (config.in_channels, config.out_channels) == (9, 4)
    x, t, ctx, pooled = mmdit_inputs(config)
    assert (
        rel_err(
            MMDiT(config).apply({"params": params}, x, t, ctx, pooled), torch_mmdit_forward(model, x, t, ctx, pooled)
        )
        < 1e-5
    )
    conv.save_mmdit(config, params, tmp_path / "back")
    _assert_same_state(_state(model), _state(SD3Transformer2DModel.from_pretrained(tmp_path / "back").eval()))

    base_config, base = conv.load_mmdit(tmp_path / "src")
    wide_config, wide = with_extra_inputs(base_config, base, 5)
    assert wide_config.in_channels == 14
    cond = np.random.default_rng(1).standard_normal((*x.shape[:3], 5)).astype(np.float32)
    out_base = MMDiT(base_config).apply({"params": base}, x, t, ctx, pooled)
    out_wide = MMDiT(wide_config).apply({"params": wide}, np.concatenate([x, cond], -1), t, ctx, pooled)
    np.testing.assert_array_equal(np.asarray(out_wide), np.asarray(out_base))


def test_sd3_single_file_round_trip_through_diffusers_converter(variant, tmp_path):
    """Flax -> SD3 file -> diffusers' own single-file converter gives the same model and outputs."""
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    from safetensors.torch import load_file

    model = tiny_sd3_transformer(variant)
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    conv.save_mmdit(config, params, tmp_path / "sd3.safetensors", format="sd3")

    converted = convert_sd3_transformer_checkpoint_to_diffusers(load_file(tmp_path / "sd3.safetensors"))
    _assert_same_state(_state(model), converted)

    # And back: the architecture is inferred from the file's shapes (sample_size from pos_embed); only the head
    # count of a model without qk-norm is not in the file (SD3's convention, one head per block, is the default).
    heads = {} if config.qk_norm else {"num_attention_heads": config.num_attention_heads}
    config2, params2 = conv.load_mmdit(tmp_path / "sd3.safetensors", **heads)
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
    x, t, ctx, pooled = mmdit_inputs(config)
    loaded = SD3Transformer2DModel(**{k: v for k, v in model.config.items() if not k.startswith("_")})
    loaded.load_state_dict(converted)
    assert (
        rel_err(
            MMDiT(config2).apply({"params": params2}, x, t, ctx, pooled),
            torch_mmdit_forward(loaded.eval(), x, t, ctx, pooled),
        )
        <= 1e-4
    )


def test_bf16_checkpoint_round_trips_bit_for_bit(tmp_path):
    model = tiny_sd3_transformer("sd3.5-medium").to(torch.bfloat16)
    model.save_pretrained(tmp_path / "src")
    assert conv.checkpoint_dtype(tmp_path / "src") == "bfloat16"
    config, params = conv.load_mmdit(tmp_path / "src")
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
    conv.save_mmdit(config, params, tmp_path / "back", dtype="bfloat16")
    src = read_folder(tmp_path / "src", "diffusion_pytorch_model")
    back = read_folder(tmp_path / "back", "diffusion_pytorch_model")
    assert sorted(src) == sorted(back)
    for k in src:
        a, b = src[k].load(), back[k].load()
        assert a.dtype == b.dtype == ml_dtypes.bfloat16 and a.tobytes() == b.tobytes(), k


def test_sharded_folder_and_pipeline_folder(tmp_path):
    from diffusers import SD3Transformer2DModel

    model = tiny_sd3_transformer("sd3.5-large")
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "SD3Transformer2DModel"]}))
    conv.save_mmdit(config, params, pipe / "transformer", max_shard_bytes=20_000)
    shards = sorted(p.name for p in (pipe / "transformer").glob("*.safetensors"))
    assert len(shards) > 1 and (pipe / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    _assert_same_state(_state(model), _state(SD3Transformer2DModel.from_pretrained(pipe / "transformer")))
    config2, params2 = conv.load_mmdit(pipe)  # the pipeline folder: its transformer/ is used
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_orbax_round_trip(tmp_path):
    model = tiny_sd3_transformer("sd3.5-medium")
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    conv.save_mmdit(config, params, tmp_path / "ckpt", format="orbax")
    config2, params2 = conv.load_mmdit(tmp_path / "ckpt")
    assert config2 == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def test_cli_convert_keeps_source_dtype(tmp_path, capsys):
    model = tiny_sd3_transformer("sd3-medium").to(torch.float16)
    model.save_pretrained(tmp_path / "src")
    assert cli.main(["convert", str(tmp_path / "src"), str(tmp_path / "m.safetensors"), "--to", "sd3"]) == 0
    file = SafetensorsFile(tmp_path / "m.safetensors")
    assert {t.dtype for t in file.values()} == {np.dtype(np.float16)}
    assert all(k.startswith("model.diffusion_model.") for k in file)
    assert cli.main(["convert", str(tmp_path / "src"), str(tmp_path / "m.safetensors"), "--to", "sd3"]) == 2
    assert "already exists" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def src(tmp_path):
    tiny_sd3_transformer("sd3.5-medium").save_pretrained(tmp_path / "src")
    return tmp_path / "src"


def _edit_checkpoint(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_folder_without_mmdit(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LaddError, match="holds no MMDiT: there is no config.json"):
        conv.load_mmdit(tmp_path / "empty")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(LaddError, match="describes 'AutoencoderKL'"):
        conv.load_mmdit(tmp_path / "vae")
    with pytest.raises(LaddError, match="does not exist"):
        conv.load_mmdit(tmp_path / "nothing")


def test_file_without_mmdit(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "vae.safetensors")
    with pytest.raises(LaddError, match="holds no MMDiT"):
        conv.load_mmdit(tmp_path / "vae.safetensors")


def test_missing_unexpected_and_misshaped_keys_in_one_message(src):
    def edit(state):
        del state["transformer_blocks.1.attn.to_q.weight"]
        del state["transformer_blocks.0.attn2.norm_k.weight"]
        state["transformer_blocks.0.attn.extra.weight"] = torch.zeros(3)
        state["proj_out.bias"] = torch.zeros(5)

    _edit_checkpoint(src, edit)
    with pytest.raises(LaddError) as err:
        conv.load_mmdit(src)
    msg = str(err.value)
    assert "2 missing" in msg and "transformer_blocks.1.attn.to_q.weight" in msg
    assert "transformer_blocks.0.attn2.norm_k.weight" in msg
    assert "1 unexpected" in msg and "transformer_blocks.0.attn.extra.weight" in msg
    assert "1 mis-shaped" in msg and "proj_out.bias: got (5,)" in msg


def test_sd3_file_missing_key_named(src, tmp_path):
    from safetensors.torch import load_file, save_file

    config, params = conv.load_mmdit(src)
    conv.save_mmdit(config, params, tmp_path / "m.safetensors", format="sd3")
    state = load_file(tmp_path / "m.safetensors")
    del state["model.diffusion_model.joint_blocks.2.context_block.attn.qkv.bias"]
    save_file(state, tmp_path / "m.safetensors")
    with pytest.raises(LaddError, match=r"1 missing:\n.*joint_blocks\.2\.context_block\.attn\.qkv\.bias"):
        conv.load_mmdit(tmp_path / "m.safetensors")


def test_truncated_safetensors(src):
    path = src / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(LaddError, match="is truncated: tensor"):
        conv.load_mmdit(src)
    path.write_bytes(data[:4])
    with pytest.raises(LaddError, match="not a safetensors file"):
        conv.load_mmdit(src)


def test_wrong_pos_embed_names_sample_size(src):
    cfg = json.loads((src / "config.json").read_text())
    cfg["sample_size"] = 24
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LaddError, match="fix sample_size"):
        conv.load_mmdit(src)


def test_destination_never_half_written(src, tmp_path, monkeypatch):
    config, params = conv.load_mmdit(src)
    with pytest.raises(LaddError, match="does not exist"):
        conv.save_mmdit(config, params, tmp_path / "no" / "such" / "dir")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(LaddError, match="does not exist"):
        conv.save_mmdit(config, params, tmp_path / "a_file" / "out")
    with pytest.raises(LaddError, match="already exists"):
        conv.save_mmdit(config, params, src)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    for fmt, dst in (("diffusers", tmp_path / "out"), ("sd3", tmp_path / "out.safetensors")):
        monkeypatch.setattr(conv, "write_safetensors", fail)
        monkeypatch.setattr(conv, "write_folder", fail)
        with pytest.raises(OSError, match="disk full"):
            conv.save_mmdit(config, params, dst, format=fmt)
        assert not dst.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # A failed overwrite keeps the previous version intact.
    backup = tmp_path / "backup"
    shutil.copytree(src, backup)
    with pytest.raises(OSError, match="disk full"):
        conv.save_mmdit(config, params, src, overwrite=True)
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in backup.iterdir())
    assert (src / "diffusion_pytorch_model.safetensors").read_bytes() == (
        backup / "diffusion_pytorch_model.safetensors"
    ).read_bytes()


def test_orbax_checkpoint_restores_sharded(tmp_path):
    """What the trainer will do: restore the orbax MMDiT straight into params sharded over a 4-device mesh."""
    import subprocess
    import sys
    import textwrap

    model = tiny_sd3_transformer("sd3-medium")
    model.save_pretrained(tmp_path / "src")
    config, params = conv.load_mmdit(tmp_path / "src")
    conv.save_mmdit(config, params, tmp_path / "ckpt", format="orbax")
    np.save(tmp_path / "ref.npy", params["blocks_0_2"]["ff"]["proj_in"]["kernel"])
    script = textwrap.dedent(f"""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        import jax, numpy as np, orbax.checkpoint as ocp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from ladd_jax.convert.mmdit import load_mmdit
        from ladd_jax.models.mmdit import MMDiTConfig, abstract_params
        import json
        cfg = MMDiTConfig.from_diffusers(json.load(open("{tmp_path}/ckpt/config.json")))
        mesh = jax.make_mesh((4,), ("fsdp",), axis_types=(jax.sharding.AxisType.Explicit,))
        def target(x):  # shard the last axis when it divides, as FSDP would
            spec = P(*([None] * (x.ndim - 1)), "fsdp") if x.shape[-1] % 4 == 0 else P()
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
        abstract = jax.tree_util.tree_map(target, abstract_params(cfg))
        params = ocp.StandardCheckpointer().restore("{tmp_path}/ckpt/params", abstract)
        k = params["blocks_0_2"]["ff"]["proj_in"]["kernel"]
        assert len(k.sharding.device_set) == 4 and k.addressable_shards[0].data.shape[-1] == k.shape[-1] // 4
        np.testing.assert_array_equal(np.asarray(k), np.load("{tmp_path}/ref.npy"))
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
