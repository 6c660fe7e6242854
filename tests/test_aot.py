"""`ladd-jax aot`'s memory report on a tiny abstract teacher: the state's parts to the byte, XLA's plan, the largest
buffers (a materialised attention matrix shows; blockwise attention removes it), the device-memory verdict and the
largest-batch search."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import TINY_MMDIT
from cpu_devices import cpu_env

from configs.ladd import get_config
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params, count_params
from ladd_jax.train.aot import USABLE_FRACTION, aot_report, compile_plan, data_spec, format_report
from ladd_jax.train.memory import parse_device_memory

TEACHER = MMDiTConfig(**{**TINY_MMDIT, "num_layers": 2})
RESOLUTION = 96  # latent 12 x 12, 6 x 6 image tokens at patch 2


def _config(**overrides):
    c = get_config("tiny")
    c.batch_size = 1
    c.max_sequence_length = 8
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


@pytest.fixture(scope="module")
def plan():
    """The default config's plan with every buffer listed."""
    return compile_plan(_config(), TEACHER, RESOLUTION, buffers=10**6)


def test_report_parts_and_plan(plan):
    n = count_params(abstract_params(TEACHER))  # the student is the whole teacher here
    parts = plan["state_bytes"]
    assert parts["teacher"] == parts["student"] == parts["student_ema"] == 4 * n
    assert 2 * 4 * n <= parts["student_adam"] <= 2 * 4 * n + 64  # two moments (+ counters)
    assert plan["args_bytes"] >= sum(parts.values())
    xla = [plan[k] for k in ("args_bytes", "output_bytes", "temp_bytes", "alias_bytes")]
    assert plan["peak_bytes"] == xla[0] + xla[1] + xla[2] - xla[3]
    sizes = [b["bytes"] for b in plan["largest_buffers"]]
    assert sizes == sorted(sizes, reverse=True) and all(b["op"] for b in plan["largest_buffers"])
    hand = plan["hand_bytes"]
    assert hand["teacher_params"] == 4 * n and hand["student_params_ema_adam"] == 16 * n
    text = format_report(dict(plan, model="tiny"))
    assert "XLA's plan per device" in text and "largest buffers" in text
    assert json.loads(json.dumps(plan))["peak_bytes"] == plan["peak_bytes"]


@pytest.mark.slow  # 30 s; CI trains with offloaded state (tests/test_train.py)
def test_offloaded_state_leaves_the_device_plan(plan):
    """EMA and Adam moments in host memory (config.offload): the same state, now counted apart from the device's
    peak. XLA:CPU plans one memory space, so there the device peak is the plan's minus the offloaded bytes."""
    off = compile_plan(_config(offload=("ema", "g_opt")), TEACHER, RESOLUTION)
    parts = off["state_bytes"]
    assert parts == plan["state_bytes"]
    assert off["offloaded_bytes"] == parts["student_ema"] + parts["student_adam"] > 0
    assert plan["offloaded_bytes"] == 0 and plan["device_peak_bytes"] == plan["peak_bytes"]
    assert off["host_args_bytes"] == 0  # XLA:CPU
    assert off["device_peak_bytes"] == off["peak_bytes"] - off["offloaded_bytes"]
    assert "state in host memory (config.offload)" in format_report(dict(off, model="tiny"))


@pytest.mark.slow  # 16 s; tests/test_attention.py checks the program itself in CI
def test_blockwise_attention_leaves_no_attention_matrix_in_the_plan(plan):
    tokens = (RESOLUTION // 8 // 2) ** 2 + 77 + 8  # image + CLIP + T5 tokens
    blockwise = compile_plan(_config(attention_impl="blockwise", attention_block_size=32), TEACHER, RESOLUTION, 10**6)
    holds_matrix = lambda p: any(f"{tokens},{tokens}" in b["value"] for b in p["largest_buffers"])
    assert holds_matrix(plan) and not holds_matrix(blockwise)


@pytest.mark.slow  # 50 s (a compile per batch tried); CI checks the plan and its report above
def test_device_memory_verdict_and_largest_batch(plan):
    """A device with exactly batch 1's peak usable: it fits, and batch 2 (which plans more) does not."""
    report = aot_report(_config(), TEACHER, RESOLUTION, device_memory=plan["peak_bytes"] / USABLE_FRACTION)
    verdict = report["verdict"]
    assert verdict["fits"] and verdict["largest_per_device_batch"] == 1
    assert verdict["peak_bytes_at_largest"] == plan["peak_bytes"]
    report["verdict"].update(fits=False, largest_per_device_batch=0)
    assert "does NOT fit; largest per-device batch that fits: 0" in format_report(report)


def test_hard_misaligned_pairs_add_their_caption_to_the_data_spec():
    spec = data_spec(_config(misaligned_weight=1.0, misaligned_source="records"), TEACHER, RESOLUTION, 77)
    assert spec["mismatch_context"] == spec["context"] and spec["mismatch_pooled"] == spec["pooled"]
    assert "mismatch_context" not in data_spec(_config(misaligned_weight=1.0), TEACHER, RESOLUTION, 77)


def test_device_memory_and_resolution_errors():
    assert parse_device_memory("80GB") == 80e9 and parse_device_memory("16GiB") == 16 * 2**30
    for bad in ("80", "eighty GB", "80XB"):
        with pytest.raises(LaddError, match="write a size with its unit"):
            parse_device_memory(bad)
    with pytest.raises(LaddError, match="multiple of 16"):
        aot_report(_config(), TEACHER, 100)


FSDP_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
from conftest import TINY_MMDIT
from configs.ladd import get_config
from ladd_jax.models.mmdit import MMDiTConfig
from ladd_jax.train.aot import compile_plan
c = get_config("tiny")
c.batch_size, c.max_sequence_length, c.mesh.data, c.mesh.fsdp = 8, 8, 1, 8
teacher = MMDiTConfig(**{**TINY_MMDIT, "num_layers": 2, "attention_head_dim": 16, "caption_projection_dim": 32})
print(json.dumps(compile_plan(c, teacher, 96, buffers=10**6)["largest_buffers"]))
"""


@pytest.mark.slow  # 38 s (an 8-device compile); CI trains the FSDP step on 8 devices (tests/test_train.py)
def test_fsdp_plan_keeps_each_devices_share_of_the_batch():
    """FSDP over 8 simulated devices, global batch 8: no value in the per-device program has the whole batch with
    the 121 tokens (36 image + 85 text) of the blocks. Without the activation constraint inside the scanned blocks
    XLA's propagation followed the sharded weights and planned 106 such values (whole-batch attention included)."""
    env = cpu_env(8)
    out = subprocess.run([sys.executable, "-c", FSDP_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    buffers = json.loads(out.stdout.strip().splitlines()[-1])
    whole_batch = [b for b in buffers if re.match(r"\w+\[8,(.*,)?121(,|\])", b["value"])]
    assert not whole_batch, whole_batch[:5]
