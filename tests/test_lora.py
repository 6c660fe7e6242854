"""LoRA: merge algebra, and the diffusers/peft LoRA file both ways.

Tolerance: fp32 on both sides, max |ours - diffusers| / max |diffusers| <= 1e-5 on the transformer's output.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from conftest import mmdit_inputs, rel_err, tiny_sd3_transformer, torch_mmdit_forward
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax.cli import main
from ladd_jax.convert.lora import WEIGHT_NAME, apply_lora_file, flax_targets, load_lora, save_lora
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.lora import LoraSpec, init_lora, lora_paths, merge, module_at, unmerge
from ladd_jax.models.mmdit import MMDiT

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

TOL = 1e-5
ATTENTION_AND_MLP = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "attn2.to_q",
    "attn2.to_v",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
)


def _random_adapters(spec: LoraSpec, params: dict, seed: int = 0) -> dict:
    """Adapters with a random b too (fresh ones are exactly zero updates, which would prove nothing)."""
    lora = init_lora(spec, params, jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32), lora)


def _ours(config, params, inputs) -> np.ndarray:
    return np.asarray(MMDiT(config).apply({"params": params}, *inputs))


def _diffusers_folder(tmp_path, variant: str):
    folder = tmp_path / "transformer"
    tiny_sd3_transformer(variant, seed=3).save_pretrained(folder)
    return folder


def test_fresh_adapters_leave_the_model_unchanged_and_unmerge_inverts(tmp_path):
    config, params = load_mmdit(_diffusers_folder(tmp_path, "sd3.5-medium"))
    spec = LoraSpec(2, 4.0, flax_targets(ATTENTION_AND_MLP))
    fresh = init_lora(spec, params, jax.random.key(0))
    assert jax.tree.all(jax.tree.map(np.array_equal, merge(params, fresh, spec.scale), params))
    # attn2 exists only in the dual-attention group; the last block has no context output layers.
    paths = lora_paths(fresh)
    assert "blocks_0_2/attn2/to_q" in paths and not any(p.startswith("blocks_2_3/attn2") for p in paths)
    assert "blocks_3_4/attn/to_q" in paths and "blocks_3_4/attn/to_add_out" not in paths
    lora = _random_adapters(spec, params)
    merged = merge(params, lora, spec.scale)
    back = unmerge(merged, lora, spec.scale)
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: rel_err(a, b), back, params))) < 1e-6
    # The merged kernel is the low-rank path: x W' = x W + scale (x a) b.
    x = np.random.default_rng(0).standard_normal((3, params["blocks_0_2"]["attn"]["to_q"]["kernel"].shape[1]))
    w, ad = params["blocks_0_2"]["attn"]["to_q"]["kernel"][1], lora["blocks_0_2"]["attn"]["to_q"]
    low_rank = x @ w + spec.scale * (x @ ad["lora_a"][1]) @ ad["lora_b"][1]
    assert rel_err(x @ merged["blocks_0_2"]["attn"]["to_q"]["kernel"][1], low_rank) < 1e-6


def test_exported_lora_loads_in_diffusers_pipeline(tmp_path):
    """ladd_jax's adapters -> the LoRA file -> StableDiffusion3Pipeline.load_lora_weights gives ladd_jax's output
    with the adapters; the file imports back to the same adapters."""
    folder = write_tiny_sd3_folder(tmp_path / "pipe", seed=0, with_t5=False)
    config, params = load_mmdit(folder)
    spec = LoraSpec(3, 6.0, flax_targets(ATTENTION_AND_MLP))
    lora = _random_adapters(spec, params, seed=1)
    file = save_lora(tmp_path / "lora", config, lora, spec)
    assert file.name == WEIGHT_NAME

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pipe.load_lora_weights(tmp_path / "lora")
    inputs = mmdit_inputs(config)
    expected = _ours(config, merge(params, lora, spec.scale), inputs)
    assert rel_err(torch_mmdit_forward(pipe.transformer, *inputs), expected) < TOL
    assert rel_err(expected, _ours(config, params, inputs)) > 1e-2  # the adapters change the output

    spec_back, lora_back = load_lora(tmp_path / "lora", config)
    assert (spec_back.rank, spec_back.alpha) == (spec.rank, spec.alpha)
    assert jax.tree.all(jax.tree.map(np.array_equal, lora_back, lora))

    # `ladd-jax lora-merge`: the folder with the LoRA merged into its transformer.
    assert main(["lora-merge", "--model", str(folder), "--lora", str(file), "--out", str(tmp_path / "merged")]) == 0
    assert rel_err(_ours(config, load_mmdit(tmp_path / "merged")[1], inputs), expected) < TOL


@pytest.mark.parametrize("variant", ["sd3-medium", "sd3.5-medium"])
def test_peft_trained_lora_imports(tmp_path, variant):
    """A LoRA that peft made on diffusers' transformer (alpha != r, a subset of blocks) gives diffusers' output
    in ladd_jax."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model = tiny_sd3_transformer(variant, seed=3)
    model.save_pretrained(tmp_path / "base")
    targets = ["attn.to_q", "attn.to_v", "ff.net.2", "transformer_blocks.0.attn.add_k_proj"]
    targets += ["attn2.to_out.0"] if variant == "sd3.5-medium" else []
    model.add_adapter(LoraConfig(r=2, lora_alpha=5, target_modules=targets, init_lora_weights=False))
    with torch.no_grad():  # peft's random B is as large as the weights; a trained adapter's update is far smaller
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.1)
    inputs = mmdit_inputs(model.config)
    expected = torch_mmdit_forward(model, *inputs)
    diffusers.StableDiffusion3Pipeline.save_lora_weights(
        tmp_path / "lora",
        transformer_lora_layers=get_peft_model_state_dict(model),
        transformer_lora_adapter_metadata=model.peft_config["default"].to_dict(),
    )
    config, params = load_mmdit(tmp_path / "base")
    ours = _ours(config, apply_lora_file(config, params, tmp_path / "lora"), inputs)
    assert rel_err(ours, expected) < TOL  # peft's unmerged layers: x W + s (x A) B
    model.fuse_lora()  # and with the adapters fused into diffusers' weights
    assert rel_err(ours, torch_mmdit_forward(model, *inputs)) < TOL
    assert rel_err(_ours(config, params, inputs), expected) > 1e-3


def test_bad_lora_files_get_one_clear_error(tmp_path):
    config, params = load_mmdit(_diffusers_folder(tmp_path, "sd3-medium"))
    with pytest.raises(LaddError, match="not linear layers of an SD3 block"):
        flax_targets(["attn.to_qq"])
    spec = LoraSpec(2, 2.0, flax_targets(["attn.to_q"]))
    save_lora(tmp_path / "a.safetensors", config, _random_adapters(spec, params), spec)
    wider = dataclasses.replace(config, num_attention_heads=4, caption_projection_dim=32)
    with pytest.raises(LaddError, match="belongs to another model"):
        load_lora(tmp_path / "a.safetensors", wider)
    with pytest.raises(LaddError, match="does not exist"):
        load_lora(tmp_path / "missing", config)
    from safetensors.numpy import save_file

    save_file({"text_encoder.x.lora_A.weight": np.zeros((2, 3), np.float32)}, tmp_path / "te.safetensors")
    with pytest.raises(LaddError, match="transformer LoRAs only"):
        load_lora(tmp_path / "te.safetensors", config)


def test_lora_params_shard_like_their_kernels():
    from ladd_jax.train.sharding import logical_axes

    assert logical_axes("blocks_0_3/attn/to_q/lora_a", 3) == ("layers", "embed", None)
    assert logical_axes("blocks_0_3/attn/to_q/lora_b", 3) == ("layers", None, "heads")
    assert logical_axes("blocks_0_3/attn/to_out/lora_b", 3) == ("layers", None, "embed")


def test_lora_student_trains_only_adapters_and_exports_both_ways(world, tmp_path, monkeypatch):
    """A LoRA LADD run: its checkpoints hold adapters only; `export --lora` writes the file diffusers loads onto
    the teacher, and that equals the run's merged export."""
    from test_train import tiny_config

    from ladd_jax.train.export import export_workdir
    from ladd_jax.train.loop import train_and_evaluate

    run = tmp_path / "run"
    train_and_evaluate(tiny_config(world, **{"lora.rank": 2, "lora.alpha": 4.0, "g_lr": 1e-2}), run)
    file_dir = export_workdir(run, tmp_path / "lora", lora=True)
    merged = export_workdir(run, tmp_path / "merged")
    config, teacher = load_mmdit(world["teacher"])
    spec, lora = load_lora(file_dir, config)
    assert (spec.rank, spec.alpha) == (2, 4.0)
    assert any(np.abs(module_at(lora, p)["lora_b"]).max() > 0 for p in lora_paths(lora))  # b was trained

    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(world["teacher"])
    pipe.load_lora_weights(file_dir)
    exported = diffusers.SD3Transformer2DModel.from_pretrained(merged / "transformer")
    inputs = mmdit_inputs(config)
    expected = torch_mmdit_forward(exported, *inputs)
    assert rel_err(torch_mmdit_forward(pipe.transformer, *inputs), expected) < TOL
    assert rel_err(_ours(config, teacher, inputs), expected) > 1e-4  # the adapters moved the student

    # A run that trained the whole student has no LoRA to write (its meta names no adapters).
    from ladd_jax.train import export as export_module

    step, meta = export_module.read_meta(run)
    full_meta = dict(meta, architecture=dict(meta["architecture"], lora=None))
    monkeypatch.setattr(export_module, "read_meta", lambda workdir, step=None: (step, full_meta))
    with pytest.raises(LaddError, match="export it without --lora"):
        export_workdir(run, tmp_path / "x", lora=True)
