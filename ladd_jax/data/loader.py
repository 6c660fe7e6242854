"""The training loader: grain over a data folder's shards, one global jax.Array batch per step.

Per process: a slice of the records (record r when r mod K == k, where the process holds block k of the K row
blocks of the global batch: k = jax.process_index(), K = jax.process_count() for meshes whose devices are ordered
by process, as jax.make_mesh orders them; num_records // K records each, so that the processes' epochs end
together) -> a seeded global shuffle of the slice, reshuffled every epoch -> repeat -> decoding in READ_THREADS
threads -> batches of global_batch_size / K rows (the remainder of the last epoch dropped) -> optional worker
processes (`worker_count`) -> a prefetch thread (`prefetch` batches). `next(loader)` turns the local batch into
global arrays with `jax.make_array_from_process_local_data` on NamedSharding(mesh, P(batch_axes)) and casts them to
float32 on the devices (bf16/fp16 records travel at their size).

Checkpointing: `loader.iterator` is the grain DatasetIterator. With orbax it is the item of
`grain.checkpoint.CheckpointSave(loader.iterator)` / `grain.checkpoint.CheckpointRestore(loader.iterator)`
(grain 0.2.18; e.g. inside `ocp.args.Composite`; one JSON file per process); without orbax, `get_state()` and
`set_state(state)`. A restored loader continues exactly the sequence of an uninterrupted one when it is built with
the same folder, seed, batch size, fields, mesh layout and process count.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from grain.experimental import ThreadPrefetchIterDataset
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ladd_jax.data.records import (
    CORRUPT_ERRORS,
    TEXT_FIELDS,
    check_record,
    check_shards,
    corrupt_record,
    decode_record,
    read_manifest,
)
from ladd_jax.errors import LaddError

READ_THREADS = 4  # decoding threads per process (ArrayRecord reads release the GIL)
READ_BUFFER = 64  # records read ahead per process


class RecordSource:
    """grain's random-access source protocol over a data folder: record i -> {field: array in its stored dtype}, or
    None for a damaged record with `skip_corrupt` (grain then leaves it out)."""

    def __init__(self, data_dir: str | Path, fields: Sequence[str], skip_corrupt: bool = False):
        manifest = read_manifest(data_dir)
        self.paths = check_shards(data_dir, manifest)
        self.starts = [shard["start"] for shard in manifest["shards"]]
        self.fields = {name: manifest["fields"][name] for name in fields}
        self.skip_corrupt = skip_corrupt
        self.num_records = manifest["num_records"]
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, np.ndarray] | None:
        try:
            record = decode_record(self._source[index])
            check_record(record, self.fields)
        except CORRUPT_ERRORS as e:
            k = bisect.bisect_right(self.starts, index) - 1
            corrupt_record(self.paths[k], index - self.starts[k], e, self.skip_corrupt)
            return None
        return {name: record[name] for name in self.fields}


def _process_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, int]:
    """(first row, number of rows) of the global batch that this process's devices hold: one contiguous block."""
    indices = sharding.addressable_devices_indices_map((global_batch,)).values()
    rows = sorted(set().union(*(range(*index[0].indices(global_batch)[:2]) for index in indices)))
    start, size = rows[0], len(rows)
    if rows != list(range(start, start + size)) or global_batch % size or start % size:
        raise LaddError(
            f"this process's devices hold rows {rows[:8]}... of the global batch, not one of equal contiguous blocks; "
            "order the mesh's devices by process (jax.make_mesh does)"
        )
    return start, size


def _allow_unparsed_absl_flags() -> None:
    """grain 0.2.18's worker processes read an absl flag, which fails in a program that never parsed absl flags
    (google/grain#1355); marking them parsed keeps every flag at its default."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@jax.jit
def _to_float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


class Loader:
    """`next(loader)` -> {field: float32 jax.Array [global_batch_size, ...]}, the batch axis sharded over
    `batch_axes` of `mesh`. `num_epochs` None repeats forever; `worker_count` > 0 decodes in that many processes;
    `prefetch` batches are prepared ahead in a thread. `skip_corrupt` logs and leaves out damaged records instead of
    raising."""

    def __init__(
        self,
        data_dir: str | Path,
        global_batch_size: int,
        mesh: Mesh,
        *,
        seed: int = 0,
        fields: Sequence[str] = ("latent", "context", "pooled"),
        batch_axes: tuple[str, ...] = ("data",),
        shuffle: bool = True,
        num_epochs: int | None = None,
        worker_count: int = 0,
        prefetch: int = 2,
        skip_corrupt: bool = False,
    ):
        manifest = read_manifest(data_dir)
        fields = tuple(fields)
        missing = [f for f in fields if f not in manifest["fields"]]
        if any(f in TEXT_FIELDS for f in missing) and not manifest["settings"].get("text_embeddings", True):
            raise LaddError(
                f"{data_dir} was written without text embeddings (--no-text-embeddings), so it has no {missing}; "
                "encode the prompts at train time (the trainer's job), or re-run synth with text embeddings"
            )
        if missing:
            raise LaddError(f"{data_dir} has no {missing}; its records hold {sorted(manifest['fields'])}")
        unknown = [a for a in batch_axes if a not in mesh.axis_names]
        if unknown:
            raise LaddError(f"batch_axes {unknown} are not axes of the mesh {mesh.axis_names}")
        shards = int(np.prod([mesh.shape[a] for a in batch_axes]))
        if global_batch_size < 1 or global_batch_size % shards:
            raise LaddError(
                f"global_batch_size {global_batch_size} must be a positive multiple of {shards}, the number of "
                f"devices along {batch_axes}"
            )
        if num_epochs is not None and num_epochs < 1:
            raise LaddError(f"num_epochs must be at least 1 (or None: forever), got {num_epochs}")

        self.global_batch_size = global_batch_size
        self.sharding = NamedSharding(mesh, P(batch_axes))
        start, local = _process_rows(self.sharding, global_batch_size)
        source = RecordSource(data_dir, fields, skip_corrupt)
        count = global_batch_size // local
        # Every process gets as many records (the last len % count are left out), so epochs end together.
        ds = grain.MapDataset.source(source)[start // local :: count][: len(source) // count]
        if len(ds) < local:
            raise LaddError(
                f"{data_dir} gives this process {len(ds)} records, fewer than its {local} rows of a batch of "
                f"{global_batch_size}; use a smaller batch or more data"
            )
        if shuffle:
            ds = ds.shuffle(seed)
        ds = ds.repeat(num_epochs)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_BUFFER))
        it = it.batch(local, drop_remainder=True)
        if worker_count > 0:
            _allow_unparsed_absl_flags()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        if prefetch > 0:
            it = ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
        self.iterator = iter(it)
        self.element_spec = {f: (tuple(manifest["fields"][f]["shape"]), np.dtype(np.float32)) for f in fields}
        self.stored_dtypes = {f: manifest["fields"][f]["dtype"] for f in fields}

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self.iterator)
        out = {}
        for name, (shape, _) in self.element_spec.items():
            x = jax.make_array_from_process_local_data(self.sharding, local[name], (self.global_batch_size, *shape))
            out[name] = x if x.dtype == jnp.float32 else _to_float32(x)
        return out

    def get_state(self) -> dict[str, Any]:
        return self.iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.iterator.set_state(state)

    def close(self) -> None:
        """Stops grain's prefetch thread and worker processes."""
        self.iterator.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ benchmark


def bench_loader(data_dir: str | Path, global_batch: int, steps: int, workers: int = 0) -> dict[str, Any]:
    """Batches/s and samples/s of a Loader over all devices (every field the folder has), after one warm-up batch."""
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    fields = list(read_manifest(data_dir)["fields"])
    with Loader(data_dir, global_batch, mesh, fields=fields, worker_count=workers) as loader:
        jax.block_until_ready(next(loader))
        start = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(next(loader))
        seconds = time.perf_counter() - start
    return {
        "loader_batches_per_s": steps / seconds,
        "loader_samples_per_s": steps * global_batch / seconds,
        "global_batch": global_batch,
        "workers": workers,
        "fields": fields,
    }
