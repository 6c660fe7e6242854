"""`ladd-jax synth`: the teacher's synthetic latents for LADD, sampled offline into ArrayRecord shards.

For prompt i of the input (.txt: one prompt a line, blank lines skipped; .jsonl: a "prompt" field a line;
.parquet: a column), the job takes the item seed s = `record_seeds(seed, [i])` (31 bits of
`fold_in(key(seed), i)`), draws the noise as `SD3Pipeline.initial_latents(1, h, w, seed=[s])` does, encodes the
prompt, runs the teacher's Euler sampler with classifier-free guidance (`SD3Pipeline.denoise`), and writes a
record: prompt, index i, seed s, noise, latent (the final latent exactly as `output_type="latent"` gives it),
context and pooled (unless `text_embeddings=False`), and the sampler settings. The layout of the shards, the
manifest and resuming are records.py's.

Multi-aspect jobs (`buckets`, data/buckets.py) give each prompt a bucket (a seeded draw, or a column of the prompts
file) and sample it at that size; the records are written grouped by bucket, each with its `bucket` [h, w], and
the manifest lists the buckets with their record ranges and latent shapes (records.py). Item i's seed and noise
still come from (seed, i) alone.

Conditioned teachers (inpainting, editing; conditioning.py): the prompts are a records folder with `cond` latents
(`ladd-jax encode-real` of images with masks or source images); item i is sampled with record i's prompt and cond,
and its record carries that cond, which distillation gives the student and the teacher alike.

Every call runs `batch_size` prompts per local device, sharded over all local devices along "data"; the last
batch of a shard (or of a bucket within it) is padded, so all calls have one shape per bucket and compile once.

Reproducibility: a record depends on its prompt, (seed, i), the settings, the weights and the per-device batch
size, never on the number of devices, hosts or shards. XLA picks kernels by the shapes it runs: a device runs the
same shapes whatever the device count, but another per-device batch runs other shapes and rounds differently
(on CPU ~1e-5 between batch 1 and 2), so `batch_size` is a setting a resumed job must repeat. With batch_size 1
a record's latent is bit for bit `pipe([prompt], seed=[s], output_type="latent")`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax import arguments
from ladd_jax.data.buckets import Bucket, assign_buckets, buckets_from_column, resolve_buckets
from ladd_jax.data.records import (
    MISMATCH_FIELDS,
    STORE_DTYPES,
    TEXT_FIELDS,
    check_output_folder,
    folder_fingerprint,
    iter_records,
    make_manifest,
    read_manifest,
    record_seeds,
    write_shards,
)
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json

PROMPT_SUFFIXES = (".txt", ".jsonl", ".parquet")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """The settings of a synth job (the CLI's flags, or the keys of a --config file)."""

    model: str  # a diffusers SD3 pipeline folder: the teacher and its text encoders
    prompts: str  # .txt, .jsonl or .parquet; or a records folder: its prompts, and its cond latents if it has them
    out: str  # the data folder to write (or resume)
    num_steps: int = 28
    cfg: float = 7.0  # classifier-free guidance scale (<= 1: none)
    height: int | None = None  # pixels; default: the model's size
    width: int | None = None
    seed: int = 0
    max_sequence_length: int = 256  # T5 tokens: context is [77 + this, joint_attention_dim]
    batch_size: int = 1  # prompts per local device per call
    shard_size: int = 256  # records per shard: the unit of resuming and of splitting work between hosts
    negative_prompt: str = ""
    store_dtype: str = "float32"  # dtype of the stored arrays: float32, bfloat16 or float16
    text_embeddings: bool = True  # False: no context/pooled in the records (re-encode at train time)
    dtype: str = "float32"  # compute dtype of the teacher and text encoders
    prompt_column: str = "prompt"  # the .jsonl field / .parquet column
    num_prompts: int | None = None  # only the first N prompts
    # Multi-aspect: "sd3" (SD3's aspect ratios at the model's size) or "HxW,HxW,..." in pixels; each prompt is
    # sampled at its bucket's size (data/buckets.py). None: every prompt at height x width.
    buckets: str | tuple | None = None
    bucket_column: str | None = None  # .jsonl field / .parquet column of "HxW" buckets; None: a seeded draw
    # .jsonl field / .parquet column of a caption that does not match each prompt (e.g. one object's shape changed):
    # its text embeddings are stored as mismatch_context / mismatch_pooled, the trainer's hard misaligned pairs.
    mismatch_column: str | None = None

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise LaddError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise LaddError(f"seed must be a non-negative integer (numpy draws the buckets from it), got {self.seed}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise LaddError(f"num_prompts must be at least 1 (or unset for all), got {self.num_prompts}")
        if self.store_dtype not in STORE_DTYPES:
            raise LaddError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {self.store_dtype!r}")
        if self.buckets and (self.height or self.width):
            raise LaddError("give either buckets (one size per prompt) or height/width (one size for all), not both")
        if self.bucket_column and not self.buckets:
            raise LaddError(f"bucket_column={self.bucket_column!r} needs the job's buckets; pass --buckets too")
        if self.mismatch_column and not self.text_embeddings:
            raise LaddError("mismatch_column stores text embeddings of mismatched captions; drop --no-text-embeddings")


def make_config(config: SynthConfig | Mapping[str, Any] | None = None, **overrides: Any) -> SynthConfig:
    """A SynthConfig from a config (a SynthConfig, dict or ml_collections ConfigDict) with keyword overrides."""
    if isinstance(config, SynthConfig):
        values = dataclasses.asdict(config)
    elif hasattr(config, "to_dict"):
        values = config.to_dict()
    else:
        values = dict(config or {})
    values.update(overrides)
    names = [f.name for f in dataclasses.fields(SynthConfig)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise LaddError(f"unknown synth settings {unknown}; the settings are {names}")
    missing = [k for k in ("model", "prompts", "out") if not values.get(k)]
    if missing:
        raise LaddError(f"synth needs {missing} (flags --{' --'.join(missing)}, or keys of the --config file)")
    return SynthConfig(**values)


def read_config_file(spec: str) -> dict[str, Any]:
    """`FILE.json`, or `FILE.py[:ARG]` whose `get_config(ARG)` returns a dict or ConfigDict of synth settings."""
    name, _, arg = spec.partition(":")
    path = Path(name)
    if path.suffix == ".json":
        return read_json(path, f"config file {path} does not exist")
    if path.suffix != ".py" or not path.is_file():
        raise LaddError(f"--config {spec}: expected an existing .py file (with get_config) or a .json file")
    spec_ = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise LaddError(f"{path} defines no get_config(arg=None); add one returning the synth settings")
    config = module.get_config(arg or None)
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# ------------------------------------------------------------------------------------------------ prompts


def read_prompts(path: str | Path, column: str = "prompt") -> list[str]:
    """The prompts of a .txt (one a line, blank lines skipped), .jsonl (`column` field) or .parquet file, or of
    the records of a data folder (in record order)."""
    path = Path(path)
    if path.is_dir():
        return [record["prompt"] for record in iter_records(path)]
    if path.suffix not in PROMPT_SUFFIXES:
        raise LaddError(f"prompts file {path} must end in one of {PROMPT_SUFFIXES}")
    if not path.is_file():
        raise LaddError(f"prompts file {path} does not exist")
    if path.suffix == ".parquet":
        prompts = _read_parquet(path, column)
    else:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise LaddError(f"cannot read prompts file {path} ({e}); it must be UTF-8 text") from e
        if path.suffix == ".txt":
            prompts = [line.strip() for line in lines if line.strip()]
        else:
            prompts = [_jsonl_prompt(path, n, line, column) for n, line in enumerate(lines, 1) if line.strip()]
    if not prompts:
        raise LaddError(f"prompts file {path} holds no prompts; give at least one")
    return prompts


def _jsonl_prompt(path: Path, line_number: int, line: str, column: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise LaddError(f"{path}, line {line_number}: not JSON ({e}); write one JSON object a line") from None
    prompt = value.get(column) if isinstance(value, dict) else None
    if not isinstance(prompt, str):
        raise LaddError(f"{path}, line {line_number}: no string field {column!r}; give each line one")
    return prompt


def _read_parquet(path: Path, column: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise LaddError(f"reading {path} needs pyarrow: pip install pyarrow") from e
    try:
        schema = pq.read_schema(path)
        if column not in schema.names:
            raise LaddError(f"{path} has no column {column!r} (columns: {schema.names}); pass --prompt-column")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise LaddError(f"cannot read prompts file {path} ({e}); is it a parquet file?") from e
    bad = next((i for i, v in enumerate(values) if not isinstance(v, str)), None)
    if bad is not None:
        raise LaddError(f"{path}: row {bad} of column {column!r} is {values[bad]!r}, not a string")
    return values


# ------------------------------------------------------------------------------------------------ the job


def pipeline_fingerprint(folder: str | Path, components: Sequence[str]) -> str:
    """folder_fingerprint of model_index.json and those of `components` an SD3 pipeline folder has."""
    from ladd_jax.pipeline import read_model_index

    present = [name for name, cls in read_model_index(folder).items() if cls is not None and name in components]
    return folder_fingerprint(folder, ["model_index.json", *present])


def _sampler(
    pipe: Any,
    config: SynthConfig,
    prompts: list[str],
    layout: list[tuple[Bucket, list[int]]],
    settings: dict,
    mismatched: list[str] | None = None,
) -> Callable:
    """produce(start, stop) for write_shards: the records [start, stop); `layout` lists each bucket's size and its
    prompts in record order (one bucket of all prompts for a one-size job); `mismatched`: each prompt's
    mismatched caption, whose text embeddings the records also hold."""
    import jax  # the CLI builds its parser from this module without loading jax

    cond = cond_source(config.prompts)
    per_call = config.batch_size * pipe.mesh.devices.size
    guided = config.cfg > 1.0
    bucketed = config.buckets is not None
    starts = np.cumsum([0] + [len(items) for _, items in layout]).tolist()

    def produce(start: int, stop: int) -> Iterator[dict[str, Any]]:
        for (size, bucket_items), first in zip(layout, starts[:-1], strict=True):  # a call samples one size
            segment = bucket_items[max(start - first, 0) : max(stop - first, 0)]
            for lo in range(0, len(segment), per_call):
                yield from sample(segment[lo : lo + per_call], size)

    def sample(items: list[int], size: Bucket) -> Iterator[dict[str, Any]]:
        padded = items + [items[-1]] * (per_call - len(items))  # one shape for every call
        seeds = record_seeds(config.seed, padded)
        noise = pipe.initial_latents(per_call, *size, seed=seeds.tolist())
        embeds, neg_embeds, pooled, neg_pooled = pipe.encode_prompt(
            [prompts[i] for i in padded], config.negative_prompt, config.max_sequence_length, guided
        )
        arrays = {"noise": noise}
        if cond is not None:
            arrays["cond"] = np.stack([np.asarray(cond[i]["cond"], np.float32) for i in padded])
        latent = pipe.denoise(
            noise, embeds, pooled, neg_embeds, neg_pooled, config.num_steps, config.cfg, cond=arrays.get("cond")
        )
        arrays["latent"] = latent
        if config.text_embeddings:
            arrays |= {"context": embeds, "pooled": pooled}
        if mismatched is not None:
            captions = [mismatched[i] for i in padded]
            embeds, _, pooled, _ = pipe.encode_prompt(captions, None, config.max_sequence_length, False)
            arrays |= dict(zip(MISMATCH_FIELDS, (embeds, pooled), strict=True))
        arrays = jax.device_get(arrays)
        for j, i in enumerate(items):
            record = {"prompt": prompts[i], "index": i, "seed": int(seeds[j]), "settings": settings}
            record |= {"bucket": list(size)} if bucketed else {}
            yield record | {name: np.asarray(a[j]) for name, a in arrays.items()}

    return produce


def _has_cond(prompts: str | Path) -> bool:
    """Whether the prompts are a records folder holding conditioning latents."""
    return Path(prompts).is_dir() and "cond" in read_manifest(prompts)["fields"]


def cond_source(prompts: str | Path) -> Any:
    """The conditioning latents of a records folder given as the prompts (a RecordSource of its `cond`), or None
    for a prompts file or a folder without them."""
    from ladd_jax.data.loader import RecordSource

    return RecordSource(prompts, ("cond",)) if _has_cond(prompts) else None


def _check_cond(config: SynthConfig, pipe: Any, latent_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The records' cond shape, checked against the teacher (a conditioned teacher needs a conditioned folder)."""
    if not _has_cond(config.prompts):
        if pipe.cond_channels:
            raise LaddError(
                f"{config.model} is a conditioned model ({pipe.cond_channels} conditioning channels): give as prompts "
                "a records folder with cond latents (`ladd-jax encode-real` with masks or source images)"
            )
        return None
    if config.buckets is not None:
        raise LaddError("conditioned synth samples at the conditioning's one size; drop --buckets")
    shape = tuple(read_manifest(config.prompts)["fields"]["cond"]["shape"])
    if shape != (*latent_shape[:2], pipe.cond_channels):
        raise LaddError(
            f"{config.prompts}'s cond latents are {shape}; {config.model} needs "
            f"{(*latent_shape[:2], pipe.cond_channels)} at this size: encode the conditioning with this teacher's VAE "
            "at the size synth samples"
        )
    return shape


def loaded_pipeline(model: str | Path, dtype: str, pipeline: Any = None) -> Any:
    """`pipeline`, an SD3Pipeline the caller loaded from `model` in `dtype` (checked), or else the folder loaded."""
    from ladd_jax.pipeline import SD3Pipeline

    if pipeline is None:
        return SD3Pipeline.from_pretrained(model, dtype=dtype)
    if Path(pipeline.folder).resolve() != Path(model).resolve() or pipeline.dtype != dtype:
        raise LaddError(
            f"the pipeline passed in was loaded from {pipeline.folder} in {pipeline.dtype}, not from {model} in "
            f"{dtype}; pass the matching pipeline or none"
        )
    return pipeline


def run_synth(
    config: SynthConfig | Mapping[str, Any] | None = None, *, pipeline: Any = None, **overrides: Any
) -> dict[str, Any]:
    """Runs (or resumes) a synth job; returns its manifest. `config`: a SynthConfig, dict or ConfigDict of
    SynthConfig's fields, `overrides` on top: `run_synth(model=..., prompts=..., out=..., num_steps=4)`.
    `pipeline`: the teacher as an SD3Pipeline already loaded from `model` (saves loading it again)."""
    from ladd_jax.pipeline import size_rules

    config = make_config(config, **overrides)
    prompts = read_prompts(config.prompts, config.prompt_column)[: config.num_prompts]
    mismatched = _read_mismatched(config, len(prompts))
    multiple, default = size_rules(config.model)  # fail before minutes of loading
    sizes, assigned = _bucket_prompts(config, len(prompts), multiple, default)
    check_output_folder(config.out)
    pipe = loaded_pipeline(config.model, config.dtype, pipeline)
    factor, t = pipe.vae_scale_factor, pipe.transformer_config
    latent = lambda size: (size[0] // factor, size[1] // factor, pipe.latent_channels)
    # Records grouped by bucket (prompt order within each), so that a bucket is a range of records; empty
    # buckets are left out.
    layout = [(size, np.flatnonzero(assigned == k).tolist()) for k, size in enumerate(sizes)]
    layout = [(size, items) for size, items in layout if items]
    if config.buckets is None:
        size_settings = {"height": sizes[0][0], "width": sizes[0][1]}
        shape, buckets = latent(sizes[0]), ()
    else:
        size_settings = {"buckets": [list(size) for size in sizes]}
        shapes = lambda size: dict.fromkeys(("noise", "latent"), latent(size))
        shape, buckets = None, [(size, len(items), shapes(size)) for size, items in layout]
    sampler = {
        "num_steps": config.num_steps,
        "cfg": config.cfg,
        "shift": pipe.shift,
        **size_settings,
        "max_sequence_length": config.max_sequence_length,
        "negative_prompt": config.negative_prompt,
    }
    fields = {"noise": (shape, config.store_dtype), "latent": (shape, config.store_dtype)}
    cond_shape = _check_cond(config, pipe, latent(sizes[0]))
    if cond_shape is not None:
        fields["cond"] = (cond_shape, config.store_dtype)
    if config.text_embeddings:
        fields["context"] = (
            (pipe.clip_max_length + config.max_sequence_length, t.joint_attention_dim),
            config.store_dtype,
        )
        fields["pooled"] = ((t.pooled_projection_dim,), config.store_dtype)
    if mismatched is not None:
        fields |= {mismatch: fields[text] for mismatch, text in zip(MISMATCH_FIELDS, TEXT_FIELDS, strict=True)}
    settings = sampler | {
        "seed": config.seed,
        "batch_size_per_device": config.batch_size,
        "dtype": config.dtype,
        "text_embeddings": config.text_embeddings,
        "prompts_sha256": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
        "model_fingerprint": pipeline_fingerprint(config.model, ("transformer", "scheduler", *TEXT_COMPONENTS)),
    }
    if cond_shape is not None:
        settings["cond_settings_sha256"] = hashlib.sha256(
            json.dumps(read_manifest(config.prompts)["settings"], sort_keys=True).encode()
        ).hexdigest()
    if mismatched is not None:  # only then: the settings of a job without them stay as they were
        settings["mismatch_sha256"] = hashlib.sha256(json.dumps(mismatched).encode()).hexdigest()
    if config.buckets is not None:  # the assignment decides the layout (a one-size job's settings stay as they were)
        settings["buckets_sha256"] = hashlib.sha256(assigned.astype(np.int64).tobytes()).hexdigest()
    origin = {"model": str(config.model), "prompts": str(config.prompts)}
    manifest = make_manifest("synthetic", len(prompts), config.shard_size, fields, settings, origin, buckets)
    write_shards(config.out, manifest, _sampler(pipe, config, prompts, layout, sampler, mismatched), desc="synth")
    return manifest


def _column(config: SynthConfig, column: str, num: int) -> list[str]:
    """A second column of the prompts file (bucket or mismatched caption), for its first `num` prompts."""
    if Path(config.prompts).suffix not in (".jsonl", ".parquet"):
        raise LaddError(f"{config.prompts} has no {column!r} column; use .jsonl or .parquet prompts that have it")
    return read_prompts(config.prompts, column)[:num]


def _read_mismatched(config: SynthConfig, num: int) -> list[str] | None:
    """Each prompt's mismatched caption (config.mismatch_column), or None without one."""
    return _column(config, config.mismatch_column, num) if config.mismatch_column else None


def _bucket_prompts(config: SynthConfig, num: int, multiple: int, default: int) -> tuple[list[Bucket], np.ndarray]:
    """(the job's sizes, each prompt's index into them): height x width for all, or the buckets."""
    from ladd_jax.pipeline import check_size

    if config.buckets is None:
        size = (config.height or default, config.width or default)
        check_size(*size, multiple)
        return [size], np.zeros(num, np.int64)
    buckets = resolve_buckets(config.buckets, default, multiple)
    if not config.bucket_column:
        return list(buckets), assign_buckets(num, len(buckets), config.seed)
    values = _column(config, config.bucket_column, num)
    return list(buckets), buckets_from_column(values, buckets, str(config.prompts))


# ------------------------------------------------------------------------------------------------ CLI


def add_synth_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `synth` subcommand. Unset flags fall back to the --config file, then to SynthConfig."""
    p = subparsers.add_parser(
        "synth",
        help="sample the teacher offline into ArrayRecord shards of (prompt, noise, latent, text embeddings)",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="FILE.py[:ARG] (get_config(ARG) -> settings) or FILE.json; flags override it")
    p.add_argument("--model", help="a diffusers Stable Diffusion 3 / 3.5 pipeline folder (the teacher)")
    p.add_argument(
        "--prompts",
        help='.txt (one a line), .jsonl (a "prompt" field) or .parquet (a column); or a records folder, whose cond '
        "latents (encode-real with masks or sources) condition an inpainting or editing teacher",
    )
    p.add_argument("--out", help="the data folder to write; re-running the same command resumes it")
    p.add_argument("--num-steps", dest="num_steps", type=int, help="Euler steps (default 28)")
    p.add_argument("--cfg", type=float, help="classifier-free guidance scale (default 7.0; <= 1: none)")
    p.add_argument("--height", type=int, help="pixels (default: the model's, 1024 for SD3)")
    p.add_argument("--width", type=int, help="pixels (default: the model's, 1024 for SD3)")
    p.add_argument(
        "--seed", type=arguments.seed, help="base seed: item i's noise comes from (seed, i) alone (default 0)"
    )
    p.add_argument("--max-sequence-length", dest="max_sequence_length", type=int, help="T5 tokens (default 256)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="prompts per local device per call (default 1)")
    p.add_argument("--shard-size", dest="shard_size", type=int, help="records per shard (default 256)")
    p.add_argument("--negative-prompt", dest="negative_prompt", help="for guidance (default: empty)")
    p.add_argument("--store-dtype", dest="store_dtype", choices=sorted(STORE_DTYPES), help="default float32")
    p.add_argument(
        "--text-embeddings",
        dest="text_embeddings",
        action=argparse.BooleanOptionalAction,
        help="store context and pooled (default); --no-text-embeddings leaves them out",
    )
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="compute dtype (default float32)")
    p.add_argument("--prompt-column", dest="prompt_column", help='.jsonl field / .parquet column (default "prompt")')
    p.add_argument("--num-prompts", dest="num_prompts", type=int, help="only the first N prompts")
    p.add_argument(
        "--buckets", help="multi-aspect: \"sd3\" (SD3's aspect ratios at the model's size) or HxW,HxW,... pixels"
    )
    p.add_argument("--bucket-column", dest="bucket_column", help='.jsonl field / .parquet column of "HxW" buckets')
    p.add_argument(
        "--mismatch-column",
        dest="mismatch_column",
        help=".jsonl field / .parquet column of a caption that does not match each prompt: its text embeddings are "
        "stored for the trainer's hard misaligned pairs (misaligned_source=records)",
    )
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    flags = {k: v for k, v in vars(args).items() if k not in ("fn", "command", "config")}
    base = read_config_file(args.config) if hasattr(args, "config") else {}
    config = make_config(base, **flags)
    start = time.perf_counter()
    manifest = run_synth(config)
    seconds = time.perf_counter() - start
    n = manifest["num_records"]
    print(
        f"{config.out}: {n} records in {len(manifest['shards'])} shards; this run took {seconds:.1f} s "
        "(with loading and compilation; the bar shows the sampling rate)"
    )
