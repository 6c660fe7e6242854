"""Latent records on disk: the record schema, ArrayRecord shards, the JSON manifest, and the resumable writer.

A data folder (from `ladd-jax synth` or `ladd-jax encode-real`) holds `manifest.json` and the shards
`shard-KKKKK-of-NNNNN.array_record`. Shard k holds items [k * shard_size, min((k + 1) * shard_size, num_records))
of the job's input, in order, so the layout depends on the item count and the shard size alone: hosts split the
shards between them (shard k belongs to process k mod process_count), a shard is written under a temporary name
and renamed when complete, and a resumed job skips the finished shards and redoes the others.

A record is a msgpack map: `prompt` (str), `index` (the item's position in the job's input), `seed` (int),
`settings` (a map), sometimes other strings or ints (`image`), and `arrays`: {name: [dtype name, shape, raw
little-endian C-order bytes]}. `decode_record` returns one flat dict with the arrays as (read-only) numpy arrays.
Array fields: `noise` and `latent` [h, w, C] (NHWC), `context` [L, D] and `pooled` [P] (the text embeddings);
the manifest lists which a folder holds, with their shapes and stored dtypes.

Multi-aspect folders (version 2, `ladd-jax synth --buckets`) hold records of several image sizes, grouped by
bucket: the manifest's `buckets` list each size (pixels), its range of records [start, start + num_records) and
the shapes of the fields whose shape is per bucket (their `fields` entry has shape null); each record carries its
`bucket` [height, width]. `record_buckets` reads both versions alike: a one-size folder is one bucket.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from tqdm.auto import tqdm

from ladd_jax.atomic import atomic_path, make_writable_folder
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "ladd_jax.records"
VERSION = 1
BUCKETED_VERSION = 2  # per-bucket field shapes; written only by multi-aspect jobs, so one-size folders stay 1
SOURCES = ("synthetic", "real")
TEXT_FIELDS = ("context", "pooled")
# The text embeddings of a caption that does not match the record's latent (synth's mismatch column): the
# trainer's hard misaligned pairs (config misaligned_source "records").
MISMATCH_FIELDS = ("mismatch_context", "mismatch_pooled")
STORE_DTYPES = {
    "float32": np.dtype(np.float32),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
}
# One record per chunk: grain reads any record without decoding its neighbours (ArrayRecord's advice for random
# access); no compression, latents and embeddings hardly compress and decoding would cost loader time.
SHARD_OPTIONS = "group_size:1,uncompressed"
HASH_CHUNK = 16 * 2**20
# What reading a damaged shard raises: riegeli's checksum errors, msgpack's and our own schema checks.
CORRUPT_ERRORS = (RuntimeError, ValueError, KeyError, TypeError, msgpack.UnpackException)
# Manifest entries that may differ between runs of the same job (where the inputs were read from).
PROVENANCE = "origin"


# ------------------------------------------------------------------------------------------------ records


def encode_record(record: Mapping[str, Any]) -> bytes:
    """A record dict (numpy arrays, str, int, a settings map) -> its msgpack bytes."""
    arrays, rest = {}, {}
    for name, value in record.items():
        if isinstance(value, np.ndarray):
            arrays[name] = [value.dtype.name, list(value.shape), np.ascontiguousarray(value).tobytes()]
        else:
            rest[name] = value
    return msgpack.packb({**rest, "arrays": arrays}, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """msgpack bytes -> the record dict, arrays as read-only numpy views of the bytes."""
    raw = msgpack.unpackb(data, raw=False)
    out = {k: v for k, v in raw.items() if k != "arrays"}
    for name, (dtype, shape, buffer) in raw["arrays"].items():
        if dtype not in STORE_DTYPES:
            raise ValueError(f"array {name!r} has the unknown dtype {dtype!r}")
        out[name] = np.frombuffer(buffer, STORE_DTYPES[dtype]).reshape(shape)
    return out


def check_record(record: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]]) -> None:
    """Raises ValueError unless the record holds every manifest field with its shape and dtype."""
    for name, spec in fields.items():
        value = record.get(name)
        if not isinstance(value, np.ndarray):
            raise ValueError(f"field {name!r} is missing")
        if list(value.shape) != list(spec["shape"]) or value.dtype.name != spec["dtype"]:
            got, want = f"{value.dtype.name}{list(value.shape)}", f"{spec['dtype']}{spec['shape']}"
            raise ValueError(f"field {name!r} is {got}, the manifest says {want}")
    if not isinstance(record.get("prompt"), str):
        raise ValueError("the prompt is missing")


def to_store_dtype(name: str, value: Any, dtype: str) -> np.ndarray:
    """A float array in the dtype records store; float16 must not overflow."""
    out = np.asarray(value).astype(STORE_DTYPES[dtype])
    if dtype == "float16" and not np.isfinite(out).all():
        raise LaddError(
            f"{name} overflows float16 (values up to {np.abs(np.asarray(value)).max():.4g}); store bfloat16 or float32"
        )
    return out


def record_seeds(seed: int, indices: Sequence[int]) -> np.ndarray:
    """The per-item seeds of a job: item i's seed is 31 bits of `fold_in(key(seed), i)`, so it depends on (seed, i)
    alone, never on batching, devices or hosts; `jax.random.key(s)` of it then draws the item's noise."""
    import jax  # here and in write_shards: the CLI builds its parsers from this module without loading jax
    import jax.numpy as jnp

    key = jax.random.key(seed)
    bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), dtype=jnp.uint32))(
        jnp.asarray(indices, jnp.uint32)
    )
    return np.asarray(bits >> 1).astype(np.int64)  # 31 bits: a non-negative int32, a valid seed everywhere


# ------------------------------------------------------------------------------------------------ manifest


def shard_name(k: int, num_shards: int) -> str:
    return f"shard-{k:05d}-of-{num_shards:05d}.array_record"


def make_manifest(
    source: str,
    num_records: int,
    shard_size: int,
    fields: Mapping[str, tuple[Sequence[int] | None, str]],
    settings: Mapping[str, Any],
    origin: Mapping[str, Any],
    buckets: Sequence[tuple[Sequence[int], int, Mapping[str, Sequence[int]]]] = (),
) -> dict[str, Any]:
    """The manifest of a job: `fields` name -> (shape, stored dtype); `settings` everything that determines the
    records (compared on resume); `origin` where the inputs were read from (not compared). A multi-aspect job
    gives `buckets`: ((height, width), record count, {field: shape}) in record order, and shape None in `fields`
    for the fields whose shape each bucket gives."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if buckets and sum(n for _, n, _ in buckets) != num_records:
        raise ValueError(f"the buckets hold {sum(n for _, n, _ in buckets)} records, not {num_records}")
    num_shards = -(-num_records // shard_size)
    shards = []
    for k in range(num_shards):
        start = k * shard_size
        shards.append(
            {"file": shard_name(k, num_shards), "start": start, "num_records": min(shard_size, num_records - start)}
        )
    manifest = {
        "format": FORMAT,
        "version": BUCKETED_VERSION if buckets else VERSION,
        "source": source,
        "num_records": num_records,
        "shard_size": shard_size,
        "shards": shards,
        "fields": {name: {"shape": _shape(shape), "dtype": dtype} for name, (shape, dtype) in fields.items()},
        "settings": dict(settings),
        PROVENANCE: dict(origin),
    }
    if buckets:
        starts = np.cumsum([0] + [n for _, n, _ in buckets]).tolist()
        manifest["buckets"] = [
            {
                "size": _shape(size),
                "start": start,
                "num_records": n,
                "shapes": {k: _shape(v) for k, v in shapes.items()},
            }
            for (size, n, shapes), start in zip(buckets, starts[:-1], strict=True)
        ]
    return manifest


def _shape(shape: Sequence[int] | None) -> list[int] | None:
    return None if shape is None else [int(d) for d in shape]


@dataclasses.dataclass(frozen=True)
class RecordBucket:
    """The records [start, start + num_records) of a folder, all of one size, and their fields' shapes/dtypes."""

    size: tuple[int, int] | None  # (height, width) in pixels; None where the folder does not say (encode-real)
    start: int
    num_records: int
    fields: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": name}


def record_buckets(manifest: Mapping[str, Any]) -> list[RecordBucket]:
    """The folder's buckets in record order; a one-size folder (version 1) is one bucket of the settings' size."""
    fields = manifest["fields"]
    if "buckets" not in manifest:
        settings = manifest["settings"]
        size = (settings["height"], settings["width"]) if "height" in settings and "width" in settings else None
        return [RecordBucket(size, 0, manifest["num_records"], dict(fields))]
    return [
        RecordBucket(
            tuple(b["size"]),
            b["start"],
            b["num_records"],
            {k: {"shape": b["shapes"].get(k, f["shape"]), "dtype": f["dtype"]} for k, f in fields.items()},
        )
        for b in manifest["buckets"]
    ]


def bucket_at(buckets: Sequence[RecordBucket], index: int) -> RecordBucket:
    """The bucket holding record `index`."""
    return buckets[bisect.bisect_right([b.start for b in buckets], index) - 1]


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    """The folder's manifest.json, checked for its format and for shards that tile [0, num_records)."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    manifest = read_json(
        path, f"{data_dir} has no {MANIFEST}; point at a folder written by `ladd-jax synth` or `ladd-jax encode-real`"
    )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LaddError(f"{path} is not a ladd_jax records manifest (format {FORMAT!r}); point at a synth output")
    if manifest.get("version") not in (VERSION, BUCKETED_VERSION):
        raise LaddError(
            f"{path} has version {manifest.get('version')}, this ladd_jax reads {VERSION} and {BUCKETED_VERSION}; "
            "re-run the job"
        )
    missing = [k for k in ("source", "num_records", "shards", "fields", "settings") if k not in manifest]
    if missing:
        raise LaddError(f"{path} lacks {missing}; it is damaged: re-run the job into a new folder")
    expected = 0
    for shard in manifest["shards"]:
        if shard.get("start") != expected or not shard.get("num_records", 0) > 0:
            raise LaddError(f"{path}: shard {shard.get('file')} does not continue at record {expected}; it is damaged")
        expected += shard["num_records"]
    if expected != manifest["num_records"]:
        raise LaddError(f"{path}: the shards hold {expected} records, num_records says {manifest['num_records']}")
    buckets = manifest.get("buckets", [{"start": 0, "num_records": expected}])
    if [b.get("start") for b in buckets] != np.cumsum([0] + [b.get("num_records", 0) for b in buckets])[:-1].tolist():
        raise LaddError(f"{path}: its buckets do not tile the records in order; it is damaged: re-run the job")
    return manifest


def _open_shard(path: Path, expected: int) -> ArrayRecordReader:
    if not path.is_file():
        raise LaddError(
            f"{path} is missing, though the manifest lists it: the job that wrote {path.parent} did not finish; "
            "re-run the same command to resume it"
        )
    try:
        reader = ArrayRecordReader(str(path))
    except RuntimeError as e:
        raise LaddError(f"{path} is not a readable ArrayRecord file ({e}); delete it and re-run the job") from e
    count = reader.num_records()
    if not reader.ok() or count != expected:
        try:
            reader.close()
            problem = ""
        except RuntimeError as e:  # a damaged file reports its error on closing
            problem = f" ({e})"
        raise LaddError(
            f"{path} holds {count} records, the manifest says {expected}{problem}: it is truncated or from another "
            "run; delete it and re-run the same command to rewrite it"
        )
    return reader


def check_shards(data_dir: str | Path, manifest: Mapping[str, Any]) -> list[Path]:
    """The shard paths, after checking that each exists with the manifest's record count and that the folder holds
    no shard the manifest does not list."""
    data_dir = Path(data_dir)
    listed = {s["file"] for s in manifest["shards"]}
    strays = sorted(p.name for p in data_dir.glob("shard-*.array_record") if p.name not in listed)
    if strays:
        raise LaddError(
            f"{data_dir} holds shards its manifest does not list ({', '.join(strays[:3])}...): the folder mixes two "
            "runs; write each run into its own folder"
        )
    paths = []
    for shard in manifest["shards"]:
        path = data_dir / shard["file"]
        _open_shard(path, shard["num_records"]).close()
        paths.append(path)
    return paths


def corrupt_record(path: Path | str, index: int, error: Exception, skip: bool) -> None:
    """Raises the error for a damaged record, or with `skip` logs what is skipped."""
    what = f"{path}: record {index} is corrupt ({error})"
    if not skip:
        raise LaddError(
            f"{what}; delete that shard and re-run the job to rewrite it, or skip such records (--skip-corrupt)"
        )
    logger.warning("skipping %s", what)


def iter_records(data_dir: str | Path, skip_corrupt: bool = False) -> Iterator[dict[str, Any]]:
    """Every record of a data folder in order, as dicts: prompt (str), index and seed (int), settings (dict), and
    the manifest's array fields as numpy arrays in their stored dtype. A damaged record raises a LaddError naming
    the file and the record, or with `skip_corrupt` is logged and skipped."""
    manifest = read_manifest(data_dir)
    buckets = record_buckets(manifest)
    for path, shard in zip(check_shards(data_dir, manifest), manifest["shards"], strict=True):
        reader = _open_shard(path, shard["num_records"])
        try:
            for r in range(shard["num_records"]):
                try:
                    record = decode_record(reader.read([r])[0])
                    check_record(record, bucket_at(buckets, shard["start"] + r).fields)
                except CORRUPT_ERRORS as e:
                    corrupt_record(path, r, e, skip_corrupt)
                    continue
                yield record
        finally:
            reader.close()


# ------------------------------------------------------------------------------------------------ writing


def folder_fingerprint(folder: str | Path, parts: Iterable[str]) -> str:
    """sha256 over the names and bytes of every file in the given files / sub-folders of `folder` (the weights,
    configs and tokenizers a job read), so a manifest tells which model wrote it."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = []
    for part in parts:
        path = folder / part
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _check_same_job(path: Path, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    new = json.loads(json.dumps(new))  # tuples -> lists, as the stored one has them
    changed = sorted(k for k in set(old) | set(new) if k != PROVENANCE and old.get(k) != new.get(k))
    if not changed:
        return
    details = []
    for key in changed:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            details += [
                f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            ]
        else:
            details.append(key)
    raise LaddError(
        f"{path} describes another job ({'; '.join(details)[:600]}); resume with the same settings, or write into a "
        "new folder"
    )


def check_output_folder(out_dir: str | Path) -> Path:
    """`out_dir`, created (an empty data folder is a job to resume) and checked writable: fails early, before any
    loading, when it cannot be."""
    out_dir = Path(out_dir)
    parent = out_dir.absolute().parent
    if not parent.is_dir():
        raise LaddError(f"cannot write {out_dir}: folder {parent} does not exist; create it first")
    if out_dir.exists() and not out_dir.is_dir():
        raise LaddError(f"{out_dir} is a file, not a data folder; choose another --out")
    return make_writable_folder(out_dir, "the data folder")


def write_shards(
    out_dir: str | Path,
    manifest: Mapping[str, Any],
    produce: Callable[[int, int], Iterator[dict[str, Any]]],
    desc: str = "records",
) -> int:
    """Writes this process's missing shards of `manifest` into `out_dir`; returns how many records it wrote.

    `produce(start, stop)` yields the records of items [start, stop) in order (float arrays are cast to the
    manifest's dtypes here). Process 0 writes the manifest first; a folder whose manifest describes another job is
    refused. Shards are written under a temporary name and renamed when complete; finished shards are skipped, and
    the temporary files an interrupted run left behind are removed."""
    import jax

    out_dir = check_output_folder(out_dir)
    path = out_dir / MANIFEST
    if path.exists():
        _check_same_job(path, read_manifest(out_dir), manifest)
    elif jax.process_index() == 0:
        with atomic_path(path, is_dir=False) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1))

    count = jax.process_count()
    mine = [s for k, s in enumerate(manifest["shards"]) if k % count == jax.process_index()]
    todo = []
    for shard in mine:
        for stale in out_dir.glob(f".{shard['file']}.tmp-*"):
            stale.unlink()
        if (out_dir / shard["file"]).exists():
            _open_shard(out_dir / shard["file"], shard["num_records"]).close()
        else:
            todo.append(shard)
    total = sum(s["num_records"] for s in mine)
    left = sum(s["num_records"] for s in todo)
    written = 0
    with tqdm(total=total, initial=total - left, desc=desc, unit="sample", dynamic_ncols=True) as bar:
        for shard in todo:
            with atomic_path(out_dir / shard["file"], is_dir=False) as tmp:
                writer = ArrayRecordWriter(str(tmp), SHARD_OPTIONS)
                try:
                    written += _write_shard(writer, record_buckets(manifest), produce, shard, bar)
                finally:
                    writer.close()
    return written


def _write_shard(
    writer: ArrayRecordWriter, buckets: Sequence[RecordBucket], produce: Callable, shard: Mapping, bar: tqdm
) -> int:
    start, n = shard["start"], shard["num_records"]
    count = 0
    for record in produce(start, start + n):
        fields = bucket_at(buckets, start + count).fields
        record = {k: to_store_dtype(k, v, fields[k]["dtype"]) if k in fields else v for k, v in record.items()}
        check_record(record, fields)
        writer.write(encode_record(record))
        count += 1
        bar.update(1)
    if count != n:
        raise RuntimeError(f"produce({start}, {start + n}) gave {count} records instead of {n}")
    return count
