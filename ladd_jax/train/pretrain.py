"""Rectified-flow pretraining of an MMDiT (`ladd-jax pretrain`): how the toy world's teacher is made.

    t ~ logit-normal(m, s);  x_t = (1 - t) x0 + t eps;  loss = || v(x_t, t, text) - (eps - x0) ||^2
    text -> the empty prompt's embeddings with probability text_dropout (so classifier-free guidance works)

Same machinery as LADD (mesh, logical sharding, grain loader, orbax checkpoints with resume, metrics, NaN guard,
preemption); at the end the EMA transformer is written into a copy of the model folder, a teacher like any other.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.export import export_student
from ladd_jax.flow import add_noise, sample_logit_normal
from ladd_jax.models.mmdit import MMDiT
from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.train import sharding
from ladd_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from ladd_jax.train.loop import make_loader, require_folder
from ladd_jax.train.runner import CompiledSteps, resume_or_init, run_steps
from ladd_jax.train.state import compute_fields, optimizer
from ladd_jax.train.steps import BATCH_FIELDS as FIELDS
from ladd_jax.train.uncond import empty_prompt


@flax.struct.dataclass
class PretrainState:
    step: jax.Array
    params: Any
    ema: Any
    opt: Any


def make_pretrain_step(
    config: ml_collections.ConfigDict, model: MMDiT, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
):
    """(state, uncond_context [L, D], uncond_pooled [P], batch, key) -> (state, metrics)."""

    def step(state: PretrainState, uncond_ctx: jax.Array, uncond_pooled: jax.Array, batch: dict, key: jax.Array):
        x0, ctx, pooled = (sharding.constrain_batch(batch[k], mesh) for k in FIELDS)
        b = x0.shape[0]
        k_t, k_eps, k_drop = jax.random.split(jax.random.fold_in(key, state.step), 3)
        t = sample_logit_normal(k_t, (b,), config.t_mean, config.t_std)
        eps = jax.random.normal(k_eps, x0.shape)
        x_t = add_noise(x0, eps, t)
        drop = jax.random.uniform(k_drop, (b,)) < config.text_dropout
        ctx = jnp.where(drop[:, None, None], uncond_ctx[None], ctx)
        pooled = jnp.where(drop[:, None], uncond_pooled[None], pooled)

        def loss_fn(params: Any) -> jax.Array:
            v = model.apply({"params": params}, x_t, t, ctx, pooled)
            return jnp.mean(jnp.square(v - (eps - x0)))

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt = tx.update(grads, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p, state.ema, params)
        new = state.replace(step=state.step + 1, params=params, ema=ema, opt=opt)
        return new, dict(loss=loss, grad_norm=optax.tree.norm(grads), text_dropped=jnp.mean(drop))

    return step


def _init(params: Any, tx: optax.GradientTransformation) -> PretrainState:
    return PretrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree.map(jnp.copy, params),
        ema=jax.tree.map(jnp.copy, params),
        opt=tx.init(params),
    )


def pretrain(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains (or resumes) the model folder's transformer; writes config.out (default workdir/pipeline)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    folder = require_folder(config, "model", "an SD3 pipeline folder whose transformer is trained")
    mesh = sharding.make_mesh(**config.mesh)
    loader = make_loader(config, mesh)
    arch, host = load_mmdit(folder)
    model = MMDiT(dataclasses.replace(arch, **compute_fields(config)))
    tx = optimizer(config.lr, config)

    pipe = SD3Pipeline.from_pretrained(folder)
    constants = empty_prompt(pipe, config.max_sequence_length, loader.element_spec)

    params_sharding = sharding.param_shardings(host, mesh)
    abstract = jax.eval_shape(functools.partial(_init, tx=tx), host)
    state_sharding = PretrainState(
        step=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        params=params_sharding,
        ema=params_sharding,
        opt=optax.tree_map_params(
            tx,
            lambda _, s: s,
            abstract.opt,
            params_sharding,
            transform_non_params=lambda _: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        ),
    )
    meta = dict(config=config.to_dict(), architecture=dict(model=dataclasses.asdict(arch)))
    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    init = lambda: jax.jit(functools.partial(_init, tx=tx), out_shardings=state_sharding)(host)
    abstract_state = abstract_with_shardings(abstract, state_sharding)
    state = resume_or_init(checkpoints, config.restore_step, abstract_state, init, loader, meta)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sharding = {f: sharding.batch_sharding(mesh, len(loader.element_spec[f][0]) + 1) for f in FIELDS}
    step = jax.jit(
        sharding.sharded_trace(make_pretrain_step(config, model, tx, mesh), mesh),
        in_shardings=(state_sharding, replicated, replicated, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )

    def compile_for(spec: dict) -> Any:
        shape = lambda f: (config.batch_size, *spec[f][0])
        batch = {f: jax.ShapeDtypeStruct(shape(f), jnp.float32, sharding=batch_sharding[f]) for f in FIELDS}
        return step.lower(abstract_state, *constants, batch, jax.eval_shape(lambda: jax.random.key(0))).compile()

    steps = CompiledSteps("pretrain", compile_for, loader.element_specs)

    def samples(state: PretrainState, path: Path) -> Any:
        from PIL import Image

        from ladd_jax.sample import image_grid

        pipe.transformer_params = state.ema
        images = pipe(
            list(config.sample_prompts),
            num_inference_steps=config.sample_steps,
            guidance_scale=config.sample_cfg,
            seed=list(range(len(config.sample_prompts))),
            max_sequence_length=config.max_sequence_length,
        )
        grid = image_grid(images, 1, len(images))
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return grid

    state, last = run_steps(
        "pretrain",
        config,
        workdir,
        steps,
        state,
        constants,
        loader,
        checkpoints,
        meta,
        dict(loss="loss"),
        samples if jax.process_index() == 0 else None,
    )
    if int(state.step) < config.total_steps:  # preempted: the folder is written once training is complete
        return last
    out = Path(config.out or workdir / "pipeline")
    export_student(folder, arch, jax.device_get(state.ema), out, overwrite=True)
    print(f"wrote the pretrained pipeline folder {out}")
    return last
