"""The training loader: grain over a data folder's shards, one global jax.Array batch per step.

Per process and bucket (a one-size folder is one bucket; records.py): a slice of the bucket's records (the i-th
record of the bucket when i mod K == k, where the process holds block k of the K row blocks of the global batch:
k = jax.process_index(), K = jax.process_count() for meshes whose devices are ordered by process, as jax.make_mesh
orders them; n_b // K records each, so that the processes' epochs end together) -> a seeded global shuffle of the
slice, reshuffled every epoch -> repeated: the bucket's stream of rows. The schedule then says which bucket each
step draws: in every block of T = sum_b floor(n_b / global_batch_size) steps, bucket b is drawn floor(n_b /
global_batch_size) times (weighted by its count) in an order shuffled with (seed, block) (in bucket order without
`shuffle`); the step takes the next
global_batch_size / K rows of that bucket's stream. Every process computes the same schedule, so a step's batch is
one bucket on every process. Then decoding in READ_THREADS threads -> batches -> optional worker processes
(`worker_count`) -> a prefetch thread (`prefetch` batches). `next(loader)` turns the local batch into global arrays
with `jax.make_array_from_process_local_data` on NamedSharding(mesh, P(batch_axes)) and casts them to float32 on
the devices (bf16/fp16 records travel at their size). A batch's shapes say its bucket (the trainer compiles one
step per bucket). With one bucket the sequence is that bucket's stream in order.

Checkpointing: `loader.iterator` is the grain DatasetIterator. With orbax it is the item of
`grain.checkpoint.CheckpointSave(loader.iterator)` / `grain.checkpoint.CheckpointRestore(loader.iterator)`
(grain 0.2.18; e.g. inside `ocp.args.Composite`; one JSON file per process); without orbax, `get_state()` and
`set_state(state)`. A restored loader continues exactly the sequence of an uninterrupted one when it is built with
the same folder, seed, batch size, fields, mesh layout and process count.
"""

from __future__ import annotations

import bisect
import functools
import sys
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

from ladd_jax.data.buckets import format_bucket
from ladd_jax.data.records import (
    CORRUPT_ERRORS,
    MISMATCH_FIELDS,
    TEXT_FIELDS,
    bucket_at,
    check_record,
    check_shards,
    corrupt_record,
    decode_record,
    read_manifest,
    record_buckets,
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
        self.buckets = record_buckets(manifest)
        self.fields = tuple(fields)
        self.skip_corrupt = skip_corrupt
        self.num_records = manifest["num_records"]
        self._source = grain.sources.ArrayRecordDataSource([str(p) for p in self.paths])

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, np.ndarray] | None:
        try:
            record = decode_record(self._source[index])
            fields = bucket_at(self.buckets, index).fields
            check_record(record, {name: fields[name] for name in self.fields})
        except CORRUPT_ERRORS as e:
            k = bisect.bisect_right(self.starts, index) - 1
            corrupt_record(self.paths[k], index - self.starts[k], e, self.skip_corrupt)
            return None
        return {name: record[name] for name in self.fields}


class BucketSchedule(grain.MapDataset):
    """Row q of the loader's stream (step q // rows, row q % rows of this process's part of the batch) -> the
    record from the stream of the bucket that step draws (see the module's docstring). `streams`: each bucket's
    shuffled, repeated slice; `steps`: how often each bucket is drawn per block of sum(steps) steps; `seed` None
    draws them in bucket order."""

    def __init__(
        self, streams: Sequence[grain.MapDataset], steps: Sequence[int], rows: int, seed: int | None, blocks: int | None
    ):
        super().__init__(list(streams))
        self.steps, self.rows, self.seed = np.asarray(steps), rows, seed
        self.block = int(self.steps.sum())
        self.length = sys.maxsize if blocks is None else blocks * self.block * rows

    def __len__(self) -> int:
        return self.length

    @functools.lru_cache(maxsize=4)  # noqa: B019 (a few blocks, read by the decoding threads in turn)
    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket of each step of the block, how many batches that bucket gave before it, from the start)."""
        order = np.repeat(np.arange(len(self.steps)), self.steps)
        if self.seed is not None:
            order = np.random.default_rng([self.seed, block]).permutation(order)
        taken = np.empty_like(order)
        for b, n in enumerate(self.steps):
            taken[order == b] = block * n + np.arange(n)
        return order, taken

    def __getitem__(self, q):
        if isinstance(q, slice):
            return self.slice(q)
        step, row = divmod(q, self.rows)
        order, taken = self._block(step // self.block)
        b = int(order[step % self.block])
        stream, i = self.parents[b], int(taken[step % self.block]) * self.rows + row
        record = stream[i]
        while record is None:  # a corrupt record skipped (and logged): the bucket's next one keeps the batch whole
            i += 1
            record = stream[i]
        return record


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
        if seed < 0:
            raise LaddError(
                f"the loader's seed (a trainer's config.seed) must be a non-negative integer, got {seed}: numpy "
                "shuffles the records with it"
            )
        manifest = read_manifest(data_dir)
        fields = tuple(fields)
        missing = [f for f in fields if f not in manifest["fields"]]
        if any(f in TEXT_FIELDS for f in missing) and not manifest["settings"].get("text_embeddings", True):
            raise LaddError(
                f"{data_dir} was written without text embeddings (--no-text-embeddings), so it has no {missing}; "
                "encode the prompts at train time (the trainer's job), or re-run synth with text embeddings"
            )
        if any(f in MISMATCH_FIELDS for f in missing):
            raise LaddError(
                f"{data_dir} has no mismatched captions {missing}, which hard misaligned pairs read "
                "(misaligned_source='records'): make the data with `ladd-jax synth --mismatch-column COLUMN`, or "
                "set misaligned_source='batch'"
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
        streams = []
        for bucket in source.buckets:
            # Every process gets as many records of the bucket (the last n % count are left out), so epochs end
            # together.
            ds = grain.MapDataset.source(source)[bucket.start : bucket.start + bucket.num_records]
            ds = ds[start // local :: count][: bucket.num_records // count]
            if len(ds) < local:
                name = f"bucket {format_bucket(bucket.size)} of {data_dir}" if bucket.size else str(data_dir)
                raise LaddError(
                    f"{name} gives this process {len(ds)} records, fewer than its {local} rows of a batch of "
                    f"{global_batch_size}; use a smaller batch or more data"
                )
            streams.append((ds.shuffle(seed) if shuffle else ds).repeat())
        steps = [bucket.num_records // global_batch_size for bucket in source.buckets]
        ds = BucketSchedule(streams, steps, local, seed if shuffle else None, num_epochs)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_BUFFER))
        it = it.batch(local, drop_remainder=True)
        if worker_count > 0:
            _allow_unparsed_absl_flags()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        if prefetch > 0:
            it = ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
        self.iterator = iter(it)
        # One spec per bucket (`element_spec`: the first's); `bucket_sizes`: their pixel sizes where known.
        self.element_specs = [
            {f: (tuple(bucket.fields[f]["shape"]), np.dtype(np.float32)) for f in fields} for bucket in source.buckets
        ]
        self.element_spec = self.element_specs[0]
        self.bucket_sizes = [bucket.size for bucket in source.buckets]

    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self.iterator)
        out = {}
        for name, rows in local.items():
            x = jax.make_array_from_process_local_data(self.sharding, rows, (self.global_batch_size, *rows.shape[1:]))
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
