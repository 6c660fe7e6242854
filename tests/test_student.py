"""The student's architecture from the teacher's blocks: subsets, and deeper students whose repeated blocks start
as the identity."""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import pytest
from conftest import TINY_MMDIT, mmdit_inputs, rel_err

from ladd_jax.convert.mmdit import save_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig, init_params
from ladd_jax.train.student import init_student, select_layers


def student_section(init: str, layers: tuple = (), width_factor: int = 1) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(init=init, layers=layers, width_factor=width_factor, width_noise=0.1))


@pytest.mark.parametrize("dual", [(), pytest.param((0,), marks=pytest.mark.slow)])  # CI: the plain blocks
def test_deeper_student_of_repeated_blocks_starts_as_the_teacher(dual):
    teacher = MMDiTConfig(**{**TINY_MMDIT, "dual_attention_layers": dual})
    params = init_params(teacher, jax.random.key(0))
    inputs = mmdit_inputs(teacher)
    # Compiled: op by op, the two passes took half a minute of the suite.
    apply = jax.jit(lambda config, p: MMDiT(config).apply({"params": p}, *inputs), static_argnums=0)
    want = apply(teacher, params)

    student, student_params = select_layers(teacher, params, (0, 0, 1, 1, 2))
    assert student.num_layers == 5 and student.dual_attention_layers == tuple(j for j in (0, 1) if dual)
    got = apply(student, student_params)
    assert rel_err(got, want) < 1e-5

    # The repeat (student block 1) is teacher block 0 with only its gate rows of the adaLN projection zeroed.
    first = lambda tree: tree[next(k for k in tree if k.startswith("blocks_0_"))]  # the group holding block 0
    kernel = np.asarray(first(params)["norm1"]["linear"]["kernel"][0])
    repeat = np.asarray(first(student_params)["norm1"]["linear"]["kernel"][1])
    dim = teacher.hidden_size
    gates = np.repeat(np.arange(kernel.shape[-1] // dim) % 3 == 2, dim)
    assert np.all(repeat[:, gates] == 0) and np.array_equal(repeat[:, ~gates], kernel[:, ~gates])
    assert np.abs(kernel[:, gates]).min() > 0
    np.testing.assert_array_equal(
        first(student_params)["attn"]["to_q"]["kernel"][1], first(params)["attn"]["to_q"]["kernel"][0]
    )


def test_last_block_only_once_and_last():
    teacher = MMDiTConfig(**TINY_MMDIT)
    params = init_params(teacher, jax.random.key(0))
    for layers in [(0, 2, 2), (0, 1), (2, 0), ()]:
        with pytest.raises(LaddError, match="student.layers"):
            select_layers(teacher, params, layers)


def test_student_starts_from_a_saved_model_of_its_architecture(tmp_path):
    teacher = MMDiTConfig(**TINY_MMDIT)
    params = init_params(teacher, jax.random.key(0))
    saved = init_params(teacher, jax.random.key(1))  # e.g. a regression-pretrained student
    folder = save_mmdit(teacher, saved, tmp_path / "transformer")
    config, got = init_student(teacher, params, student_section(str(folder)), jax.random.key(2))
    assert config == teacher
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another architecture, or no folder: one error naming the fix; a subset student needs the saved subset.
    with pytest.raises(LaddError, match=r"num_layers: 3 \(student: 2\)"):
        init_student(teacher, params, student_section(str(folder), (0, 2)), jax.random.key(2))
    with pytest.raises(LaddError, match=r"num_attention_heads: 2 \(student: 4\)"):
        init_student(teacher, params, student_section(str(folder), width_factor=2), jax.random.key(2))
    with pytest.raises(LaddError, match="neither 'teacher', 'random' nor a folder"):
        init_student(teacher, params, student_section(str(tmp_path / "missing")), jax.random.key(2))


def test_wider_student_of_the_teacher():
    teacher = MMDiTConfig(**TINY_MMDIT)
    params = init_params(teacher, jax.random.key(0))
    config, got = init_student(teacher, params, student_section("teacher", (0, 0, 1, 2), 2), jax.random.key(2))
    assert (config.num_layers, config.hidden_size, config.pos_embed_tiles) == (4, 2 * teacher.hidden_size, 2)
    assert got["proj_out"]["kernel"].shape == (2 * teacher.hidden_size, params["proj_out"]["kernel"].shape[1])
    assert init_student(teacher, params, student_section("random", (), 2), jax.random.key(2))[0].hidden_size == 32
