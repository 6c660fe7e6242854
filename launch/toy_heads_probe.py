"""What do a LADD run's trained heads judge? Reads a toy-world LADD workdir's heads (its latest checkpoint) on real
renders of train-split prompts, each beside the same picture with one attribute of one object changed (its shape,
or its colour: same place, size and colour jitter), all under the correct caption, at several re-noising levels
t_hat (the same noise for every variant). A head that reads the attribute scores the correct render above the
changed one: the report gives, per attribute and t_hat, the share of pictures scored so (0.5: blind to it) and the
mean logit difference, beside the gap between real renders and the student's 1-step samples of the same prompts
(what the heads were trained to tell apart). If the heads are blind to shapes, LADD's adversarial signal cannot
teach the student shapes.

    python launch/toy_heads_probe.py --workdir W --out OUT.json [--scenes 256] [--t-hats 0.3,0.5,0.73,0.9] \
        [--held-out SYNTH]

With --held-out (a `ladd-jax synth` folder of the same teacher, other prompts and noise) it also asks whether the
heads learnt realness or the run's own real latents: the heads on the latents they trained on, on latents of the
same teacher they never saw (any that equal a training latent are dropped), and on the student's 1-step samples
of the training prompts, each under its own caption. Heads that score unseen teacher samples like fakes have
memorised their few real latents, and their gradient then teaches the student little about the teacher.

Beside OUT.json, OUT.png shows the first pictures compared: real render | shape changed | colour changed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

BATCH = 64


def batched(fn, *arrays) -> np.ndarray:
    """fn over BATCH-sized slices of the arrays (same length), concatenated."""
    return np.concatenate(
        [np.asarray(fn(*(a[j : j + BATCH] for a in arrays))) for j in range(0, len(arrays[0]), BATCH)]
    )


def called_real(scores: np.ndarray) -> dict:
    return dict(mean_logit=float(scores.mean()), called_real=float(np.mean(scores > 0)))


def memorisation(logits, x0_fn, data: str, held_out: str, t_hats: list[float], limit: int, seed: int) -> dict:
    """The heads on the run's own real latents, on unseen latents of the same teacher, and on the student's
    1-step samples of the training prompts; each under its own caption, the same re-noising draw for all three."""
    from ladd_jax.data.records import iter_records

    seen = list(itertools.islice(iter_records(data), limit))
    known = {r["latent"].tobytes() for r in seen}
    others = (r for r in iter_records(held_out) if r["latent"].tobytes() not in known)
    unseen = list(itertools.islice(others, len(seen)))
    if len(unseen) < len(seen):
        raise SystemExit(
            f"--held-out {held_out}: {len(unseen)} latents not among the run's {len(seen)}; give a synth folder of "
            f"at least {len(seen)} other prompts (or lower --scenes)"
        )
    arrays = lambda recs, k: jnp.asarray(np.stack([r[k] for r in recs]).astype(np.float32))
    sets = {
        name: {k: arrays(recs, k) for k in ("latent", "context", "pooled")}
        for name, recs in (("seen", seen), ("unseen", unseen))
    }
    noise = jax.random.normal(jax.random.key(seed + 404), sets["seen"]["latent"].shape)
    student = batched(x0_fn, noise, jnp.ones(len(seen)), sets["seen"]["context"], sets["seen"]["pooled"])
    sets["student"] = dict(sets["seen"], latent=jnp.asarray(student))
    eps = jax.random.normal(jax.random.key(seed + 405), noise.shape)
    result = dict(seen=len(seen), unseen=len(unseen), held_out=str(Path(held_out).absolute()), t_hat={})
    for t_hat in t_hats:
        row = {
            name: called_real(
                batched(lambda x, e, c, p, t=t_hat: logits(x, e, t, c, p), s["latent"], eps, s["context"], s["pooled"])
            )
            for name, s in sets.items()
        }
        result["t_hat"][f"{t_hat:g}"] = row
        print(json.dumps({"memorisation, t_hat": t_hat, **row}))
    return result


def changed(world, placed: list, index: int, attribute: str, rng: np.random.Generator) -> list:
    """`placed` with object `index`'s shape or colour replaced by another one of the world's, drawn at random."""
    obj = placed[index].obj
    options = [v for v in getattr(world, f"{attribute}s") if v != getattr(obj, attribute)]
    new = dataclasses.replace(obj, **{attribute: options[rng.integers(len(options))]})
    return [dataclasses.replace(p, obj=new) if i == index else p for i, p in enumerate(placed)]


def main() -> None:
    from ladd_jax.flow import add_noise, denoise, sample_student, student_timesteps
    from ladd_jax.models.discriminator import Discriminator
    from ladd_jax.models.mmdit import MMDiT, abstract_params
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.world import draw, image_seeds, place, sample_scenes
    from ladd_jax.train.checkpoint import read_meta, restore_params
    from ladd_jax.train.export import student_config
    from ladd_jax.train.state import disc_config
    from ladd_jax.train.steps import guided_features

    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True, help="a toy-world `ladd-jax train` (LADD) workdir")
    ap.add_argument("--out", required=True, help="OUT.json")
    ap.add_argument("--scenes", type=int, default=256, help="train-split prompts")
    ap.add_argument("--t-hats", default="0.3,0.5,0.73,0.9", help="re-noising levels of the heads' inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--held-out", help="a synth folder of the same teacher with other prompts: memorisation check")
    args = ap.parse_args()

    step, meta = read_meta(args.workdir)
    config = ml_collections.ConfigDict(meta["config"])
    if config.method != "ladd" or config.get("conditioned"):
        raise SystemExit(
            f"{args.workdir} is not a text-to-image LADD run (method {config.method!r}, conditioned "
            f"{bool(config.get('conditioned'))}); the probe reads LADD's heads on a text-to-image teacher's features"
        )
    scale, at_one = config.disc.get("feature_cfg", 1.0), config.disc.get("feature_cfg_t1")
    if at_one is not None and at_one != scale:
        raise SystemExit(
            f"{args.workdir}'s heads read features at two CFG scales (disc.feature_cfg={scale}, feature_cfg_t1="
            f"{at_one}); the probe reads heads at one scale: probe a run without disc.feature_cfg_t1"
        )
    pipe = SD3Pipeline.from_pretrained(config.teacher)
    world = read_toy_world(config.teacher)
    teacher = MMDiT(pipe.transformer_config)
    heads = Discriminator(disc_config(config, pipe.transformer_config.num_layers))
    layers = heads.config.feature_layers
    size = pipe.default_size

    scenes = sample_scenes(world, "train", args.scenes, args.seed + 400)
    prompts = [s.caption() for s in scenes]
    rng = np.random.default_rng(args.seed + 401)
    pictures = {name: [] for name in ("real", "shape", "color")}
    for scene, seed in zip(scenes, image_seeds(args.seed + 402, len(scenes)), strict=True):
        placed = place(world, scene, int(seed))
        index = int(rng.integers(len(placed)))  # the object whose attribute changes
        pictures["real"].append(draw(world, placed))
        for attribute in ("shape", "color"):
            pictures[attribute].append(draw(world, changed(world, placed, index, attribute, rng)))
    latents = {
        name: jnp.concatenate(
            [
                pipe.encode_images(np.stack(p[j : j + BATCH]).astype(np.float32) / 127.5 - 1)
                for j in range(0, len(p), BATCH)
            ]
        )
        for name, p in pictures.items()
    }
    embeds, empty, pooled, empty_pooled = pipe.encode_prompt(prompts, max_sequence_length=config.max_sequence_length)
    frozen = dict(empty_context=empty[0], empty_pooled=empty_pooled[0])  # the negative prompt is the empty one

    # The student's 1-step samples of the same prompts (its EMA, as exported): what the heads learnt to call fake.
    student_arch = student_config(meta)
    student = MMDiT(student_arch)
    ema = restore_params(args.workdir, step, "ema", abstract_params(student_arch))
    x0_fn = jax.jit(lambda x, t, c, p: denoise(x, student.apply({"params": ema}, x, t, c, p), t))
    noise = pipe.initial_latents(len(prompts), size, size, seed=list(range(len(prompts))))
    latents["student"] = jnp.concatenate(
        [
            sample_student(
                lambda x, t, part=slice(j, j + BATCH): x0_fn(x, t, embeds[part], pooled[part]),
                noise[j : j + BATCH],
                student_timesteps(1),
                jax.random.key(0),
            )
            for j in range(0, len(prompts), BATCH)
        ]
    )
    one = (latents["real"][:1], jnp.ones((1,)), embeds[:1], pooled[:1])
    _, feats = jax.eval_shape(lambda: teacher.apply({"params": pipe.transformer_params}, *one, feature_layers=layers))
    zeros = tuple(jnp.zeros(f.shape, f.dtype) for f in feats)
    disc = restore_params(
        args.workdir,
        step,
        "disc",
        jax.eval_shape(lambda: heads.init(jax.random.key(0), zeros, one[1], one[3])["params"]),
    )

    @jax.jit
    def logits(x0, eps, t_hat, ctx, pool):
        """Each picture's logit, averaged over its locations and the heads."""
        t = jnp.full((x0.shape[0],), t_hat)
        x = add_noise(x0, eps, t)
        feats_of = lambda *a: teacher.apply({"params": pipe.transformer_params}, *a, feature_layers=layers)[1]
        feats = guided_features(feats_of, frozen, x, t, ctx, pool, scale)
        out = heads.apply({"params": disc}, feats, t, pool)
        return jnp.mean(jnp.stack([o.mean(axis=(1, 2)) for o in out]), axis=0)

    eps = jax.random.normal(jax.random.key(args.seed + 403), latents["real"].shape)
    t_hats = [float(t) for t in args.t_hats.split(",")]
    result = dict(workdir=str(Path(args.workdir).absolute()), step=step, scenes=len(scenes), t_hat={})
    for t_hat in t_hats:
        scores = {
            name: batched(lambda x, e, c, p, t=t_hat: logits(x, e, t, c, p), x, eps, embeds, pooled)
            for name, x in latents.items()
        }
        row = {}
        for other in ("shape", "color", "student"):
            diff = scores["real"] - scores[other]
            row[other] = dict(correct_above=float(np.mean(diff > 0)), mean_logit_gap=float(diff.mean()))
        result["t_hat"][f"{t_hat:g}"] = row
        print(json.dumps({"t_hat": t_hat, **row}))
    if args.held_out:
        result["memorisation"] = memorisation(logits, x0_fn, config.data, args.held_out, t_hats, args.scenes, args.seed)
    Path(args.out).write_text(json.dumps(result, indent=1))
    shown = min(6, len(scenes))
    rows = [np.concatenate([pictures[name][i] for name in ("real", "shape", "color")], axis=1) for i in range(shown)]
    Image.fromarray(np.concatenate(rows)).resize((3 * 2 * size, shown * 2 * size), Image.NEAREST).save(
        Path(args.out).with_suffix(".png")
    )


if __name__ == "__main__":
    main()
