"""The LADD train step: a pure function (state, teacher_params, batch, key) -> (state, metrics), read top to bottom.

    x_t    = (1 - t) x0 + t eps                      t in config.student.timesteps (warm-up probabilities first)
    x0_hat = x_t - t * student(x_t, t)
    real   = teacher features of (1 - t_hat) x0     + t_hat eps_r      t_hat ~ logit-normal(m, s)
    fake   = teacher features of (1 - t_hat) x0_hat + t_hat eps_f
    D step (x d_steps): heads <- heads - grad_heads [d_loss(D(real), D(fake)) + gamma/2 R1 + w * misaligned]
                        the teacher's features enter as constants: no gradient of the teacher is computed
    G step:             student <- student - grad_student [g_loss(D(fake(student)))  (+ lambda * distill)],
                        the student's own forward pass shared with the D step (one jax.vjp)
                        the gradient reaches the student through the teacher's activations; the teacher's
                        params are closed over, so no gradient w.r.t. them exists
    EMA:                ema <- decay * ema + (1 - decay) * student
    Controls: disc.train=False skips the D step (heads frozen at initialisation); train_student=False skips the G
    step (the heads alone against a fixed student).

Randomness: key = fold_in(base_key, step), then one split per purpose, so the same step draws the same numbers on
any mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ladd_jax.flow import add_noise, denoise, sample_logit_normal, shift_sigma
from ladd_jax.train.losses import d_accuracy, d_loss_parts, distill_loss, g_loss, r1_penalty
from ladd_jax.train.sharding import constrain_batch, sharded_trace
from ladd_jax.train.state import Models, TrainState

Batch = dict[str, jax.Array]
StepFn = Callable[[TrainState, Any, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def student_times(config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, batch: int) -> jax.Array:
    """Per-sample student timesteps, drawn with the warm-up probabilities for the first warmup_steps steps."""
    s = config.student
    probs = jnp.where(step < s.warmup_steps, jnp.asarray(s.warmup_probs), jnp.asarray(s.probs))
    t = jnp.asarray(s.timesteps, jnp.float32)[jax.random.choice(key, len(s.timesteps), (batch,), p=probs)]
    return t if s.shift is None else shift_sigma(t, s.shift)


def _ema(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_train_step(config: ml_collections.ConfigDict, models: Models, mesh: Mesh) -> StepFn:
    """The step for `config`; jit it with the shardings of `sharded_step`."""
    layers = models.feature_layers
    kind = config.loss

    def train_step(state: TrainState, teacher_params: Any, batch: Batch, key: jax.Array):
        x0, ctx, pooled = (constrain_batch(batch[k], mesh) for k in ("latent", "context", "pooled"))
        b = x0.shape[0]
        k_t, k_eps, k_that, k_real, k_fake, k_dist = jax.random.split(jax.random.fold_in(key, state.step), 6)

        t = student_times(config, state.step, k_t, b)
        x_t = add_noise(x0, jax.random.normal(k_eps, x0.shape), t)
        t_hat = sample_logit_normal(k_that, (b,), config.t_hat_mean, config.t_hat_std)
        eps_real, eps_fake = jax.random.normal(k_real, x0.shape), jax.random.normal(k_fake, x0.shape)

        def generate(student_params: Any) -> jax.Array:
            v = models.student.apply({"params": student_params}, x_t, t, ctx, pooled)
            return constrain_batch(denoise(x_t, v, t), mesh)

        def features(x0_like: jax.Array, eps: jax.Array, c: jax.Array, p: jax.Array) -> tuple[jax.Array, ...]:
            x = add_noise(x0_like, eps, t_hat)
            _, feats = models.teacher.apply({"params": teacher_params}, x, t_hat, c, p, feature_layers=layers)
            return tuple(constrain_batch(f, mesh) for f in feats)

        def heads(disc_params: Any, feats: tuple[jax.Array, ...], p: jax.Array = pooled):
            return models.disc.apply({"params": disc_params}, feats, t_hat, p)

        # The student's forward pass runs once: its output is a constant for D, and `pull_back` carries the G
        # step's gradient w.r.t. x0_hat back to the student's params (the params do not change in between).
        x0_hat, pull_back = jax.vjp(generate, state.student)
        x0_fake = jax.lax.stop_gradient(x0_hat)

        # ---------------------------------------------------------------- D step(s): heads only, teacher constant
        real_feats = jax.lax.stop_gradient(features(x0, eps_real, ctx, pooled))
        fake_feats = jax.lax.stop_gradient(features(x0_fake, eps_fake, ctx, pooled))
        if config.misaligned_weight:  # real latents with another sample's text: fakes with respect to that text
            ctx_wrong, pooled_wrong = jnp.roll(ctx, 1, axis=0), jnp.roll(pooled, 1, axis=0)
            mis_feats = jax.lax.stop_gradient(features(x0, eps_real, ctx_wrong, pooled_wrong))

        def d_objective(disc_params: Any):
            real_logits, fake_logits = heads(disc_params, real_feats), heads(disc_params, fake_feats)
            loss_real, loss_fake = d_loss_parts(real_logits, fake_logits, kind)
            aux = dict(
                d_loss_real=loss_real,
                d_loss_fake=loss_fake,
                d_acc=d_accuracy(real_logits, fake_logits),
                logits_real=jnp.mean(jnp.stack([jnp.mean(x) for x in real_logits])),
                logits_fake=jnp.mean(jnp.stack([jnp.mean(x) for x in fake_logits])),
            )
            loss = loss_real + loss_fake
            if config.r1_gamma:
                aux["r1"] = r1_penalty(lambda f: heads(disc_params, f), real_feats)
                loss = loss + 0.5 * config.r1_gamma * aux["r1"]
            if config.misaligned_weight:
                mis_logits = heads(disc_params, mis_feats, pooled_wrong)
                aux["d_loss_misaligned"] = d_loss_parts(mis_logits, mis_logits, kind)[1]
                loss = loss + config.misaligned_weight * aux["d_loss_misaligned"]
            return loss, aux

        disc, d_opt = state.disc, state.d_opt
        d_metrics = {}
        if not config.disc.train:  # the control: heads frozen at their initialisation, only measured
            d_total, d_aux = d_objective(disc)
        for _ in range(config.d_steps if config.disc.train else 0):
            (d_total, d_aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(disc)
            updates, d_opt = models.d_tx.update(d_grads, d_opt, disc)
            disc = optax.apply_updates(disc, updates)
            d_metrics["d_grad_norm"] = optax.tree.norm(d_grads)

        # ---------------------------------------------------------------- G step: student only, through the teacher
        def g_objective(x0_hat: jax.Array):
            loss = g_loss(heads(disc, features(x0_hat, eps_fake, ctx, pooled)), kind)
            aux = dict(g_loss=loss)
            if config.distill_weight:  # ADD: match the teacher's denoised estimate of the re-noised sample
                t_d = jax.random.uniform(k_dist, (b,))
                x_d = add_noise(jax.lax.stop_gradient(x0_hat), eps_fake, t_d)
                v = models.teacher.apply({"params": teacher_params}, x_d, t_d, ctx, pooled)
                aux["distill"] = distill_loss(x0_hat, denoise(x_d, v, t_d))
                loss = loss + config.distill_weight * aux["distill"]
            return loss, aux

        student, g_opt, g_metrics = state.student, state.g_opt, {}
        if config.train_student:  # otherwise the heads alone learn against the fixed student (a diagnostic)
            (g_total, g_aux), x0_grad = jax.value_and_grad(g_objective, has_aux=True)(x0_hat)
            (g_grads,) = pull_back(x0_grad)
            updates, g_opt = models.g_tx.update(g_grads, g_opt, student)
            student = optax.apply_updates(student, updates)
            g_metrics = dict(g_total=g_total, g_grad_norm=optax.tree.norm(g_grads), **g_aux)

        new_state = state.replace(
            step=state.step + 1,
            student=student,
            ema=_ema(state.ema, student, config.ema_decay),
            disc=disc,
            g_opt=g_opt,
            d_opt=d_opt,
        )
        metrics = dict(
            d_loss=d_total,
            logit_gap=d_aux["logits_real"] - d_aux["logits_fake"],
            student_t=jnp.mean(t),
            t_hat=jnp.mean(t_hat),
            **d_aux,
            **d_metrics,
            **g_metrics,
        )
        return new_state, metrics

    return train_step


def jit_train_step(step_fn: StepFn, state_sharding: Any, teacher_sharding: Any, batch_sharding: Any, mesh: Mesh):
    """jax.jit with explicit shardings; the state is donated (updated in place), the teacher never is."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        sharded_trace(step_fn, mesh),
        in_shardings=(state_sharding, teacher_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
