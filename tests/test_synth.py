"""`ladd-jax synth` and `encode-real` on a tiny random SD3 folder: records equal the pipeline's outputs, the shards are
byte for byte the same on 1 and 8 devices, with 1 and 2 processes, and after a kill and resume; bad inputs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cpu_devices import cpu_env
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax.cli import main
from ladd_jax.data import iter_records, read_manifest
from ladd_jax.data.buckets import assign_buckets
from ladd_jax.data.encode_real import encode_real
from ladd_jax.data.loader import Loader
from ladd_jax.data.records import record_seeds
from ladd_jax.data.synth import read_prompts, run_synth
from ladd_jax.errors import LaddError

pytest.importorskip("diffusers")

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a cat", "a red circle", "two birds", "a dog in the snow", "a bowl of fruit"]
# 5 prompts in shards of 2: shards of 2, 2 and 1 records.
SETTINGS = dict(num_steps=2, cfg=4.0, height=32, width=32, max_sequence_length=16, shard_size=2, seed=5)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "pipe", seed=0)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS[:2]) + "\n\n" + "\n".join(PROMPTS[2:]) + "\n")  # a blank line is skipped
    return path


@pytest.fixture(scope="module")
def pipe(folder):
    from ladd_jax.pipeline import SD3Pipeline

    return SD3Pipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def reference(folder, prompts, pipe, tmp_path_factory) -> Path:
    """The uninterrupted single-process, single-device run."""
    out = tmp_path_factory.mktemp("ref") / "data"
    run_synth(model=str(folder), prompts=str(prompts), out=str(out), pipeline=pipe, **SETTINGS)
    return out


def one_device_mesh():
    import jax

    return jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*"))}


def run_script(script: str, *args: str, devices: int = 1) -> subprocess.Popen:
    env = cpu_env(devices)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-c", textwrap.dedent(script), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(*procs: subprocess.Popen) -> tuple[list[int], list[str]]:
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], outs


SYNTH_SCRIPT = """
import sys
from ladd_jax.data.synth import run_synth
run_synth(model={model!r}, prompts={prompts!r}, out=sys.argv[1], **{settings!r})
"""


def test_records_equal_the_pipeline(pipe, reference):
    manifest = read_manifest(reference)
    assert manifest["source"] == "synthetic" and manifest["num_records"] == 5
    assert [s["num_records"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["fields"]["latent"] == {"shape": [8, 8, 16], "dtype": "float32"}
    assert manifest["fields"]["context"]["shape"] == [77 + 16, 96] and manifest["fields"]["pooled"]["shape"] == [80]
    assert manifest["settings"]["model_fingerprint"].startswith("sha256:")
    records = list(iter_records(reference))
    assert [r["prompt"] for r in records] == PROMPTS and [r["index"] for r in records] == list(range(5))
    assert [r["seed"] for r in records] == record_seeds(5, range(5)).tolist()
    call = dict(num_inference_steps=2, guidance_scale=4.0, height=32, width=32, max_sequence_length=16)
    for r in records[:3]:
        assert r["settings"]["num_steps"] == 2 and r["settings"]["cfg"] == 4.0
        latent = pipe([r["prompt"]], seed=[r["seed"]], output_type="latent", **call)[0]
        np.testing.assert_array_equal(r["latent"], latent)
        np.testing.assert_array_equal(r["noise"], np.asarray(pipe.initial_latents(1, 32, 32, [r["seed"]]))[0])
        embeds, _, pooled, _ = pipe.encode_prompt([r["prompt"]], max_sequence_length=16)
        np.testing.assert_array_equal(r["context"], np.asarray(embeds)[0])
        np.testing.assert_array_equal(r["pooled"], np.asarray(pooled)[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


KILL_SCRIPT = """
import os, signal
from ladd_jax.data import records
encode, written = records.encode_record, []
def encode_then_die(record):  # SIGKILL in the middle of the second shard, after its first record
    written.append(record["index"])
    if len(written) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(record)
records.encode_record = encode_then_die
"""


def test_killed_run_resumes_to_the_same_records(folder, prompts, pipe, reference, tmp_path):
    out = tmp_path / "killed"
    script = KILL_SCRIPT + SYNTH_SCRIPT.format(model=str(folder), prompts=str(prompts), settings=SETTINGS)
    codes, outs = finish(run_script(script, str(out)))
    assert codes == [-9], outs[0][-3000:]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000-of-00003.array_record"]
    assert list(out.glob(".shard-00001-of-00003.array_record.tmp-*"))  # the half-written shard
    run_synth(model=str(folder), prompts=str(prompts), out=str(out), pipeline=pipe, **SETTINGS)
    assert not list(out.glob(".*tmp*"))
    assert shard_bytes(out) == shard_bytes(reference)
    for got, want in zip(iter_records(out), iter_records(reference), strict=True):
        assert got["index"] == want["index"] and np.array_equal(got["latent"], want["latent"])


def test_eight_devices_and_two_processes_write_the_same_bytes(folder, prompts, reference, tmp_path):
    """Two jax.distributed CPU processes, one with 8 devices and one with 1, share the shards (process p writes the
    shards k with k mod 2 == p: the 8-device process writes shards 0 and 2): the bytes equal the 1-process,
    1-device run's."""
    script = (
        "import sys, jax\n"
        f"jax.distributed.initialize('localhost:{free_port()}', num_processes=2, process_id=int(sys.argv[2]))\n"
        "assert len(jax.local_devices()) == (8 if jax.process_index() == 0 else 1)\n"
        + SYNTH_SCRIPT.format(model=str(folder), prompts=str(prompts), settings=SETTINGS)
    )
    out = tmp_path / "p2"
    procs = [run_script(script, str(out), str(i), devices=8 if i == 0 else 1) for i in range(2)]
    codes, outs = finish(*procs)
    assert codes == [0, 0], [o[-3000:] for o in outs]
    assert shard_bytes(out) == shard_bytes(reference)
    assert read_manifest(out) == read_manifest(reference)


def test_resume_with_other_settings_is_refused(folder, prompts, pipe, reference):
    with pytest.raises(LaddError, match="another job.*cfg: 4.0 -> 5.0"):
        run_synth(
            model=str(folder), prompts=str(prompts), out=str(reference), pipeline=pipe, **(SETTINGS | {"cfg": 5.0})
        )


def test_bf16_without_text_embeddings(folder, prompts, reference, tmp_path, capsys):
    config = tmp_path / "synth.json"
    config.write_text(json.dumps({"model": str(folder), "prompts": str(prompts), **SETTINGS, "num_prompts": 2}))
    out = tmp_path / "bf16"
    argv = ["synth", "--config", str(config), "--out", str(out), "--store-dtype", "bfloat16", "--no-text-embeddings"]
    assert main(argv) == 0
    assert "2 records" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert set(manifest["fields"]) == {"noise", "latent"} and manifest["fields"]["latent"]["dtype"] == "bfloat16"
    for got, want in zip(iter_records(out), iter_records(reference), strict=False):
        np.testing.assert_array_equal(got["latent"], want["latent"].astype(got["latent"].dtype))
    with pytest.raises(LaddError, match="without text embeddings"):
        Loader(out, 2, one_device_mesh())


def test_prompt_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": "a dog", "id": 3}\n')
    assert read_prompts(tmp_path / "p.jsonl") == ["a cat", "a dog"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"caption": ["a cat", "a dog"]}), tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet", "caption") == ["a cat", "a dog"]
    with pytest.raises(LaddError, match="no column 'prompt'.*caption"):
        read_prompts(tmp_path / "p.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(LaddError, match="cannot read prompts file"):
        read_prompts(tmp_path / "bad.parquet")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(LaddError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(LaddError, match="cannot read prompts file.*UTF-8"):
        read_prompts(tmp_path / "binary.txt")
    (tmp_path / "q.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(LaddError, match="line 2: no string field 'prompt'"):
        read_prompts(tmp_path / "q.jsonl")
    with pytest.raises(LaddError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    with pytest.raises(LaddError, match="must end in one of"):
        read_prompts(tmp_path / "p.csv")


def test_mismatched_captions_are_stored_for_hard_negatives(folder, pipe, reference, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    mismatch = ["a photo of a dog", "a blue circle"]
    prompts.write_text(
        "".join(json.dumps({"prompt": p, "mismatch": m}) + "\n" for p, m in zip(PROMPTS[:2], mismatch, strict=True))
    )
    out = tmp_path / "hard"
    argv = ["synth", "--model", str(folder), "--prompts", str(prompts), "--out", str(out), "--num-prompts", "2"]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    assert main([*argv, *flags, "--mismatch-column", "mismatch"]) == 0
    fields = read_manifest(out)["fields"]
    assert fields["mismatch_context"] == fields["context"] and fields["mismatch_pooled"] == fields["pooled"]
    for got, want, caption in zip(iter_records(out), iter_records(reference), mismatch, strict=False):
        np.testing.assert_array_equal(got["latent"], want["latent"])  # the same prompts and seeds: the same latents
        embeds, _, pooled, _ = pipe.encode_prompt([caption], max_sequence_length=16)
        np.testing.assert_array_equal(got["mismatch_context"], np.asarray(embeds)[0])
        np.testing.assert_array_equal(got["mismatch_pooled"], np.asarray(pooled)[0])
    batch = next(iter(Loader(out, 2, one_device_mesh(), fields=("latent", "mismatch_context", "mismatch_pooled"))))
    assert batch["mismatch_pooled"].shape == (2, 80)
    with pytest.raises(LaddError, match="no mismatched captions.*--mismatch-column"):
        Loader(reference, 2, one_device_mesh(), fields=("latent", "mismatch_context", "mismatch_pooled"))
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "x"), "--mismatch-column", "mismatch", "--no-text-embeddings"]) == 2
    assert "drop --no-text-embeddings" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a cat\n")
    txt = ["synth", "--model", str(folder), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "x")]
    assert main([*txt, "--mismatch-column", "mismatch"]) == 2
    assert "has no 'mismatch' column; use .jsonl or .parquet" in capsys.readouterr().err


def test_cli_errors(folder, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["synth", "--model", str(folder), "--prompts", str(tmp_path / "empty.txt"), "--out", "x"]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    assert main(["synth", "--model", str(folder), "--out", "x"]) == 2
    assert "synth needs ['prompts']" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("a cat\n")
    argv = ["synth", "--model", str(folder), "--prompts", str(tmp_path / "p.txt"), "--height", "32", "--width", "32"]
    assert main([*argv, "--out", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "p.txt")]) == 2
    assert "is a file, not a data folder" in capsys.readouterr().err


def test_corrupt_shard_is_named_or_skipped(reference, tmp_path, capsys, caplog):
    bad = tmp_path / "bad"
    shutil.copytree(reference, bad)
    shard = bad / "shard-00001-of-00003.array_record"
    raw = bytearray(shard.read_bytes())
    at = raw.find(b"two birds")  # record 2 = record 0 of shard 1
    raw[at] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(LaddError, match=f"{shard}: record 0 is corrupt"):
        list(iter_records(bad))
    with caplog.at_level(logging.WARNING):
        assert [r["index"] for r in iter_records(bad, skip_corrupt=True)] == [0, 1, 3, 4]
    assert f"{shard}: record 0 is corrupt" in caplog.text
    assert main(["records", str(bad)]) == 2
    assert "record 0 is corrupt" in capsys.readouterr().err
    assert main(["records", str(bad), "--skip-corrupt"]) == 0
    assert "skipped 1 corrupt records of 5" in capsys.readouterr().out
    stray = bad / "shard-00000-of-00004.array_record"
    shutil.copy(shard, stray)
    with pytest.raises(LaddError, match="does not list.*mixes two runs"):
        list(iter_records(bad))


def test_encode_real(folder, pipe, tmp_path):
    from PIL import Image

    from ladd_jax.convert.vae import load_vae
    from ladd_jax.models.vae import AutoencoderKL, scale_latents

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(tmp_path / f"images/{i}.png")
        lines.append(json.dumps({"image": f"images/{i}.png", "prompt": PROMPTS[i]}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "real"
    manifest = encode_real(
        folder, tmp_path / "captions.jsonl", out, max_sequence_length=16, shard_size=2, pipeline=pipe
    )
    assert manifest["source"] == "real" and set(manifest["fields"]) == {"latent", "context", "pooled"}
    records = list(iter_records(out))
    assert [r["image"] for r in records] == ["images/0.png", "images/1.png", "images/2.png"]
    config, params = load_vae(folder / "vae")
    image = np.asarray(Image.open(tmp_path / "images/1.png"), np.float32)[None] / 127.5 - 1
    mean, _ = AutoencoderKL(config).apply({"params": params}, image, method=AutoencoderKL.encode)
    np.testing.assert_allclose(records[1]["latent"], np.asarray(scale_latents(mean, config))[0], atol=1e-5)
    mesh = one_device_mesh()
    with Loader(out, 3, mesh, num_epochs=1) as loader:
        assert next(loader)["context"].shape == (3, 77 + 16, 96)
    with pytest.raises(LaddError, match="has no \\['noise'\\]"):
        Loader(out, 3, mesh, fields=("latent", "noise"))
    (tmp_path / "broken.jsonl").write_text('{"image": "images/9.png", "prompt": "a"}\n')
    with pytest.raises(LaddError, match="line 1: image .*9.png does not exist"):
        encode_real(folder, tmp_path / "broken.jsonl", tmp_path / "x")
    (tmp_path / "images/bad.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.jsonl").write_text('{"image": "images/bad.png", "prompt": "a"}\n')
    with pytest.raises(LaddError, match="cannot read image .*bad.png .*replace it or drop its line"):
        encode_real(folder, tmp_path / "corrupt.jsonl", tmp_path / "y")  # its size is read first: no --height
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_multi_aspect_records_grouped_by_bucket(folder, prompts, pipe, tmp_path, capsys):
    settings = {k: v for k, v in SETTINGS.items() if k not in ("height", "width")}
    out = tmp_path / "buckets"
    manifest = run_synth(
        model=str(folder), prompts=str(prompts), out=str(out), pipeline=pipe, buckets="32x32,24x40", **settings
    )
    assigned = assign_buckets(5, 2, seed=5)  # [1, 1, 0, 1, 1]: prompt 2 at 32x32, the others at 24x40
    assert manifest["version"] == 2 and manifest["fields"]["latent"]["shape"] is None
    assert manifest["settings"]["buckets"] == [[32, 32], [24, 40]]
    assert [(b["size"], b["start"], b["num_records"]) for b in manifest["buckets"]] == [
        ([32, 32], 0, 1),
        ([24, 40], 1, 4),
    ]
    assert manifest["buckets"][1]["shapes"]["latent"] == [6, 10, 16]
    records = list(iter_records(out))  # grouped by bucket, prompt order within each
    assert [r["index"] for r in records] == [2, 0, 1, 3, 4]
    sizes = [(32, 32), (24, 40)]
    for r in records:
        h, w = sizes[assigned[r["index"]]]
        assert r["bucket"] == [h, w] and r["latent"].shape == r["noise"].shape == (h // 4, w // 4, 16)
        assert r["seed"] == record_seeds(5, [r["index"]])[0]
    r = records[1]  # the seed and the sampler of a one-size job, at the bucket's size
    call = dict(num_inference_steps=2, guidance_scale=4.0, height=24, width=40, max_sequence_length=16)
    np.testing.assert_array_equal(r["latent"], pipe([r["prompt"]], seed=[r["seed"]], output_type="latent", **call)[0])
    assert main(["records", str(out)]) == 0
    assert "bucket 24x40: 4 records; noise [6, 10, 16], latent [6, 10, 16]" in capsys.readouterr().out


def test_bad_bucket_settings(folder, prompts, tmp_path):
    run = lambda **kw: run_synth(model=str(folder), prompts=str(prompts), out=str(tmp_path / "x"), **kw)
    with pytest.raises(LaddError, match=r"\['30x32'\] have a side that is not a positive multiple of 8"):
        run(buckets="32x32,30x32")
    with pytest.raises(LaddError, match="either buckets .* or height/width"):
        run(buckets="32x32", height=32)
    with pytest.raises(LaddError, match="has no 'size' column; use .jsonl"):
        run(buckets="32x32", bucket_column="size")
    with pytest.raises(LaddError, match="seed must be a non-negative integer .*got -1"):
        run(buckets="32x32", seed=-1)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "size": "32x32"}\n{"prompt": "a dog", "size": "16x16"}\n')
    with pytest.raises(LaddError, match="row 1: bucket '16x16' is not one of the job's buckets"):
        run_synth(model=str(folder), prompts=str(jsonl), out=str(tmp_path / "x"), buckets="32x32", bucket_column="size")


def test_an_output_folder_that_cannot_be_made_is_one_clear_error(folder, tmp_path, capsys):
    """/proc/x: its parent exists and root may write there by os.access, yet no folder can be made in it."""
    (tmp_path / "p.txt").write_text("a cat\n")
    assert main(["synth", "--model", str(folder), "--prompts", str(tmp_path / "p.txt"), "--out", "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the data folder /proc/x" in err and "choose another --out" in err and "Traceback" not in err
