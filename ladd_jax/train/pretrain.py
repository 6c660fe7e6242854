"""Rectified-flow training of an MMDiT: pretraining (`ladd-jax pretrain`, how the toy world's teacher is made) and
Diffusion-DPO preference tuning (`ladd-jax dpo`, train/dpo.py), of the whole model or of LoRA adapters on it.

    objective "flow": t ~ logit-normal(m, s);  x_t = (1 - t) x0 + t eps;  loss = || v(x_t, t, text) - (eps - x0) ||^2
                      text -> the empty prompt's embeddings with probability text_dropout (so that CFG works);
                      a conditioned model (config.conditioned) gets the records' cond latents beside x_t
    objective "dpo":  train/dpo.py, on preference-pair records, against the model as it was loaded

Same machinery as LADD (mesh, logical sharding, grain loader, orbax checkpoints with resume, metrics, NaN guard,
preemption); at the end the EMA transformer (a LoRA merged into its base) is written into a copy of the model
folder, a teacher like any other, and a LoRA run also writes its adapters as a diffusers LoRA file.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ladd_jax.atomic import make_writable_folder
from ladd_jax.convert.lora import save_lora
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.export import export_student
from ladd_jax.flow import add_noise, sample_logit_normal
from ladd_jax.models.lora import init_lora, merge
from ladd_jax.models.mmdit import MMDiT
from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.train import sharding
from ladd_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from ladd_jax.train.dpo import PAIR_FIELDS, make_dpo_step
from ladd_jax.train.loop import check_data, make_loader, require_folder
from ladd_jax.train.runner import CompiledSteps, check_run_config, resume_or_init, run_steps
from ladd_jax.train.state import compute_fields, optimizer
from ladd_jax.train.steps import BATCH_FIELDS as FIELDS
from ladd_jax.train.steps import COND_FIELD
from ladd_jax.train.student import lora_spec
from ladd_jax.train.uncond import empty_prompt


@flax.struct.dataclass
class PretrainState:
    step: jax.Array
    params: Any
    ema: Any
    opt: Any


def make_pretrain_step(
    config: ml_collections.ConfigDict,
    model: MMDiT,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    full_params: Callable[[Any, dict], Any],
):
    """(state, frozen, batch, key) -> (state, metrics); frozen: the empty prompt's "uncond_context" [L, D] and
    "uncond_pooled" [P] (and a LoRA's "base"); `full_params(trained, frozen)`: the model's params."""

    def step(state: PretrainState, frozen: dict, batch: dict, key: jax.Array):
        x0, ctx, pooled = (sharding.constrain_batch(batch[k], mesh) for k in FIELDS)
        b = x0.shape[0]
        k_t, k_eps, k_drop = jax.random.split(jax.random.fold_in(key, state.step), 3)
        t = sample_logit_normal(k_t, (b,), config.t_mean, config.t_std)
        eps = jax.random.normal(k_eps, x0.shape)
        x_t = add_noise(x0, eps, t)
        drop = jax.random.uniform(k_drop, (b,)) < config.text_dropout
        ctx = jnp.where(drop[:, None, None], frozen["uncond_context"][None], ctx)
        pooled = jnp.where(drop[:, None], frozen["uncond_pooled"][None], pooled)

        if COND_FIELD in batch:  # a conditioned model: its conditioning latents beside x_t, never dropped
            x_t = jnp.concatenate([x_t, sharding.constrain_batch(batch[COND_FIELD], mesh)], axis=-1)

        def loss_fn(params: Any) -> jax.Array:
            v = model.apply({"params": full_params(params, frozen)}, x_t, t, ctx, pooled)
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


OBJECTIVES = ("flow", "dpo")


def _objective(config: ml_collections.ConfigDict) -> str:
    objective = config.get("objective", "flow")
    if objective not in OBJECTIVES:
        raise LaddError(f"config.objective={objective!r}; use one of {OBJECTIVES}")
    return objective


def pretrain(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains (or resumes) the model folder's transformer, or LoRA adapters on it (config.lora.rank > 0), by
    `config.objective`; writes config.out (default workdir/pipeline), and a LoRA run's adapters to workdir/lora."""
    check_run_config(config)
    workdir = make_writable_folder(workdir, "the workdir", "--workdir")
    objective = _objective(config)
    if config.get("conditioned") and config.sample_every:
        raise LaddError("the sample grid draws text-to-image samples; a conditioned run needs config.sample_every=0")
    folder = require_folder(config, "model", "an SD3 pipeline folder whose transformer is trained")
    mesh = sharding.make_mesh(**config.mesh)
    fields = PAIR_FIELDS if objective == "dpo" else FIELDS
    if config.get("conditioned"):
        if objective == "dpo":
            raise LaddError("DPO takes no conditioning latents yet; tune a text-to-image model, or use objective flow")
        fields += (COND_FIELD,)
    loader = make_loader(config, mesh, fields)
    arch, host = load_mmdit(folder)
    if objective == "flow":
        for spec in loader.element_specs:
            check_data(spec, arch, config.batch_size, sharding.batch_size_multiple(mesh))
    model = MMDiT(dataclasses.replace(arch, **compute_fields(config)))
    tx = optimizer(config.lr, config)
    lora = lora_spec(config.get("lora"))

    # What the step reads but never trains: the loaded model (DPO's reference; a LoRA's base) and, for the flow
    # objective, the empty prompt's embeddings (text dropout).
    pipe = SD3Pipeline.from_pretrained(folder)
    frozen_host: dict[str, Any] = {}
    if objective == "dpo" or lora is not None:
        frozen_host["base"] = host
    if objective == "flow":
        frozen_host["uncond_context"], frozen_host["uncond_pooled"] = empty_prompt(
            pipe, config.max_sequence_length, loader.element_spec
        )
    trained_host = host if lora is None else init_lora(lora, host, jax.random.key(config.seed))

    def full_params(trained: Any, frozen: dict) -> Any:
        return trained if lora is None else merge(frozen["base"], trained, lora.scale, jnp.float32)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    frozen_sharding = {k: replicated for k in frozen_host}
    if "base" in frozen_host:
        frozen_sharding["base"] = sharding.param_shardings(host, mesh)
    frozen = jax.tree.map(jax.device_put, frozen_host, frozen_sharding)
    params_sharding = sharding.param_shardings(trained_host, mesh)
    abstract = jax.eval_shape(functools.partial(_init, tx=tx), trained_host)
    state_sharding = PretrainState(
        step=replicated,
        params=params_sharding,
        ema=params_sharding,
        opt=optax.tree_map_params(
            tx, lambda _, s: s, abstract.opt, params_sharding, transform_non_params=lambda _: replicated
        ),
    )
    architecture = dict(model=dataclasses.asdict(arch))
    if lora is not None:
        architecture["lora"] = dataclasses.asdict(lora)
    meta = dict(config=config.to_dict(), architecture=architecture)
    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    init = lambda: jax.jit(functools.partial(_init, tx=tx), out_shardings=state_sharding)(trained_host)
    abstract_state = abstract_with_shardings(abstract, state_sharding)
    state = resume_or_init(checkpoints, config.restore_step, abstract_state, init, loader, meta)

    batch_sharding = {f: sharding.batch_sharding(mesh, len(loader.element_spec[f][0]) + 1) for f in fields}
    make_step = make_dpo_step if objective == "dpo" else make_pretrain_step
    step = jax.jit(
        sharding.sharded_trace(make_step(config, model, tx, mesh, full_params), mesh),
        in_shardings=(state_sharding, frozen_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
    abstract_frozen = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), frozen)
    key = jax.eval_shape(lambda: jax.random.key(0))

    def compile_for(spec: dict) -> Any:
        shape = lambda f: (config.batch_size, *spec[f][0])
        batch = {f: jax.ShapeDtypeStruct(shape(f), jnp.float32, sharding=batch_sharding[f]) for f in fields}
        return step.lower(abstract_state, abstract_frozen, batch, key).compile()

    steps = CompiledSteps(objective, compile_for, loader.element_specs)

    def samples(state: PretrainState, path: Path) -> Any:
        from PIL import Image

        from ladd_jax.sample import image_grid

        pipe.transformer_params = full_params(state.ema, frozen)
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

    postfix = dict(loss="dpo_loss", acc="implicit_acc") if objective == "dpo" else dict(loss="loss")
    state, last = run_steps(
        objective,
        config,
        workdir,
        steps,
        state,
        (frozen,),
        loader,
        checkpoints,
        meta,
        postfix,
        samples if jax.process_index() == 0 else None,
    )
    if int(state.step) < config.total_steps:  # preempted: the folder is written once training is complete
        return last
    out = Path(config.out or workdir / "pipeline")
    export_student(folder, arch, jax.device_get(full_params(state.ema, frozen)), out, overwrite=True)
    print(f"wrote the trained pipeline folder {out}")
    if lora is not None:
        print(f"wrote the LoRA {save_lora(workdir / 'lora', arch, jax.device_get(state.ema), lora)}")
    return last
