"""MMDiT weights between PyTorch layouts (a diffusers transformer folder, Stability's SD3/SD3.5 single file)
and Flax (params in memory, or an orbax checkpoint).

Two declarative tables: DIFFUSERS_TABLE relates diffusers' tensor names to per-layer Flax paths
("layers/{i}/...", stacked into the model's scanned block groups afterwards), and SD3_TABLE relates the
original single-file names to diffusers' (fused qkv, swapped shift/scale). A single file goes through
both. Everything is lazy until the last step, which fills the stacked arrays one tensor at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax.atomic import atomic_path
from ladd_jax.convert import params as P
from ladd_jax.convert.safetensors_io import LazyTensor, SafetensorsFile, read_folder, write_folder, write_safetensors
from ladd_jax.convert.table import CONV2D, IDENTITY, LINEAR, Applied, Hook, Split, SwapHalves, apply, expand, rule
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params, sincos_pos_embed

FORMATS = ("diffusers", "sd3", "orbax")
POS_EMBED = "pos_embed.pos_embed"  # a buffer in both PyTorch layouts; we recompute it and check it
SD3_PREFIX = "model.diffusion_model."
ORBAX_MARKER = "ladd_jax_format"


def _linear(src: str, dst: str, when=()) -> list:
    return [rule(f"{src}.weight", f"{dst}/kernel", LINEAR, when), rule(f"{src}.bias", f"{dst}/bias", when=when)]


def _renamed(src: str, dst: str | tuple[str, ...], hook: Hook = IDENTITY, when=()) -> list:
    """The weight and the bias of a layer, both through `hook`."""
    dsts = (dst,) if isinstance(dst, str) else dst
    return [rule(f"{src}.{p}", tuple(f"{d}.{p}" for d in dsts), hook, when) for p in ("weight", "bias")]


_B = "transformer_blocks.{i}"
_L = "layers/{i}"
DIFFUSERS_TABLE = [
    rule("pos_embed.proj.weight", "patch_embed/kernel", CONV2D),
    rule("pos_embed.proj.bias", "patch_embed/bias"),
    *_linear("time_text_embed.timestep_embedder.linear_1", "time_embed/linear_1"),
    *_linear("time_text_embed.timestep_embedder.linear_2", "time_embed/linear_2"),
    *_linear("time_text_embed.text_embedder.linear_1", "text_embed/linear_1"),
    *_linear("time_text_embed.text_embedder.linear_2", "text_embed/linear_2"),
    *_linear("context_embedder", "context_embedder"),
    *_linear(f"{_B}.norm1.linear", f"{_L}/norm1/linear"),
    *_linear(f"{_B}.norm1_context.linear", f"{_L}/norm1_context/linear"),
    *_linear(f"{_B}.attn.to_q", f"{_L}/attn/to_q"),
    *_linear(f"{_B}.attn.to_k", f"{_L}/attn/to_k"),
    *_linear(f"{_B}.attn.to_v", f"{_L}/attn/to_v"),
    *_linear(f"{_B}.attn.to_out.0", f"{_L}/attn/to_out"),
    *_linear(f"{_B}.attn.add_q_proj", f"{_L}/attn/add_q_proj"),
    *_linear(f"{_B}.attn.add_k_proj", f"{_L}/attn/add_k_proj"),
    *_linear(f"{_B}.attn.add_v_proj", f"{_L}/attn/add_v_proj"),
    *_linear(f"{_B}.attn.to_add_out", f"{_L}/attn/to_add_out", when="context_full"),
    rule(f"{_B}.attn.norm_q.weight", f"{_L}/attn/norm_q/scale", when="qk_norm"),
    rule(f"{_B}.attn.norm_k.weight", f"{_L}/attn/norm_k/scale", when="qk_norm"),
    rule(f"{_B}.attn.norm_added_q.weight", f"{_L}/attn/norm_added_q/scale", when="qk_norm"),
    rule(f"{_B}.attn.norm_added_k.weight", f"{_L}/attn/norm_added_k/scale", when="qk_norm"),
    *_linear(f"{_B}.attn2.to_q", f"{_L}/attn2/to_q", when="dual_attention"),
    *_linear(f"{_B}.attn2.to_k", f"{_L}/attn2/to_k", when="dual_attention"),
    *_linear(f"{_B}.attn2.to_v", f"{_L}/attn2/to_v", when="dual_attention"),
    *_linear(f"{_B}.attn2.to_out.0", f"{_L}/attn2/to_out", when="dual_attention"),
    rule(f"{_B}.attn2.norm_q.weight", f"{_L}/attn2/norm_q/scale", when=("dual_attention", "qk_norm")),
    rule(f"{_B}.attn2.norm_k.weight", f"{_L}/attn2/norm_k/scale", when=("dual_attention", "qk_norm")),
    *_linear(f"{_B}.ff.net.0.proj", f"{_L}/ff/proj_in"),
    *_linear(f"{_B}.ff.net.2", f"{_L}/ff/proj_out"),
    *_linear(f"{_B}.ff_context.net.0.proj", f"{_L}/ff_context/proj_in", when="context_full"),
    *_linear(f"{_B}.ff_context.net.2", f"{_L}/ff_context/proj_out", when="context_full"),
    *_linear("norm_out.linear", "norm_out/linear"),
    *_linear("proj_out", "proj_out"),
]

_J = "joint_blocks.{i}"
SD3_TABLE = [
    rule("pos_embed", POS_EMBED),
    *_renamed("x_embedder.proj", "pos_embed.proj"),
    *_renamed("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
    *_renamed("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
    *_renamed("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
    *_renamed("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"),
    *_renamed("context_embedder", "context_embedder"),
    *_renamed(f"{_J}.x_block.adaLN_modulation.1", f"{_B}.norm1.linear"),
    *_renamed(f"{_J}.context_block.adaLN_modulation.1", f"{_B}.norm1_context.linear", when="context_full"),
    # The pre-only context block's modulation is (shift, scale) in SD3's code and (scale, shift) in diffusers'.
    *_renamed(f"{_J}.context_block.adaLN_modulation.1", f"{_B}.norm1_context.linear", SwapHalves(), "context_pre_only"),
    *_renamed(f"{_J}.x_block.attn.qkv", tuple(f"{_B}.attn.to_{c}" for c in "qkv"), Split(3)),
    *_renamed(f"{_J}.context_block.attn.qkv", tuple(f"{_B}.attn.add_{c}_proj" for c in "qkv"), Split(3)),
    *_renamed(f"{_J}.x_block.attn.proj", f"{_B}.attn.to_out.0"),
    *_renamed(f"{_J}.context_block.attn.proj", f"{_B}.attn.to_add_out", when="context_full"),
    rule(f"{_J}.x_block.attn.ln_q.weight", f"{_B}.attn.norm_q.weight", when="qk_norm"),
    rule(f"{_J}.x_block.attn.ln_k.weight", f"{_B}.attn.norm_k.weight", when="qk_norm"),
    rule(f"{_J}.context_block.attn.ln_q.weight", f"{_B}.attn.norm_added_q.weight", when="qk_norm"),
    rule(f"{_J}.context_block.attn.ln_k.weight", f"{_B}.attn.norm_added_k.weight", when="qk_norm"),
    *_renamed(f"{_J}.x_block.attn2.qkv", tuple(f"{_B}.attn2.to_{c}" for c in "qkv"), Split(3), "dual_attention"),
    *_renamed(f"{_J}.x_block.attn2.proj", f"{_B}.attn2.to_out.0", when="dual_attention"),
    rule(f"{_J}.x_block.attn2.ln_q.weight", f"{_B}.attn2.norm_q.weight", when=("dual_attention", "qk_norm")),
    rule(f"{_J}.x_block.attn2.ln_k.weight", f"{_B}.attn2.norm_k.weight", when=("dual_attention", "qk_norm")),
    *_renamed(f"{_J}.x_block.mlp.fc1", f"{_B}.ff.net.0.proj"),
    *_renamed(f"{_J}.x_block.mlp.fc2", f"{_B}.ff.net.2"),
    *_renamed(f"{_J}.context_block.mlp.fc1", f"{_B}.ff_context.net.0.proj", when="context_full"),
    *_renamed(f"{_J}.context_block.mlp.fc2", f"{_B}.ff_context.net.2", when="context_full"),
    *_renamed("final_layer.adaLN_modulation.1", "norm_out.linear", SwapHalves()),
    *_renamed("final_layer.linear", "proj_out"),
]


# ----------------------------------------------------------------------------------------------------- loading


def load_mmdit(path: str | Path, **overrides: Any) -> tuple[MMDiTConfig, dict]:
    """(config, fp32 params) from a diffusers transformer folder (or a pipeline folder holding one), an
    SD3/SD3.5 single .safetensors file, or an orbax checkpoint written by `save_mmdit(..., format="orbax")`.
    `overrides` set MMDiTConfig fields: the computation ones (dtype, remat_policy, attention_impl), or for a
    single file what its shapes cannot tell (num_attention_heads when there is no qk-norm)."""
    folder = _orbax_folder(path)
    if folder is not None:
        return _load_orbax(folder, overrides)
    config, tensors = open_mmdit(path, **overrides)
    return config, _stack(config, apply(expand(DIFFUSERS_TABLE, config.layer_tags()), tensors).tensors)


def open_mmdit(path: str | Path, **overrides: Any) -> tuple[MMDiTConfig, dict[str, LazyTensor]]:
    """(config, diffusers-named lazy tensors) of a PyTorch checkpoint, every name and shape checked against
    the model; nothing is read beyond the headers (and the small pos_embed check)."""
    path = Path(path)
    if not path.exists():
        raise LaddError(f"{path} does not exist; point at a diffusers transformer folder or an SD3 .safetensors file")
    if path.is_file():
        file = SafetensorsFile(path)
        if any(k.startswith(SD3_PREFIX) for k in file):
            # An all-in-one file also holds the VAE and text encoders: keep the diffusion model's tensors.
            source = {k[len(SD3_PREFIX) :]: t for k, t in file.items() if k.startswith(SD3_PREFIX)}
        else:
            source = dict(file)
        config = infer_sd3_config(source, str(path), **overrides)
        earlier = apply(expand(SD3_TABLE, config.layer_tags()), source)
        tensors = earlier.tensors
    else:
        folder = path / "transformer" if (path / "model_index.json").is_file() else path
        config = MMDiTConfig.from_diffusers(_read_config(folder), **overrides)
        tensors, earlier = read_folder(folder, "diffusion_pytorch_model"), Applied({}, [], [])
    stage = apply(expand(DIFFUSERS_TABLE, config.layer_tags()), tensors)
    merged = Applied(stage.tensors, earlier.missing or stage.missing, earlier.unused + stage.unused)
    P.validate(merged, _unstacked_shapes(config), str(path), ignore=(POS_EMBED,))
    if POS_EMBED in tensors:
        _check_pos_embed(config, tensors[POS_EMBED], str(path))
    return config, tensors


def _orbax_folder(path: str | Path) -> Path | None:
    path = Path(path)
    folder = path / "transformer" if (path / "model_index.json").is_file() else path
    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text()).get(ORBAX_MARKER) == "orbax":
        return folder
    return None


def _read_config(folder: Path) -> dict:
    config = read_json(
        folder / "config.json",
        f"{folder} holds no MMDiT: there is no config.json; point at a diffusers SD3 transformer folder "
        "(or the pipeline folder above it) or at an SD3 .safetensors file",
    )
    cls = config.get("_class_name")
    if cls != "SD3Transformer2DModel":
        raise LaddError(
            f"{folder} holds no MMDiT: its config.json describes {cls!r}, not 'SD3Transformer2DModel'; "
            "point at the SD3 pipeline's transformer/ folder"
        )
    return config


def infer_sd3_config(source: Mapping[str, LazyTensor], what: str, **overrides: Any) -> MMDiTConfig:
    """The architecture of an original SD3/SD3.5 checkpoint, read off its tensor shapes. The head count is
    the qk-norm width's quotient when there is one, else SD3's convention of one head per block."""
    if "x_embedder.proj.weight" not in source or "joint_blocks.0.x_block.attn.qkv.weight" not in source:
        some = ", ".join(list(source)[:5]) or "none"
        raise LaddError(
            f"{what} holds no MMDiT: expected SD3 tensors such as 'x_embedder.proj.weight' and 'joint_blocks.0.*' "
            f"(with or without the '{SD3_PREFIX}' prefix), found {len(source)} tensors ({some}, ...)"
        )
    hidden, in_channels, patch, _ = source["x_embedder.proj.weight"].shape
    layers = 1 + max(int(k.split(".")[1]) for k in source if k.startswith("joint_blocks."))
    ln_q = source.get("joint_blocks.0.x_block.attn.ln_q.weight")
    heads = hidden // ln_q.shape[0] if ln_q is not None else layers
    heads = overrides.pop("num_attention_heads", heads)
    out_features = source["final_layer.linear.weight"].shape[0]
    max_size, sample_size = _infer_pos_embed_grid(source.get("pos_embed"), hidden, patch)
    if hidden % heads:
        raise LaddError(f"{what}: width {hidden} does not split into {heads} heads; pass num_attention_heads")
    fields = dict(
        sample_size=sample_size,
        patch_size=patch,
        in_channels=in_channels,
        num_layers=layers,
        attention_head_dim=hidden // heads,
        num_attention_heads=heads,
        joint_attention_dim=source["context_embedder.weight"].shape[1],
        caption_projection_dim=source["context_embedder.weight"].shape[0],
        pooled_projection_dim=source["y_embedder.mlp.0.weight"].shape[1],
        out_channels=out_features // (patch * patch),
        pos_embed_max_size=max_size,
        dual_attention_layers=tuple(i for i in range(layers) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in source),
        qk_norm="rms_norm" if ln_q is not None else None,
    )
    return MMDiTConfig(**{**fields, **overrides})


def _infer_pos_embed_grid(pos_embed: LazyTensor | None, dim: int, patch: int) -> tuple[int, int]:
    """(pos_embed_max_size, sample_size) from the stored sincos table, whose frequencies encode the base size."""
    if pos_embed is None:
        raise LaddError("the SD3 checkpoint has no 'pos_embed' tensor, which it needs to define the position grid")
    m = math.isqrt(pos_embed.shape[1])
    # Channel dim/4 - 1 is sin(col * omega_min), nearly linear in col; token m-1 sits at column m-1.
    omega_min = 1.0 / 10000 ** ((dim // 4 - 1) / (dim / 4))
    value = float(np.asarray(pos_embed.load()[0, m - 1, dim // 4 - 1], dtype=np.float64))
    base = round(math.asin(value) / omega_min * m / (m - 1))
    return m, base * patch


def _unstacked_shapes(config: MMDiTConfig) -> dict[str, tuple[int, ...]]:
    """The model's param shapes with each scanned group split back into "layers/{i}/..." entries."""
    out = {}
    groups = {name: start for name, start, _ in config.block_groups()}
    for name, shape in P.abstract_shapes(abstract_params(config)).items():
        head, _, rest = name.partition("/")
        if head in groups:
            for j in range(shape[0]):
                out[f"layers/{groups[head] + j}/{rest}"] = shape[1:]
        else:
            out[name] = shape
    return out


def _stack(config: MMDiTConfig, per_layer: Mapping[str, LazyTensor]) -> dict:
    """Per-layer Flax-named tensors -> the param tree with scanned groups stacked, one tensor read at a time."""
    flat: dict[str, np.ndarray] = {}
    groups = {name: (start, stop) for name, start, stop in config.block_groups()}
    for name, shape in P.abstract_shapes(abstract_params(config)).items():
        head, _, rest = name.partition("/")
        if head not in groups:
            flat[name] = np.asarray(per_layer[name].load(), np.float32)
            continue
        stacked = np.empty(shape, np.float32)
        for j, i in enumerate(range(*groups[head])):
            stacked[j] = per_layer[f"layers/{i}/{rest}"].load()
        flat[name] = stacked
    return P.unflatten(flat)


def _check_pos_embed(config: MMDiTConfig, stored: LazyTensor, what: str) -> None:
    expected = sincos_pos_embed(config)[None]
    if tuple(stored.shape) != expected.shape:
        raise LaddError(f"{what}: pos_embed has shape {stored.shape}, its config implies {expected.shape}")
    tol = 1e-5 if stored.dtype == np.float32 else 1e-2  # bf16/fp16 copies of the table
    err = float(np.abs(stored.load().astype(np.float32) - expected).max())
    if err > tol:
        raise LaddError(
            f"{what}: the stored pos_embed differs from the one sample_size={config.sample_size} and "
            f"pos_embed_max_size={config.pos_embed_max_size} define (max error {err:.3g}); "
            "fix sample_size in the config"
        )


def _load_orbax(folder: Path, overrides: dict) -> tuple[MMDiTConfig, dict]:
    import orbax.checkpoint as ocp

    config = MMDiTConfig.from_diffusers(json.loads((folder / "config.json").read_text()), **overrides)
    params = ocp.StandardCheckpointer().restore((folder / "params").absolute(), abstract_params(config))
    return config, params


# ----------------------------------------------------------------------------------------------------- saving


def export_tensors(
    config: MMDiTConfig, params: Mapping, dtype=None, layout: str = "diffusers"
) -> dict[str, LazyTensor]:
    """Lazy PyTorch-named tensors ("diffusers" or "sd3" names) of `params`, optionally cast to `dtype`."""
    groups = {name: start for name, start, _ in config.block_groups()}
    per_layer = {}
    for name, leaf in P.flatten(params).items():
        head, _, rest = name.partition("/")
        if head in groups:
            for j in range(leaf.shape[0]):
                per_layer[f"layers/{groups[head] + j}/{rest}"] = _slice(leaf, j)
        else:
            per_layer[name] = leaf
    stage = apply(expand(DIFFUSERS_TABLE, config.layer_tags()), P.to_lazy(per_layer), reverse=True)
    if stage.missing or stage.unused:
        raise LaddError(f"params do not match {config}: missing {stage.missing[:5]}, unexpected {stage.unused[:5]}")
    return to_layout(config, stage.tensors, dtype, layout)


def to_layout(
    config: MMDiTConfig, tensors: Mapping[str, LazyTensor], dtype=None, layout: str = "diffusers"
) -> dict[str, LazyTensor]:
    """diffusers-named tensors -> the tensors of a PyTorch `layout`, cast to `dtype`, pos_embed (re)computed."""
    pos = sincos_pos_embed(config)[None]
    tensors = {POS_EMBED: LazyTensor.of(pos, POS_EMBED), **{k: v for k, v in tensors.items() if k != POS_EMBED}}
    if dtype is not None:
        tensors = {k: _cast(t, dtype) for k, t in tensors.items()}
    if layout == "diffusers":
        return tensors
    sd3 = apply(expand(SD3_TABLE, config.layer_tags()), tensors, reverse=True)
    return {SD3_PREFIX + k: t for k, t in sd3.tensors.items()}


def _cast(t: LazyTensor, dtype) -> LazyTensor:
    return LazyTensor(t.shape, np.dtype(dtype), lambda: np.asarray(t.load()).astype(dtype, copy=False), t.origin)


class _slice:
    """Layer j of a stacked leaf, shaped like an array for LazyTensor; read only when converted."""

    def __init__(self, leaf, j: int):
        self.leaf, self.j = leaf, j
        self.shape, self.dtype = tuple(leaf.shape[1:]), np.dtype(leaf.dtype)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.leaf[self.j], dtype=dtype)


def save_mmdit(
    config: MMDiTConfig,
    params: Mapping,
    path: str | Path,
    format: str = "diffusers",
    dtype: str | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 10 * 2**30,
) -> Path:
    """Writes params as a diffusers transformer folder, an SD3 single file (loadable by diffusers' single-file
    converter) or an orbax checkpoint; `dtype` (e.g. "bfloat16") casts the PyTorch formats. The destination
    appears only once complete."""
    if format == "orbax":
        import orbax.checkpoint as ocp

        with atomic_path(path, overwrite) as tmp:
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save((tmp / "params").absolute(), params)
                ckptr.wait_until_finished()
            (tmp / "config.json").write_text(json.dumps({**config.to_diffusers(), ORBAX_MARKER: "orbax"}, indent=2))
        return Path(path)
    tensors = export_tensors(config, params, numpy_dtype(dtype), _layout(format))
    return _write_torch(config, tensors, path, format, overwrite, max_shard_bytes)


def convert_checkpoint(
    src: str | Path, dst: str | Path, format: str, dtype: str | None = None, overwrite=False
) -> Path:
    """Any supported checkpoint -> `format`. Between PyTorch layouts nothing is materialised: tensors stream
    from the source file to the destination one at a time."""
    if format == "orbax" or _orbax_folder(src) is not None:
        config, params = load_mmdit(src)
        return save_mmdit(config, params, dst, format, dtype, overwrite)
    config, tensors = open_mmdit(src)
    tensors = to_layout(config, tensors, numpy_dtype(dtype), _layout(format))
    return _write_torch(config, tensors, dst, format, overwrite)


def _layout(format: str) -> str:
    if format not in FORMATS:
        raise LaddError(f"unknown format {format!r}; choose one of {FORMATS}")
    return format


def _write_torch(
    config: MMDiTConfig,
    tensors: Mapping[str, LazyTensor],
    path,
    format: str,
    overwrite: bool,
    max_shard_bytes=10 * 2**30,
) -> Path:
    if format == "sd3":
        with atomic_path(path, overwrite, is_dir=False) as tmp:
            write_safetensors(tmp, tensors, {"format": "pt"})
        return Path(path)
    with atomic_path(path, overwrite) as tmp:
        write_folder(tmp, "diffusion_pytorch_model", tensors, max_shard_bytes)
        (tmp / "config.json").write_text(json.dumps(config.to_diffusers(), indent=2))
    return Path(path)


def numpy_dtype(dtype: str | None) -> np.dtype | None:
    """A storage dtype's name ("float32", "float16", "bfloat16") as a numpy dtype; None stays None."""
    if dtype is None:
        return None
    import ml_dtypes

    names = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    if dtype not in names:
        raise LaddError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return np.dtype(names[dtype])


def checkpoint_dtype(path: str | Path) -> str:
    """The floating dtype a PyTorch checkpoint stores, e.g. to keep it on conversion."""
    path = Path(path)
    if path.is_file():
        tensors = SafetensorsFile(path)
    else:
        if _orbax_folder(path) is not None:
            return "float32"
        folder = path / "transformer" if (path / "model_index.json").is_file() else path
        tensors = read_folder(folder, "diffusion_pytorch_model")
    first = next(iter(tensors.values()))
    return {"bfloat16": "bfloat16", "float16": "float16"}.get(first.dtype.name, "float32")
