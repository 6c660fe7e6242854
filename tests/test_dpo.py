"""Diffusion-DPO: the loss by hand, pair records, the toy judge, and a LoRA DPO run end to end."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from conftest import tiny_synth
from test_train import ROOT

from ladd_jax.config_files import load_config_file
from ladd_jax.convert.lora import WEIGHT_NAME, load_lora
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.data.preferences import choose_pairs, write_pairs
from ladd_jax.data.records import iter_records
from ladd_jax.errors import LaddError
from ladd_jax.models.lora import merge
from ladd_jax.toy.judge import score
from ladd_jax.toy.world import ToyWorld, render_dataset
from ladd_jax.train.dpo import dpo_loss
from ladd_jax.train.writer import read_metrics


def test_dpo_loss_by_hand():
    err_w, err_l = np.array([0.5, 1.0]), np.array([0.8, 0.7])
    ref_w, ref_l = np.array([0.6, 0.9]), np.array([0.6, 0.9])
    beta = 3.0
    loss, aux = dpo_loss(err_w, err_l, ref_w, ref_l, beta)
    # inside = -beta/2 [(err_w - ref_w) - (err_l - ref_l)] = -1.5 * [(-0.1) - 0.2, 0.1 - (-0.2)] = [0.45, -0.45]
    inside = np.array([0.45, -0.45])
    expected = np.mean([math.log1p(math.exp(-x)) for x in inside])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(aux["implicit_acc"], 0.5)
    np.testing.assert_allclose(aux["reward_margin"], 0.0, atol=1e-7)


def test_choose_pairs_best_against_worst_above_the_margin():
    prompts = ["a", "a", "a", "b", "b", "c", "c"]
    scores = np.array([0.5, 1.0, 0.0, 0.6, 0.6, 0.2, 0.28])
    assert choose_pairs(prompts, scores, 0.1) == [(1, 2)]
    assert choose_pairs(prompts, scores, 0.05) == [(1, 2), (6, 5)]


def test_judge_reads_renders_and_rejects_other_captions():
    """The judge is the preference signal: it must read the world's renders (both splits), and a caption of
    another scene must fail it."""
    world = ToyWorld()
    for split in ("train", "test"):
        images, captions, _ = render_dataset(world, split, 64, seed=3, progress=False)
        right = np.array([score(world, im, c) for im, c in zip(images, captions, strict=True)])
        wrong = np.array([score(world, im, c) for im, c in zip(images, np.roll(captions, 1), strict=True)])
        assert np.mean(right == 1.0) >= 0.9, split
        assert np.mean(wrong == 1.0) <= 0.1 and wrong.mean() < 0.5, split


@pytest.fixture(scope="module")
def pairs(world, tmp_path_factory):
    """Pair records from 2 samples of each of 8 prompts by the tiny teacher, scored by a stand-in scorer."""
    root = tmp_path_factory.mktemp("dpo")
    prompts = root / "prompts.txt"
    prompts.write_text("".join(f"a photo of thing {i}\n" for i in range(8) for _ in range(2)))
    tiny_synth(world["teacher"], prompts, root / "samples", num_steps=1, cfg=1.0)
    scorer = lambda prompts, latents: latents.mean(axis=(1, 2, 3))  # any deterministic preference will do
    manifest = write_pairs(root / "samples", root / "pairs", scorer, "mean latent", min_margin=0.0)
    return root / "pairs", manifest


def test_pair_records_hold_the_best_and_worst_sample(pairs):
    folder, manifest = pairs
    samples = list(iter_records(folder.parent / "samples"))
    records = list(iter_records(folder))
    assert manifest["num_records"] == len(records) == 8
    for r in records:
        chosen, rejected = samples[r["chosen_index"]], samples[r["rejected_index"]]
        assert chosen["prompt"] == rejected["prompt"] == r["prompt"]
        assert r["chosen_score"] >= r["rejected_score"]
        np.testing.assert_array_equal(r["chosen"], chosen["latent"])
        np.testing.assert_array_equal(r["rejected"], rejected["latent"])
        np.testing.assert_array_equal(r["context"], chosen["context"])
    with pytest.raises(LaddError, match="differ by 10.0 or more"):
        write_pairs(folder.parent / "samples", folder.parent / "none", lambda p, x: np.zeros(len(p)), "zero", 10.0)


def test_dpo_lora_run(world, pairs, tmp_path):
    """4 DPO steps of a LoRA on the tiny teacher: the first loss is log 2 (the fresh LoRA is the reference), the
    LoRA file and the merged pipeline agree."""
    from ladd_jax.train.pretrain import pretrain

    c = load_config_file(ROOT / "configs" / "dpo.py", "tiny")
    c.model, c.data, c.max_sequence_length = str(world["teacher"]), str(pairs[0]), 8
    c.log_every = 1
    pretrain(c, tmp_path)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    np.testing.assert_allclose(rows[0]["dpo_loss"], math.log(2), rtol=1e-6)
    assert rows[-1]["dpo_loss"] != pytest.approx(math.log(2)) and rows[-1]["grad_norm"] > 0

    config, base = load_mmdit(world["teacher"])
    spec, lora = load_lora(tmp_path / "lora" / WEIGHT_NAME, config)
    assert spec.rank == c.lora.rank
    _, tuned = load_mmdit(tmp_path / "pipeline")
    expected = merge(base, lora, spec.scale)
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), tuned, expected))) < 1e-6


def test_dpo_command_needs_a_dpo_config(tmp_path, capsys):
    from ladd_jax.cli import main

    config = f"{ROOT / 'configs' / 'pretrain.py'}:tiny"
    assert main(["dpo", "--config", config, "--workdir", str(tmp_path)]) == 2
    assert "needs a DPO config" in capsys.readouterr().err
