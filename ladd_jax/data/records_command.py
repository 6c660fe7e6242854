"""`ladd-jax records DIR`: check a synth / encode-real data folder record by record, and time the loader.

The record format (records.py) knows nothing of the loader; this command uses both.
"""

from __future__ import annotations

import argparse
import json

from tqdm.auto import tqdm

from ladd_jax.data.buckets import format_bucket
from ladd_jax.data.loader import bench_loader
from ladd_jax.data.records import iter_records, read_manifest


def add_records_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `records` subcommand."""
    p = subparsers.add_parser(
        "records", help="check a synth / encode-real data folder record by record; time the loader"
    )
    p.add_argument("data", help="the data folder")
    p.add_argument("--skip-corrupt", action="store_true", help="report damaged records and go on (default: stop)")
    p.add_argument("--bench-batch", type=int, default=0, help="also time the Loader at this global batch size")
    p.add_argument("--bench-steps", type=int, default=50, help="batches timed after the first")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes for --bench-batch")
    p.set_defaults(fn=_run_records)


def _run_records(args: argparse.Namespace) -> None:
    manifest = read_manifest(args.data)
    total = manifest["num_records"]
    fields = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in manifest["fields"].items())
    print(f"{args.data}: {manifest['source']}, {total} records in {len(manifest['shards'])} shards; {fields}")
    for bucket in manifest.get("buckets", []):
        shapes = ", ".join(f"{k} {v}" for k, v in bucket["shapes"].items())
        print(f"  bucket {format_bucket(bucket['size'])}: {bucket['num_records']} records; {shapes}")
    good = sum(1 for _ in tqdm(iter_records(args.data, args.skip_corrupt), total=total, desc="check", unit="record"))
    if good < total:
        print(f"skipped {total - good} corrupt records of {total} (each named above)")
    else:
        print(f"all {total} records read and match the manifest")
    if args.bench_batch:
        print(json.dumps(bench_loader(args.data, args.bench_batch, args.bench_steps, args.workers)))
