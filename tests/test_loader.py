"""The grain Loader over record folders: batches, sharding, dtypes, resume (state and orbax), two processes, and
bad folders. The folders are written with records.write_shards from made-up arrays (no model needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from cpu_devices import cpu_env

from ladd_jax.cli import main
from ladd_jax.data.loader import Loader
from ladd_jax.data.records import MANIFEST, make_manifest, read_manifest, write_shards
from ladd_jax.errors import LaddError

LATENT, CONTEXT, POOLED = (2, 2, 4), (3, 8), (8,)
REPO = Path(__file__).resolve().parents[1]


def write_dataset(out: Path, num: int = 20, shard_size: int = 6, dtype: str = "float32", text: bool = True) -> Path:
    """Records whose arrays are filled with their index i (latent i, context i + 0.5, pooled -i)."""
    fields = {"noise": (LATENT, dtype), "latent": (LATENT, dtype)}
    if text:
        fields |= {"context": (CONTEXT, dtype), "pooled": (POOLED, dtype)}
    manifest = make_manifest("synthetic", num, shard_size, fields, {"text_embeddings": text}, {})

    def produce(start, stop):
        for i in range(start, stop):
            arrays = {"noise": np.full(LATENT, -0.5 * i), "latent": np.full(LATENT, float(i))}
            if text:
                arrays |= {"context": np.full(CONTEXT, i + 0.5), "pooled": np.full(POOLED, -float(i))}
            yield {"prompt": f"prompt {i}", "index": i, "seed": i, "settings": {}} | arrays

    write_shards(out, manifest, produce)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "records")


BUCKETS = {(8, 8): 12, (4, 12): 8, (12, 4): 5}  # pixel size -> records; latents are size / 4 with 4 channels


def write_bucketed(out: Path, buckets: dict = BUCKETS, shard_size: int = 7) -> Path:
    """A multi-aspect folder as synth writes it: records grouped by bucket, latent i filled with i."""
    latent = lambda size: (size[0] // 4, size[1] // 4, 4)
    layout = [(size, n, {"latent": latent(size)}) for size, n in buckets.items()]
    fields = {"latent": (None, "float32"), "context": (CONTEXT, "float32"), "pooled": (POOLED, "float32")}
    num = sum(buckets.values())
    manifest = make_manifest("synthetic", num, shard_size, fields, {}, {}, layout)
    sizes = [size for size, n in buckets.items() for _ in range(n)]

    def produce(start, stop):
        for i in range(start, stop):
            arrays = {"latent": np.full(latent(sizes[i]), float(i)), "context": np.full(CONTEXT, i + 0.5)}
            yield {"prompt": f"prompt {i}", "bucket": list(sizes[i]), "pooled": np.full(POOLED, -float(i))} | arrays

    write_shards(out, manifest, produce)
    return out


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory) -> Path:
    return write_bucketed(tmp_path_factory.mktemp("data") / "buckets")


def mesh(n: int = 1):
    return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n])


def indices(batch) -> list[int]:
    return [int(v) for v in np.asarray(batch["latent"])[:, 0, 0, 0]]


def take(loader, n: int) -> list[list[int]]:
    return [indices(next(loader)) for _ in range(n)]


def test_one_epoch_covers_every_record_once(data):
    with Loader(data, 4, mesh(), seed=3, num_epochs=1) as loader:
        assert loader.element_spec == {
            "latent": (LATENT, np.float32),
            "context": (CONTEXT, np.float32),
            "pooled": (POOLED, np.float32),
        }
        batches = list(loader)
    assert len(batches) == 5
    b = batches[0]
    assert b["latent"].shape == (4, *LATENT) and b["context"].shape == (4, *CONTEXT) and b["pooled"].shape == (4, 8)
    assert all(x.dtype == np.float32 for x in b.values())
    assert b["latent"].sharding.spec == jax.sharding.PartitionSpec("data")
    order = [i for batch in batches for i in indices(batch)]
    assert sorted(order) == list(range(20)) and order != list(range(20))  # shuffled
    for batch in batches:  # the fields of a row come from one record
        ids = np.asarray(indices(batch), np.float32)
        np.testing.assert_array_equal(np.asarray(batch["context"])[:, 0, 0], ids + 0.5)
        np.testing.assert_array_equal(np.asarray(batch["pooled"])[:, 0], -ids)


def test_epochs_reshuffle_and_seed_matters(data):
    with Loader(data, 4, mesh(), seed=3) as a, Loader(data, 4, mesh(), seed=4) as b:
        first, second = sum(take(a, 5), []), sum(take(a, 5), [])
        assert sorted(second) == list(range(20)) and second != first
        assert sum(take(b, 5), []) != first
    with Loader(data, 5, mesh(), shuffle=False, num_epochs=1) as loader:
        assert sum((indices(x) for x in loader), []) == list(range(20))


def test_bf16_records_arrive_as_float32(tmp_path):
    folder = write_dataset(tmp_path / "bf16", num=6, dtype="bfloat16")
    assert read_manifest(folder)["fields"]["latent"]["dtype"] == "bfloat16"
    with Loader(folder, 2, mesh(), fields=("latent", "noise"), shuffle=False) as loader:
        batch = next(loader)
    assert batch["latent"].dtype == np.float32 and batch["noise"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(batch["noise"])[:, 0, 0, 0], [0.0, -0.5])


def test_resume_continues_the_same_sequence(data, tmp_path):
    with Loader(data, 4, mesh(), seed=7) as loader:
        take(loader, 3)
        state = loader.get_state()
        checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
        checkpointer.save(tmp_path / "iter", args=grain.checkpoint.CheckpointSave(loader.iterator))
        want = take(loader, 6)  # crosses into the second epoch
    with Loader(data, 4, mesh(), seed=7) as resumed:
        resumed.set_state(state)
        assert take(resumed, 6) == want
    with Loader(data, 4, mesh(), seed=7) as restored:
        checkpointer.restore(tmp_path / "iter", args=grain.checkpoint.CheckpointRestore(restored.iterator))
        assert take(restored, 6) == want


def test_worker_process_gives_the_same_sequence(data):
    with Loader(data, 4, mesh(), seed=1) as plain, Loader(data, 4, mesh(), seed=1, worker_count=1) as workers:
        assert take(workers, 4) == take(plain, 4)


def test_records_command_checks_and_benchmarks(data, capsys):
    assert main(["records", str(data), "--bench-batch", "4", "--bench-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "synthetic, 20 records in 4 shards" in out and "all 20 records read and match the manifest" in out
    assert json.loads(out.strip().splitlines()[-1])["loader_batches_per_s"] > 0


def test_missing_fields_are_named(tmp_path, data):
    folder = write_dataset(tmp_path / "notext", num=4, text=False)
    with pytest.raises(LaddError, match="without text embeddings.*train time"):
        Loader(folder, 2, mesh())
    Loader(folder, 2, mesh(), fields=("latent", "noise")).close()
    with pytest.raises(LaddError, match="has no \\['image'\\]"):
        Loader(data, 2, mesh(), fields=("latent", "image"))


def test_bad_batch_sizes(data):
    with pytest.raises(LaddError, match="positive multiple"):
        Loader(data, 0, mesh())
    with pytest.raises(LaddError, match="fewer than its 32 rows"):
        Loader(data, 32, mesh())
    with pytest.raises(LaddError, match="not axes of the mesh"):
        Loader(data, 2, mesh(), batch_axes=("fsdp",))


def test_a_negative_seed_is_named(data):
    with pytest.raises(LaddError, match="config.seed\\) must be a non-negative integer, got -1"):
        Loader(data, 2, mesh(), seed=-1)


def test_corrupt_record_is_named_or_skipped(tmp_path):
    folder = write_dataset(tmp_path / "bad", num=6, shard_size=3)
    shard = folder / read_manifest(folder)["shards"][1]["file"]
    raw = bytearray(shard.read_bytes())
    at = raw.find(np.full(LATENT, 4.0, np.float32).tobytes())  # record 4 = record 1 of shard 1
    assert at > 0
    raw[at + 1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with Loader(folder, 6, mesh(), shuffle=False) as loader, pytest.raises(LaddError, match=f"{shard}: record 1 "):
        next(loader)
    with Loader(folder, 5, mesh(), shuffle=False, num_epochs=1, skip_corrupt=True) as loader:
        assert [indices(b) for b in loader] == [[0, 1, 2, 3, 5]]


def test_manifest_must_match_the_shards(tmp_path):
    folder = write_dataset(tmp_path / "m", num=6, shard_size=3)
    manifest = json.loads((folder / MANIFEST).read_text())
    shard = folder / manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(LaddError, match=f"{shard} holds 0 records, the manifest says 3"):
        Loader(folder, 2, mesh())
    shard.unlink()
    with pytest.raises(LaddError, match=f"{shard} is missing.*resume"):
        Loader(folder, 2, mesh())
    manifest["num_records"] = 7
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LaddError, match="the shards hold 6 records, num_records says 7"):
        Loader(folder, 2, mesh())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


TWO_PROCESS_SCRIPT = """
import sys, numpy as np, jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2, process_id=int(sys.argv[1]))
from ladd_jax.cli import main
from ladd_jax.data.loader import Loader
mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
with Loader({data!r}, 4, mesh, seed=2, fields=("latent",)) as loader:
    batches = [next(loader)["latent"] for _ in range(5)]
assert batches[0].shape == (4, 2, 2, 4) and not batches[0].is_fully_addressable
rows = [[float(s.data[r, 0, 0, 0]) for s in b.addressable_shards for r in range(s.data.shape[0])] for b in batches]
starts = sorted({{s.index[0].start for b in batches for s in b.addressable_shards}})
print("ROWS", jax.process_index(), starts, rows)
with Loader({bucketed!r}, 4, mesh, seed=2, fields=("latent",)) as loader:
    batches = [next(loader)["latent"] for _ in range(6)]
shapes = [list(b.shape[1:3]) for b in batches]
rows = [[float(s.data[r, 0, 0, 0]) for s in b.addressable_shards for r in range(s.data.shape[0])] for b in batches]
print("BUCKETS", jax.process_index(), str(shapes).replace(" ", ""), rows)
"""


def test_two_processes_each_read_their_slice(data, bucketed):
    """Two jax.distributed CPU processes, one device each: process p holds rows [2p, 2p + 2) of every global batch,
    filled from records r with r mod 2 == p, and over an epoch each sees its records once. With buckets, both draw
    the same bucket at every step, each from its half of that bucket."""
    script = TWO_PROCESS_SCRIPT.format(port=free_port(), data=str(data), bucketed=str(bucketed))
    env = cpu_env(1)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(i)], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for p, out in enumerate(outs):
        line = next(line for line in out.splitlines() if line.startswith("ROWS"))
        _, index, starts, rows = line.split(" ", 3)
        assert int(index) == p and json.loads(starts) == [2 * p]
        seen = [int(v) for b in json.loads(rows) for v in b]
        assert all(i % 2 == p for i in seen) and sorted(seen) == list(range(p, 20, 2))
    buckets = [line.split(" ", 3)[2:] for out in outs for line in out.splitlines() if line.startswith("BUCKETS")]
    (shapes_0, rows_0), (shapes_1, rows_1) = [(json.loads(a), json.loads(b)) for a, b in buckets]
    assert shapes_0 == shapes_1 and len({tuple(s) for s in shapes_0}) > 1
    starts = {(2, 2): 0, (1, 3): 12, (3, 1): 20}  # each bucket's first record
    for p, rows in enumerate((rows_0, rows_1)):
        for shape, batch in zip(shapes_0, rows, strict=True):
            assert all((int(i) - starts[tuple(shape)]) % 2 == p for i in batch)


def bucket_steps(loader, n: int) -> list[tuple[tuple[int, int], list[int]]]:
    """(latent height and width, record indices) of n batches."""
    return [(tuple(b["latent"].shape[1:3]), indices(b)) for b in (next(loader) for _ in range(n))]


def test_buckets_give_same_bucket_batches_by_count_in_a_seeded_order(bucketed):
    ranges = {(2, 2): range(0, 12), (1, 3): range(12, 20), (3, 1): range(20, 25)}
    assert read_manifest(bucketed)["version"] == 2
    with Loader(bucketed, 4, mesh(), seed=5) as loader:
        assert [spec["latent"][0] for spec in loader.element_specs] == [(2, 2, 4), (1, 3, 4), (3, 1, 4)]
        assert loader.bucket_sizes == list(BUCKETS)
        steps = bucket_steps(loader, 12)  # two blocks of 3 + 2 + 1 steps (counts 12, 8, 5 at batch 4)
    for hw, ids in steps:  # each batch is one bucket, its rows that bucket's records, fields aligned
        assert all(i in ranges[hw] for i in ids)
    for block in (steps[:6], steps[6:]):
        assert sorted(hw for hw, _ in block) == [(1, 3)] * 2 + [(2, 2)] * 3 + [(3, 1)]
    assert [hw for hw, _ in steps[:6]] != [hw for hw, _ in steps[6:]]  # each block has its own order
    with Loader(bucketed, 4, mesh(), seed=5) as again, Loader(bucketed, 4, mesh(), seed=6) as other:
        assert bucket_steps(again, 12) == steps
        assert bucket_steps(other, 12) != steps
    with Loader(bucketed, 4, mesh(), seed=5, num_epochs=1) as loader:  # one epoch: no record twice
        seen = [i for b in loader for i in indices(b)]
    assert len(seen) == 24 and len(set(seen)) == 24
    with Loader(bucketed, 4, mesh(), shuffle=False, num_epochs=1) as loader:  # in order, the last record left out
        assert [i for b in loader for i in indices(b)] == list(range(24))


def test_bucketed_resume_continues_the_same_sequence(bucketed):
    with Loader(bucketed, 4, mesh(), seed=3) as loader:
        bucket_steps(loader, 4)
        state = loader.get_state()
        want = bucket_steps(loader, 10)  # crosses blocks and the buckets' epochs
    with Loader(bucketed, 4, mesh(), seed=3) as resumed:
        resumed.set_state(state)
        assert bucket_steps(resumed, 10) == want


def test_a_bucket_smaller_than_a_batch_is_named(bucketed):
    with pytest.raises(LaddError, match="bucket 12x4 of .* gives this process 5 records, fewer than its 8 rows"):
        Loader(bucketed, 8, mesh())
