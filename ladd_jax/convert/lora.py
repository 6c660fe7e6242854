"""MMDiT LoRA adapters (models/lora.py) to and from the diffusers/peft LoRA file that
`StableDiffusion3Pipeline.load_lora_weights(DIR)` reads and `save_lora_weights` writes.

The file (`pytorch_lora_weights.safetensors`) holds "transformer.transformer_blocks.{i}.{module}.lora_A.weight"
[r, in] and "...lora_B.weight" [out, r] per adapted layer; rank, alpha and the adapted modules travel in its
metadata ("lora_adapter_metadata": peft LoraConfig fields prefixed "transformer.", as diffusers writes them).
Module names come from the MMDiT's conversion table (convert/mmdit.py), so the two cannot disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ladd_jax.convert.mmdit import DIFFUSERS_TABLE, numpy_dtype
from ladd_jax.convert.params import to_lazy
from ladd_jax.convert.safetensors_io import SafetensorsFile, write_safetensors
from ladd_jax.convert.table import LINEAR
from ladd_jax.errors import LaddError
from ladd_jax.models.lora import LoraSpec, lora_paths, merge, module_at, set_at
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights(DIR) looks for
PREFIX = "transformer."
METADATA_KEY = "lora_adapter_metadata"
_BLOCK, _LAYER = "transformer_blocks.{i}.", "layers/{i}/"
# diffusers' module names (peft's target_modules) of every attention and MLP projection of a block; the attn2
# ones exist only in MMDiT-X (SD3.5-medium) and are skipped elsewhere.
ATTENTION_AND_MLP = (
    *("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    *("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
    *("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    *("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"),
)
_KEY = re.compile(r"transformer_blocks\.(\d+)\.(.+)\.lora_([AB])\.weight")


def block_modules() -> dict[str, str]:
    """diffusers' linear layers inside a block ("attn.to_out.0") -> their Flax module paths ("attn/to_out")."""
    out = {}
    for r in DIFFUSERS_TABLE:
        src, dst = r.src[0], r.dst[0]
        if r.hook == LINEAR and src.startswith(_BLOCK) and dst.startswith(_LAYER):
            out[src[len(_BLOCK) : -len(".weight")]] = dst[len(_LAYER) : -len("/kernel")]
    return out


def flax_targets(names: Sequence[str]) -> tuple[str, ...]:
    """diffusers/peft module names (as in a LoRA training script's target_modules) -> Flax module paths."""
    table = block_modules()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise LaddError(f"LoRA targets {unknown} are not linear layers of an SD3 block; choose from {sorted(table)}")
    return tuple(table[n] for n in names)


def diffusers_names(config: MMDiTConfig, lora: dict) -> dict[tuple[str, int], str]:
    """(module path in the adapter tree, layer in its group) -> diffusers' module name, block index included."""
    to_diffusers = {v: k for k, v in block_modules().items()}
    starts = {name: start for name, start, _ in config.block_groups()}
    out = {}
    for path in lora_paths(lora):
        group, module = path.split("/", 1)
        for j in range(np.shape(module_at(lora, path)["lora_a"])[0]):
            out[(path, j)] = f"transformer_blocks.{starts[group] + j}.{to_diffusers[module]}"
    return out


def save_lora(path: str | Path, config: MMDiTConfig, lora: dict, spec: LoraSpec, dtype: str | None = None) -> Path:
    """Writes `lora` (the adapters of an MMDiT of `config`) as a diffusers/peft LoRA file, stored in `dtype`
    ("float32", "bfloat16", "float16"; default float32); `path` is a folder (the file is `WEIGHT_NAME` in it) or
    a .safetensors file."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / WEIGHT_NAME
    file.parent.mkdir(parents=True, exist_ok=True)
    flat, modules = {}, []
    for (module_path, j), name in diffusers_names(config, lora).items():
        adapter = module_at(lora, module_path)
        flat[f"{PREFIX}{name}.lora_A.weight"] = np.asarray(adapter["lora_a"][j], np.float32).T
        flat[f"{PREFIX}{name}.lora_B.weight"] = np.asarray(adapter["lora_b"][j], np.float32).T
        modules.append(name)
    # Full module names: peft matches them exactly, so the file adapts the very layers it holds.
    peft_config = {"r": spec.rank, "lora_alpha": spec.alpha, "target_modules": sorted(modules)}
    metadata = {"format": "pt", METADATA_KEY: json.dumps({f"{PREFIX}{k}": v for k, v in peft_config.items()})}
    write_safetensors(file, to_lazy(flat, numpy_dtype(dtype)), metadata)
    return file


def _read_alpha(file: SafetensorsFile, rank: int) -> float:
    raw = (file.metadata or {}).get(METADATA_KEY)
    if not raw:
        return float(rank)  # no metadata: peft's default, alpha = r (scale 1), as diffusers loads such files
    meta = json.loads(raw)
    patterns = [k for k in ("rank_pattern", "alpha_pattern") if meta.get(f"{PREFIX}{k}")]
    if patterns:
        raise LaddError(f"{file.path}: per-layer {patterns} are not supported; use one rank and alpha for all layers")
    if meta.get(f"{PREFIX}use_rslora"):
        raise LaddError(f"{file.path}: rank-stabilised LoRA (use_rslora) is not supported")
    return float(meta.get(f"{PREFIX}lora_alpha", rank))


def load_lora(path: str | Path, config: MMDiTConfig) -> tuple[LoraSpec, dict]:
    """(spec, adapter tree) of a diffusers/peft SD3 LoRA file (or a folder holding `WEIGHT_NAME`) for an MMDiT of
    `config`. Layers the file leaves out get zero adapters (no change), so any subset of blocks loads."""
    path = Path(path)
    file_path = path / WEIGHT_NAME if path.is_dir() else path
    if not file_path.is_file():
        raise LaddError(
            f"{file_path} does not exist; point at a LoRA .safetensors file or the folder holding {WEIGHT_NAME}"
        )
    file = SafetensorsFile(file_path)
    foreign = [k for k in file if not k.startswith(PREFIX)]
    if foreign:
        raise LaddError(
            f"{file_path}: {len(foreign)} tensors are not the transformer's (e.g. {foreign[0]}); ladd_jax loads "
            "transformer LoRAs only (diffusers/peft names 'transformer.transformer_blocks.*.lora_A.weight')"
        )
    table = block_modules()
    pairs: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key in file:
        m = _KEY.fullmatch(key[len(PREFIX) :])
        if m is None or m.group(2) not in table:
            raise LaddError(
                f"{file_path}: '{key}' is not a LoRA of an SD3 block's linear layer; ladd_jax reads peft's "
                "'transformer.transformer_blocks.{i}.{module}.lora_A/lora_B.weight'"
            )
        pairs.setdefault((int(m.group(1)), table[m.group(2)]), {})[m.group(3)] = np.asarray(
            file[key].load(), np.float32
        )
    if not pairs:
        raise LaddError(f"{file_path} holds no LoRA tensors")
    half = [f"block {i} {mod}" for (i, mod), ab in pairs.items() if set(ab) != {"A", "B"}]
    if half:
        raise LaddError(f"{file_path}: {half} have lora_A or lora_B but not both; the file is incomplete")
    ranks = sorted({ab["A"].shape[0] for ab in pairs.values()})
    if len(ranks) > 1:
        raise LaddError(f"{file_path}: adapters of ranks {ranks}; ladd_jax needs one rank for all layers")
    rank = ranks[0]
    spec = LoraSpec(rank, _read_alpha(file, rank), tuple(dict.fromkeys(mod for _, mod in sorted(pairs))))
    return spec, _stack(config, pairs, rank, str(file_path))


def _stack(config: MMDiTConfig, pairs: dict, rank: int, what: str) -> dict:
    """Per-layer (A, B) pairs -> the adapter tree of the model's block groups, zeros where a layer has none."""
    shapes = abstract_params(config)
    lora: dict = {}
    used = set()
    for group, start, _ in config.block_groups():
        for module in dict.fromkeys(mod for _, mod in pairs):
            node = module_at(shapes[group], module)
            if node is None:
                continue
            layers, d_in, d_out = node["kernel"].shape
            a, b = np.zeros((layers, d_in, rank), np.float32), np.zeros((layers, rank, d_out), np.float32)
            for j in range(layers):
                ab = pairs.get((start + j, module))
                if ab is None:
                    continue
                if ab["A"].shape != (rank, d_in) or ab["B"].shape != (d_out, rank):
                    raise LaddError(
                        f"{what}: block {start + j} {module}: lora_A {ab['A'].shape}, lora_B {ab['B'].shape}; this "
                        f"MMDiT needs [{rank}, {d_in}] and [{d_out}, {rank}]: the LoRA belongs to another model"
                    )
                a[j], b[j] = ab["A"].T, ab["B"].T
                used.add((start + j, module))
            set_at(lora, f"{group}/{module}", dict(lora_a=a, lora_b=b))
    extra = sorted(set(pairs) - used)
    if extra:
        raise LaddError(f"{what}: adapters for layers this {config.num_layers}-block MMDiT lacks: {extra[:5]}")
    return lora


def apply_lora_file(config: MMDiTConfig, params: dict, path: str | Path, weight: float = 1.0) -> dict:
    """`params` with the LoRA file merged in, its update scaled by `weight` (diffusers' adapter weight)."""
    spec, lora = load_lora(path, config)
    return merge(params, lora, weight * spec.scale)
