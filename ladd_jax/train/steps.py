"""The LADD train step: a pure function (state, frozen, batch, key) -> (state, metrics), read top to bottom.

`frozen` holds the frozen networks' params: "teacher" always; the ADD and regression games add their own
("vae", "features"). The step composes a `Game` (LADD's here; ADD's pixel-space game and Diffusion2GAN's
regression game are subclasses, train/add.py and train/regression.py) with the optimisers:

    x_t    = (1 - t) x0 + t eps                      t in config.student.timesteps (warm-up probabilities first)
    x0_hat = x_t - t * student(x_t, t)
    real   = teacher features of (1 - t_hat) x0     + t_hat eps_r      t_hat ~ logit-normal(m, s)
    fake   = teacher features of (1 - t_hat) x0_hat + t_hat eps_f
             (both, and the heads' conditioning, under the batch's captions; disc.text "empty": the empty prompt's)
    D step (x d_steps): heads <- heads - grad_heads [d_loss(D(real), D(fake)) + gamma/2 R1 + w * misaligned]
                        misaligned: real latents under text they do not match, as fakes
                        d_renoise: each update after the first re-noises x0 and x0_hat afresh (t_hat, eps)
                        the teacher's features enter as constants: no gradient of the teacher is computed
    G step:             student <- student - grad_student [g_loss(D(fake(student)))  (+ lambda * distill)
                                                            (+ w_anchor(step) * d(one_step(z), x0))],
                        the gradient reaches the student through the teacher's activations; the teacher's
                        params are closed over, so no gradient w.r.t. them exists; the anchor regresses the
                        student's 1-step image of each latent's stored noise z on that latent (DMD's ODE pairs)
    The student's forward pass and the teacher's pass on its samples each run once (one jax.vjp each): their
    outputs are constants for D, and their vjps carry the G step's gradient back (the heads change in between,
    the student, the teacher and their inputs do not).
    EMA:                ema <- decay * ema + (1 - decay) * student
    config.offload keeps EMA and/or Adam moments in host memory between steps: each comes to the device for its
    own update only (`on_device`; the student's after the backward pass) and goes back through out_shardings.
    adv_weight = 0 (regression alone) skips the heads and the D step entirely.
    Controls: disc.train=False skips the D step (heads frozen at initialisation); train_student=False skips the G
    step (the heads alone against a fixed student).

Randomness: key = fold_in(base_key, step), then one split per purpose (`step_draws`), so the same step draws the
same numbers on any mesh. `make_step_gradients` gives the same losses and gradients without any update (for
comparisons with the PyTorch reference, ladd_jax/torch_ref/ladd_step.py); both build on the same `Game`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ladd_jax.data.records import MISMATCH_FIELDS
from ladd_jax.flow import add_noise, cfg_combine, denoise, sample_logit_normal, shift_sigma
from ladd_jax.models.latent_perceptual import AugmentConfig, perceptual_distance
from ladd_jax.train.losses import Logits, d_accuracy, d_loss_parts, distill_loss, g_loss, r1_penalty
from ladd_jax.train.sharding import constrain_batch, on_device, sharded_trace
from ladd_jax.train.state import Models, TrainState

Batch = dict[str, jax.Array]
BATCH_FIELDS = ("latent", "context", "pooled")
# Conditioning latents of a conditioned model (inpainting: the masked image's latent and the mask; editing: the
# source image's latent), concatenated to x on the channel axis of every model input (config.conditioned).
COND_FIELD = "cond"
MISALIGNED_SOURCES = ("batch", "records")
DISC_TEXTS = ("caption", "empty")  # config.disc.text: what text the discriminator side reads
Draws = dict[str, jax.Array]  # see `step_draws`
RENOISE_KEY = 6  # fold_in tag of the D updates' own re-noising draws (config.d_renoise), apart from the six above
AUGMENT_KEY = 7  # fold_in tag of the perceptual distance's augmentations (regression, the anchor), apart from both
Frozen = dict[str, Any]  # the frozen networks' params, by name ("teacher", ...)
Features = dict[str, tuple[jax.Array, ...]]  # the D step's teacher features: real, fake (and misaligned)
Objective = tuple[jax.Array, dict[str, jax.Array]]  # (loss, its parts)
StepFn = Callable[[TrainState, Frozen, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
GradientsFn = Callable[[Any, Any, Any, Batch, Draws], tuple[dict[str, jax.Array], Any, Any]]


def student_times(config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, batch: int) -> jax.Array:
    """Per-sample student timesteps, drawn with the warm-up probabilities for the first warmup_steps steps."""
    s = config.student
    probs = jnp.where(step < s.warmup_steps, jnp.asarray(s.warmup_probs), jnp.asarray(s.probs))
    t = jnp.asarray(s.timesteps, jnp.float32)[jax.random.choice(key, len(s.timesteps), (batch,), p=probs)]
    return t if s.shift is None else shift_sigma(t, s.shift)


def step_draws(config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, x0_shape: tuple[int, ...]) -> Draws:
    """Every random number of step `step`, from one place: the train step and the PyTorch reference
    (ladd_jax/torch_ref) both take them from here, so the two can be compared on the same draws.

    t: student times [B]; eps: the noise of x_t; t_hat: the teacher's times [B]; eps_real / eps_fake: the noise
    re-noising real latents / the student's samples; t_distill: the times of the distillation loss [B] (drawn
    always, used only when distill_weight > 0); augment: the key data of the perceptual distance's augmentations
    (used only by a regression to the ODE pairs; arrays only, so that draws stay convertible). With
    config.d_renoise, d_t_hat / d_eps_real / d_eps_fake [d_steps - 1, ...]: the re-noising of the D updates after
    the first.
    """
    b = x0_shape[0]
    step_key = jax.random.fold_in(key, step)
    k_t, k_eps, k_that, k_real, k_fake, k_dist = jax.random.split(step_key, 6)
    draws = dict(
        t=student_times(config, step, k_t, b),
        eps=jax.random.normal(k_eps, x0_shape),
        t_hat=sample_logit_normal(k_that, (b,), config.t_hat_mean, config.t_hat_std),
        eps_real=jax.random.normal(k_real, x0_shape),
        eps_fake=jax.random.normal(k_fake, x0_shape),
        t_distill=jax.random.uniform(k_dist, (b,)),
        augment=jax.random.key_data(jax.random.fold_in(step_key, AUGMENT_KEY)),
    )
    renoisings = config.d_steps - 1 if config.get("d_renoise", False) else 0
    if renoisings > 0:  # from a key of their own, so the draws above are the same with or without them
        k_that, k_real, k_fake = jax.random.split(jax.random.fold_in(step_key, RENOISE_KEY), 3)
        draws.update(
            d_t_hat=sample_logit_normal(k_that, (renoisings, b), config.t_hat_mean, config.t_hat_std),
            d_eps_real=jax.random.normal(k_real, (renoisings, *x0_shape)),
            d_eps_fake=jax.random.normal(k_fake, (renoisings, *x0_shape)),
        )
    return draws


def anchor_weight_at(config: ml_collections.ConfigDict, step: jax.Array) -> jax.Array:
    """The regression anchor's weight at `step`: anchor_weight throughout (anchor_decay "constant"), or decayed from
    it to 0 at total_steps by a half cosine ("cosine")."""
    if config.anchor_decay == "constant":
        return jnp.asarray(config.anchor_weight, jnp.float32)
    return optax.cosine_decay_schedule(config.anchor_weight, config.total_steps)(step)


def guided_velocity(
    teacher: Callable, frozen: Frozen, x: jax.Array, t: jax.Array, ctx: jax.Array, pooled: jax.Array, scale: Any
) -> jax.Array:
    """The teacher's CFG velocity: `teacher(x, t, ctx, pooled)` on the text and on the empty prompt in one pass of
    twice the batch, combined with `scale` (scalar or per sample)."""
    v = teacher(*with_empty_prompt(frozen, x, t, ctx, pooled))
    return cfg_combine(v[: len(x)], v[len(x) :], scale)


def guided_features(
    features: Callable,
    frozen: Frozen,
    x: jax.Array,
    t: jax.Array,
    ctx: jax.Array,
    pooled: jax.Array,
    scale: float | jax.Array,
) -> tuple[jax.Array, ...]:
    """The heads' inputs: `features(x, t, ctx, pooled)` (the teacher's block features), or with a CFG scale (a float,
    or one per sample) f_empty + scale * (f_text - f_empty) per block, text and empty prompt in one pass of twice
    the batch."""
    if isinstance(scale, float) and scale == 1.0:
        return tuple(features(x, t, ctx, pooled))
    feats = features(*with_empty_prompt(frozen, x, t, ctx, pooled))
    per_sample = lambda f: jnp.reshape(scale, jnp.shape(scale) + (1,) * (f.ndim - jnp.ndim(scale)))
    return tuple(cfg_combine(f[: len(x)], f[len(x) :], per_sample(f)) for f in feats)


def with_empty_prompt(
    frozen: Frozen, x: jax.Array, t: jax.Array, ctx: jax.Array, pooled: jax.Array
) -> tuple[jax.Array, ...]:
    """A teacher's inputs of twice the batch: (x, t, ctx, pooled) under the text, then under the empty prompt
    (frozen "empty_context" / "empty_pooled"), for classifier-free guidance in one pass."""
    both = lambda a, empty: jnp.concatenate([a, empty_like(a, empty)])
    return (
        jnp.concatenate([x, x]),
        jnp.concatenate([t, t]),
        both(ctx, frozen["empty_context"]),
        both(pooled, frozen["empty_pooled"]),
    )


def caption_blind(config: ml_collections.ConfigDict) -> bool:
    """Whether the discriminator side reads the empty prompt instead of the captions (disc.text "empty")."""
    return config.disc.get("text", "caption") == "empty"


def empty_like(a: jax.Array, empty: jax.Array) -> jax.Array:
    """The empty prompt's embedding `empty` (one sample's) broadcast to the batch of text embeddings `a`."""
    return jnp.broadcast_to(empty, a.shape).astype(a.dtype)


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


@dataclasses.dataclass(frozen=True)
class Game:
    """One step's game for a fixed teacher, batch and draws: the pieces `make_train_step` composes with the
    optimisers and `make_step_gradients` composes without, so the two cannot drift apart."""

    config: ml_collections.ConfigDict
    models: Models
    mesh: Mesh
    frozen: Frozen
    batch: Batch
    draws: Draws

    def __post_init__(self):
        # The batch axis pinned to the data axes once, before any transformation traces the pieces.
        object.__setattr__(self, "batch", {k: constrain_batch(v, self.mesh) for k, v in self.batch.items()})

    @classmethod
    def step_draws(cls, config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, shape: tuple) -> Draws:
        """This game's random numbers of step `step` (a subclass may add its own)."""
        return step_draws(config, step, key, shape)

    @property
    def teacher_params(self) -> Any:
        return self.frozen["teacher"]

    @property
    def adversarial(self) -> bool:
        """Whether heads play at all (the regression baselines may run without them)."""
        return self.config.adv_weight > 0

    @property
    def trains_second_network(self) -> bool:
        """Whether the step's D phase runs: the heads when they play, or a game's own second network in their
        place (DMD's fake score, train/dmd.py)."""
        return self.adversarial

    @property
    def d_updates(self) -> int:
        """The D phase's updates a step: d_steps, or none when the heads are frozen (disc.train=False: the
        control, whose heads are then only measured)."""
        return self.config.d_steps if self.config.disc.train else 0

    @property
    def inputs(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x0, context, pooled)."""
        return tuple(self.batch[k] for k in BATCH_FIELDS)

    @property
    def disc_text(self) -> tuple[jax.Array, jax.Array]:
        """(context, pooled) the discriminator side reads (the teacher's features for the heads, and the heads' own
        conditioning): the batch's captions (disc.text "caption"), or the empty prompt's (disc.text "empty": an
        unconditional discriminator, which can judge realism but not whether a sample shows its caption)."""
        _, ctx, pooled = self.inputs
        if not caption_blind(self.config):
            return ctx, pooled
        return empty_like(ctx, self.frozen["empty_context"]), empty_like(pooled, self.frozen["empty_pooled"])

    @property
    def misaligned_text(self) -> tuple[jax.Array, jax.Array]:
        """(context, pooled) of the misaligned pairs: the next sample's text (config.misaligned_source "batch") or
        the records' mismatched caption ("records")."""
        if self.config.misaligned_source == "records":
            return tuple(self.batch[k] for k in MISMATCH_FIELDS)
        _, ctx, pooled = self.inputs
        return jnp.roll(ctx, 1, axis=0), jnp.roll(pooled, 1, axis=0)

    def with_cond(self, x: jax.Array) -> jax.Array:
        """A model input: x with the batch's conditioning latents on the channel axis (student and teacher alike,
        so the heads read features of conditioned passes), or x itself when the data carry none."""
        cond = self.batch.get(COND_FIELD)
        return x if cond is None else jnp.concatenate([x, cond.astype(x.dtype)], axis=-1)

    def generate(self, student_params: Any) -> jax.Array:
        """x0_hat = x_t - t * student(x_t, t)."""
        x0, ctx, pooled = self.inputs
        t = self.draws["t"]
        x_t = add_noise(x0, self.draws["eps"], t)
        v = self.models.apply_student(student_params, self.frozen, self.with_cond(x_t), t, ctx, pooled)
        return constrain_batch(denoise(x_t, v, t), self.mesh)

    def one_step(self, student_params: Any) -> jax.Array:
        """x0_hat = z - student(z, 1) from the noise z each teacher latent was sampled from (`ladd-jax synth` stores
        the ODE pair (z, x0)): the student's 1-step image of the teacher's own noise."""
        _, ctx, pooled = self.inputs
        z = self.batch["noise"]
        t = jnp.ones(z.shape[:1], jnp.float32)
        return denoise(z, self.models.apply_student(student_params, self.frozen, self.with_cond(z), t, ctx, pooled), t)

    def anchored(
        self, student_params: Any, total: jax.Array, aux: dict, grads: Any, step: jax.Array
    ) -> tuple[jax.Array, dict, Any]:
        """The G loss, its parts and its gradient with DMD's regression anchor added (Yin et al. 2024; anchor_weight
        > 0, else as given): the anchor's weight at `step` (`anchor_weight_at`) * the mean distance of one_step(z)
        to x0 on the batch's stored ODE pairs (squared error, or the perceptual distance: anchor_distance), from a
        student pass of its own (the G step's samples start from fresh noise at the student's times, these from
        the stored noise at t = 1)."""
        if not self.config.get("anchor_weight", 0.0):
            return total, aux, grads
        weight = anchor_weight_at(self.config, step)
        x0 = jax.lax.stop_gradient(self.inputs[0]).astype(jnp.float32)
        if self.config.anchor_distance == "perceptual":
            distance = lambda params: jnp.mean(self.perceptual(self.one_step(params), x0))
        else:
            distance = lambda params: jnp.mean(jnp.square(self.one_step(params).astype(jnp.float32) - x0))
        anchor, anchor_grads = jax.value_and_grad(distance)(student_params)
        grads = jax.tree.map(lambda g, a: g + weight * a, grads, anchor_grads)
        return total + weight * anchor, dict(aux, anchor=anchor), grads

    def perceptual(self, x: jax.Array, target: jax.Array) -> jax.Array:
        """The ensembled latent perceptual distance [B] of x to `target` (a constant) under the frozen latent feature
        network ("features"), the augmentations drawn from the step's `augment` key (config.perceptual)."""
        p = self.config.perceptual
        augment = AugmentConfig(translate=p.augment.translate, cutout=p.augment.cutout, flip=p.augment.flip)
        key = jax.random.wrap_key_data(self.draws["augment"])
        net = self.models.features
        return perceptual_distance(net.config, self.frozen["features"], x, target, key, p.num_draws, augment)

    def features(self, x0_like: jax.Array, eps: jax.Array, c: jax.Array, p: jax.Array) -> tuple[jax.Array, ...]:
        """The teacher's features of `x0_like` re-noised to t_hat (its params closed over: no gradient to them),
        guided with CFG scale disc.feature_cfg (disc.feature_cfg_t1 for the pairs whose student time is 1)."""
        x, t_hat = self.with_cond(add_noise(x0_like, eps, self.draws["t_hat"])), self.draws["t_hat"]
        feats_of = lambda x, t, c, p: self.models.teacher.apply(
            {"params": self.teacher_params}, x, t, c, p, feature_layers=self.models.feature_layers
        )[1]
        scale, at_one = self.config.disc.get("feature_cfg", 1.0), self.config.disc.get("feature_cfg_t1")
        if at_one is not None and at_one != scale:  # per sample: the pairs of the student's samples from t = 1 apart
            scale = jnp.where(self.draws["t"] >= 1.0, at_one, scale)
        feats = guided_features(feats_of, self.frozen, x, t_hat, c, p, scale)
        return tuple(constrain_batch(f, self.mesh) for f in feats)

    def renoised(self, i: int) -> Game:
        """This game with the re-noising of D update i + 2 (config.d_renoise: draws d_t_hat, d_eps_real, d_eps_fake
        [i]) in place of t_hat, eps_real and eps_fake."""
        fresh = {k: self.draws[f"d_{k}"][i] for k in ("t_hat", "eps_real", "eps_fake")}
        return dataclasses.replace(self, draws=dict(self.draws, **fresh))

    def d_objective_of(self, x0_hat: jax.Array, fake: tuple[jax.Array, ...] | None = None) -> Callable:
        """disc_params -> `d_objective` on this game's re-noising of the real latents and of the student's samples
        `x0_hat` (constants); `fake`: their features when already computed (`fake_features`)."""
        if fake is None:
            fake = self.features(jax.lax.stop_gradient(x0_hat), self.draws["eps_fake"], *self.disc_text)
        return functools.partial(self.d_objective, feats=self.d_features(fake))

    def heads(self, disc_params: Any, feats: tuple[jax.Array, ...], p: jax.Array | None = None) -> Logits:
        """The heads' logits; `p` replaces the pooled text of `disc_text` (the misaligned pairs)."""
        pooled = self.disc_text[1] if p is None else p
        return self.models.disc.apply({"params": disc_params}, feats, self.draws["t_hat"], pooled)

    def fake_features(self, x0_hat: jax.Array) -> tuple[tuple[jax.Array, ...], Callable]:
        """The teacher's features of the student's samples (re-noised with eps_fake) and their vjp: one teacher
        pass serves the D step (its outputs, as constants) and the G step (the vjp carries the heads' gradient on
        the features back to x0_hat), where computing it twice would cost a teacher forward pass per step."""
        return jax.vjp(lambda x: self.features(x, self.draws["eps_fake"], *self.disc_text), x0_hat)

    def d_features(self, fake: tuple[jax.Array, ...]) -> Features:
        """The D step's features, constants: the real ones computed here, the fakes' given (`fake_features`);
        shared by the d_steps updates."""
        x0 = self.inputs[0]
        feats = dict(
            real=jax.lax.stop_gradient(self.features(x0, self.draws["eps_real"], *self.disc_text)),
            fake=jax.lax.stop_gradient(fake),
        )
        if self.config.misaligned_weight:  # real latents with text they do not match: fakes with respect to that text
            mismatched = self.features(x0, self.draws["eps_real"], *self.misaligned_text)
            feats["misaligned"] = jax.lax.stop_gradient(mismatched)
        return feats

    def d_objective(self, disc_params: Any, feats: Features) -> Objective:
        """d_loss(D(real), D(fake)) + gamma/2 R1 + w * misaligned, and its parts."""
        config, kind = self.config, self.config.loss
        real_logits, fake_logits = self.heads(disc_params, feats["real"]), self.heads(disc_params, feats["fake"])
        loss_real, loss_fake = d_loss_parts(real_logits, fake_logits, kind)
        aux = dict(
            d_loss_real=loss_real,
            d_loss_fake=loss_fake,
            d_acc=d_accuracy(real_logits, fake_logits),
            logits_real=jnp.mean(jnp.stack([jnp.mean(x) for x in real_logits])),
            logits_fake=jnp.mean(jnp.stack([jnp.mean(x) for x in fake_logits])),
        )
        aux["logit_gap"] = aux["logits_real"] - aux["logits_fake"]
        loss = loss_real + loss_fake
        if config.r1_gamma:
            aux["r1"] = r1_penalty(lambda f: self.heads(disc_params, f), feats["real"])
            loss = loss + 0.5 * config.r1_gamma * aux["r1"]
        if config.misaligned_weight:
            mis_logits = self.heads(disc_params, feats["misaligned"], self.misaligned_text[1])
            aux["d_loss_misaligned"] = d_loss_parts(mis_logits, mis_logits, kind)[1]
            loss = loss + config.misaligned_weight * aux["d_loss_misaligned"]
        return loss, aux

    def g_objective(self, disc_params: Any, x0_hat: jax.Array, fake: tuple[jax.Array, ...]) -> Objective:
        """adv_weight * g_loss(D(fake)) + the terms on the sample itself (`sample_terms`): differentiated w.r.t.
        x0_hat and the features `fake` (= fake_features(x0_hat); their gradient goes through the teacher's vjp)."""
        loss, aux = 0.0, {}
        if self.adversarial:  # adv_weight = 0 (a regression or distillation-only run): no heads to ask
            aux["g_loss"] = g_loss(self.heads(disc_params, fake), self.config.loss)
            loss = self.config.adv_weight * aux["g_loss"]
        terms, parts = self.sample_terms(x0_hat)
        return loss + terms, dict(aux, **parts)

    def sample_terms(self, x0_hat: jax.Array) -> Objective:
        """The G loss's terms on the student's sample itself: LADD's optional distillation loss (ADD's)."""
        if not self.config.distill_weight:
            return 0.0, {}
        t_d = self.draws["t_distill"]  # match the teacher's denoised estimate of the re-noised sample
        x_d = add_noise(jax.lax.stop_gradient(x0_hat), self.draws["eps_fake"], t_d)
        distill = distill_loss(x0_hat, self.teacher_denoised(x_d, t_d))
        return self.config.distill_weight * distill, dict(distill=distill)

    def teacher_denoised(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """The teacher's x0 estimate of x at t (the distillation target), guided with CFG scale `distill_cfg`
        when it is above 1: a guided teacher's estimate carries the prompt's attributes more strongly."""
        _, ctx, pooled = self.inputs
        x_in, scale = self.with_cond(x), self.config.get("distill_cfg", 1.0)
        teacher = functools.partial(self.models.teacher.apply, {"params": self.teacher_params})
        if scale == 1.0:
            return denoise(x, teacher(x_in, t, ctx, pooled), t)
        return denoise(x, guided_velocity(teacher, self.frozen, x_in, t, ctx, pooled, scale), t)

    def g_gradient(
        self, disc_params: Any, x0_hat: jax.Array, fake: tuple, fake_pull_back: Callable | None
    ) -> tuple[Objective, jax.Array]:
        """(G loss, its parts), d loss / d x0_hat: directly, plus through the teacher's features when adversarial."""
        objective = functools.partial(self.g_objective, disc_params)
        (total, aux), (x0_grad, fake_grad) = jax.value_and_grad(objective, (0, 1), has_aux=True)(x0_hat, fake)
        if fake_pull_back is not None:
            x0_grad = x0_grad + fake_pull_back(fake_grad)[0]
        return (total, aux), x0_grad

    def student_pass(self, student_params: Any) -> tuple[jax.Array, Callable, tuple, Callable | None]:
        """The student's sample and its vjp, and the teacher's features of it and theirs (none without heads)."""
        x0_hat, pull_back = jax.vjp(self.generate, student_params)
        fake, fake_pull_back = self.fake_features(x0_hat) if self.adversarial else ((), None)
        return x0_hat, pull_back, fake, fake_pull_back


def make_train_step(config: ml_collections.ConfigDict, models: Models, mesh: Mesh, game: type[Game] = Game) -> StepFn:
    """The step for `config` playing `game`; jit it with `jit_train_step`."""

    def train_step(state: TrainState, frozen: Frozen, batch: Batch, key: jax.Array):
        draws = game.step_draws(config, state.step, key, batch["latent"].shape)
        play = game(config, models, mesh, frozen, batch, draws)

        # The student's forward pass and the teacher's on its samples run once: their outputs are constants for D,
        # and their vjps carry the G step's gradient back to the student's params (which do not change in between).
        x0_hat, pull_back, fake, fake_pull_back = play.student_pass(state.student)

        # ---------------------------------------- D step(s): heads (or DMD's fake score) only, teacher constant
        disc, d_opt = state.disc, on_device(state.d_opt)  # on_device: config.offload may keep it in host memory
        d_metrics = {}
        if play.trains_second_network:
            d_objectives = [play.d_objective_of(x0_hat, fake)]
            if config.get("d_renoise", False):  # each further update: the step's samples re-noised afresh
                d_objectives += [play.renoised(i).d_objective_of(x0_hat) for i in range(play.d_updates - 1)]
            if not play.d_updates:  # the control: heads frozen at their initialisation, only measured
                d_total, d_aux = d_objectives[0](disc)
            # Unrolled on purpose: a lax.scan over the updates compiled the toy step in 39 s instead of 57 (XLA:CPU,
            # optimisation level 1), but its loop ran each step 5-7x slower (7-9 s against 1.2-1.6 s).
            for i in range(play.d_updates):
                d_objective = d_objectives[min(i, len(d_objectives) - 1)]
                (loss, aux), d_grads = jax.value_and_grad(d_objective, has_aux=True)(disc)
                if i == 0:  # measured as the heads meet the batch: the d_steps updates all fit this one batch, and
                    # after them its accuracy says how well they fit it, not how well they tell real from fake
                    d_total, d_aux, d_metrics["d_grad_norm"] = loss, aux, optax.tree.norm(d_grads)
                updates, d_opt = models.d_tx.update(d_grads, d_opt, disc)
                disc = optax.apply_updates(disc, updates)
            d_metrics.update(d_loss=d_total, **d_aux)

        # ---------------------------------------------------------------- G step: student only, through the teacher
        student, g_opt, g_metrics = state.student, state.g_opt, {}
        if config.train_student:  # otherwise the heads alone learn against the fixed student (a diagnostic)
            (g_total, g_aux), x0_grad = play.g_gradient(disc, x0_hat, fake, fake_pull_back)
            (g_grads,) = pull_back(x0_grad)
            g_total, g_aux, g_grads = play.anchored(student, g_total, g_aux, g_grads, state.step)
            updates, g_opt = models.g_tx.update(g_grads, on_device(g_opt), student)
            student = optax.apply_updates(student, updates)
            g_metrics = dict(g_total=g_total, g_grad_norm=optax.tree.norm(g_grads), **g_aux)

        new_state = state.replace(
            step=state.step + 1,
            student=student,
            ema=ema_update(on_device(state.ema), student, config.ema_decay),
            disc=disc,
            g_opt=g_opt,
            d_opt=d_opt,
        )
        metrics = dict(student_t=jnp.mean(draws["t"]), t_hat=jnp.mean(draws["t_hat"]), **d_metrics, **g_metrics)
        return new_state, metrics

    return train_step


def make_step_gradients(config: ml_collections.ConfigDict, models: Models, mesh: Mesh) -> GradientsFn:
    """(student, heads, teacher_params, batch, draws) -> (losses, head grads, student grads), no update applied.

    The head grads are those of the D objective at `heads` (the step's first D update uses them); the student
    grads are those of the G objective with the same `heads`, i.e. before any D update. The train step instead
    takes the G gradient after its d_steps D updates; the two agree only when those updates are zero (e.g. at
    step 0, where the warm-up schedule's learning rate is 0; the regression anchor plays at its step-0 weight).
    Measuring both at one point is what makes a comparison with another implementation
    (ladd_jax/torch_ref/ladd_step.py) well defined, with no optimiser in it.
    """

    def step_gradients(student: Any, heads: Any, teacher_params: Any, batch: Batch, draws: Draws):
        game = Game(config, models, mesh, dict(teacher=teacher_params), batch, draws)
        x0_hat, pull_back, fake, fake_pull_back = game.student_pass(student)
        (d_total, d_aux), d_grads = jax.value_and_grad(game.d_objective_of(x0_hat, fake), has_aux=True)(heads)
        (g_total, g_aux), x0_grad = game.g_gradient(heads, x0_hat, fake, fake_pull_back)
        (g_grads,) = pull_back(x0_grad)
        g_total, g_aux, g_grads = game.anchored(student, g_total, g_aux, g_grads, jnp.zeros((), jnp.int32))
        return dict(d_loss=d_total, g_total=g_total, **d_aux, **g_aux), d_grads, g_grads

    return step_gradients


def jit_train_step(step_fn: StepFn, state_sharding: Any, frozen_sharding: Any, batch_sharding: Any, mesh: Mesh):
    """jax.jit with explicit shardings; the state is donated (updated in place), the frozen networks never are."""
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        sharded_trace(step_fn, mesh),
        in_shardings=(state_sharding, frozen_sharding, batch_sharding, replicated),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
    )
