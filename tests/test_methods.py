"""The baselines in the one trainer (train/methods.py: ADD, LCM, Diffusion2GAN regression) on the tiny world: each
step's loss against a hand computation, resume equal to an uninterrupted run, the export loading in diffusers, and
the regression step on a simulated 8-device mesh equal to 1 device."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import assert_trees_equal, run_mesh, saved_params, tiny_config

from ladd_jax.errors import LaddError
from ladd_jax.flow import flow_match_sigmas
from ladd_jax.models.vae import AutoencoderKL, unscale_latents
from ladd_jax.train import methods, sharding
from ladd_jax.train.dmd import DMDGame
from ladd_jax.train.loop import build, make_loader, train_and_evaluate
from ladd_jax.train.state import init_state
from ladd_jax.train.steps import Game, step_draws
from ladd_jax.train.writer import read_metrics


@pytest.fixture(scope="module")
def features(tmp_path_factory, latent_features) -> dict[str, str]:
    """Tiny random feature networks: a transformers-layout Dinov2 folder (ADD) and a latent feature folder (d2g)."""
    from ladd_jax.convert.dinov2 import save_dinov2
    from ladd_jax.models.dinov2 import Dinov2, Dinov2Config

    root = tmp_path_factory.mktemp("features")
    dino = Dinov2Config(
        hidden_size=16, num_hidden_layers=3, num_attention_heads=2, image_size=64, patch_size=8, use_mask_token=False
    )
    params = Dinov2(dino).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    save_dinov2(dino, params, root / "dino")
    return dict(dino=str(root / "dino"), latent=latent_features)


METHOD_CONFIGS = {  # name -> (config file, overrides); features: which folder
    "lcm": ("lcm", {}),
    "d2g-gan": ("d2g", {"regression.perceptual_weight": 1.0, "adv_weight": 0.1}),
    "add": ("add", {"disc.feature_stride": 2}),
    "dmd": ("dmd", {}),
    "dmd-ladd": ("dmd", {"adv_weight": 1.0}),
}


def method_config(world: dict, features: dict, name: str, **overrides):
    file, base = METHOD_CONFIGS[name]
    c = tiny_config(world, file, **base, **overrides)
    c.features = {"add": features["dino"], "d2g": features["latent"]}.get(file, "")
    return c


def one_step(config, at_step: int = 0):
    """(setup, state before, state after, metrics, batch, key) of one train step: the first, or from a fresh state
    that says it is at step `at_step`."""
    mesh = sharding.make_mesh()
    loader = make_loader(config, mesh)
    setup, student, heads = build(config, loader.element_spec, mesh)
    state = init_state(setup.models, student, heads).replace(step=jnp.asarray(at_step, jnp.int32))
    batch, key = next(loader), jax.random.key(config.seed)
    loader.close()
    step = jax.jit(methods.make_step(config, setup.models, mesh))
    new_state, metrics = step(jax.tree.map(jnp.copy, state), setup.frozen, batch, key)
    return setup, state, new_state, jax.device_get(metrics), batch, key


@pytest.mark.parametrize(
    "solver, distance, skip",
    [("euler", "huber", 2), pytest.param("heun", "l2", 1, marks=pytest.mark.slow)],
)
def test_lcm_loss_by_hand(world, features, solver, distance, skip):
    """The guided teacher step (Euler; Heun: the average of the slopes at t and at Euler's x_s), the EMA target
    f = x - s v at s, and the distance, all from the step's own draws."""
    over = {"lcm.num_steps": 4, "lcm.skip": skip, "lcm.solver": solver, "lcm.distance": distance}
    c = method_config(world, features, "lcm", **over)
    setup, state, _, metrics, batch, key = one_step(c)
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    k_i, k_eps, _ = jax.random.split(jax.random.fold_in(key, 0), 3)
    i = np.asarray(jax.random.randint(k_i, (len(x0),), 0, 4 - skip + 1))
    sig = flow_match_sigmas(4, 3.0)
    t, s = sig[i].astype(np.float32), sig[i + skip].astype(np.float32)
    col = lambda a: a[:, None, None, None]
    x_t = (1 - col(t)) * x0 + col(t) * np.asarray(jax.random.normal(k_eps, x0.shape))
    v = lambda params, x, time, c_, p_: np.asarray(setup.models.teacher.apply({"params": params}, x, time, c_, p_))
    empty = [
        np.broadcast_to(np.asarray(setup.frozen[k]), a.shape)
        for k, a in (("empty_context", ctx), ("empty_pooled", pooled))
    ]
    teacher = setup.frozen["teacher"]
    guided = lambda x, time: (lambda u, k: u + c.teacher_cfg * (k - u))(
        v(teacher, x, time, *empty), v(teacher, x, time, ctx, pooled)
    )
    slope_t = guided(x_t, t)
    x_s = x_t + col(s - t) * slope_t  # one Euler step of the guided flow
    if solver == "heun":
        x_s = x_t + col(s - t) * (slope_t + guided(x_s, s)) / 2
    target = x_s - col(s) * v(state.ema, x_s, s, ctx, pooled)  # f = x - t v; at s = 0, exactly x_s
    pred = x_t - col(t) * v(state.student, x_t, t, ctx, pooled)
    hc = c.lcm.huber_c
    want = np.mean(np.sqrt((pred - target) ** 2 + hc**2) - hc) if distance == "huber" else np.mean((pred - target) ** 2)
    np.testing.assert_allclose(metrics["lcm_loss"], want, rtol=2e-4)


def test_consistency_distances_by_hand():
    from ladd_jax.train.lcm import consistency_distance

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
    np.testing.assert_allclose(consistency_distance(a, b, "l2", 0.0), np.mean((a - b) ** 2), rtol=1e-6)
    c = 0.001
    huber = np.mean(np.sqrt((a - b) ** 2 + c**2) - c)
    np.testing.assert_allclose(consistency_distance(a, b, "huber", c), huber, rtol=1e-6)


def test_d2g_losses_by_hand(world, features):
    c = method_config(world, features, "d2g-gan")
    setup, state, _, metrics, batch, key = one_step(c)
    x0, ctx, pooled, z = (np.asarray(batch[k]) for k in ("latent", "context", "pooled", "noise"))
    ones = np.ones(len(z), np.float32)
    x0_hat = z - np.asarray(setup.models.student.apply({"params": state.student}, z, ones, ctx, pooled))
    np.testing.assert_allclose(metrics["mse"], np.mean((x0_hat - x0) ** 2), rtol=1e-4)
    assert metrics["student_t"] == 1.0
    assert metrics["perceptual"] > 0 and np.isfinite(metrics["g_loss"]) and metrics["d_grad_norm"] > 0
    r = c.regression  # d2g-gan here: mse 1 (tiny's default loss), perceptual 1, adv 0.1
    total = r.mse_weight * metrics["mse"] + r.perceptual_weight * metrics["perceptual"] + 0.1 * metrics["g_loss"]
    np.testing.assert_allclose(metrics["g_total"], total, rtol=1e-4)


def test_add_distillation_by_hand(world, features):
    c = method_config(world, features, "add")
    setup, state, new_state, metrics, batch, key = one_step(c)
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    draws = jax.device_get(step_draws(c, jnp.zeros((), jnp.int32), key, x0.shape))
    col = lambda a: a[:, None, None, None]
    # Compiled: op by op, these passes took a quarter of the test.
    apply = jax.jit(lambda p, x, t: setup.models.student.apply({"params": p}, x, t, ctx, pooled))
    x_t = (1 - col(draws["t"])) * x0 + col(draws["t"]) * draws["eps"]
    x0_hat = x_t - col(draws["t"]) * apply(state.student, x_t, draws["t"])
    t_d = draws["t_distill"]
    x_d = (1 - col(t_d)) * x0_hat + col(t_d) * draws["eps_fake"]
    target = x_d - col(t_d) * apply(setup.frozen["teacher"], x_d, t_d)
    vae = setup.models.vae

    @jax.jit
    def pixels(latents):
        z = unscale_latents(jnp.asarray(latents), vae.config)
        return vae.apply({"params": setup.frozen["vae"]}, z, method=AutoencoderKL.decode)

    per_sample = np.mean((pixels(x0_hat) - pixels(target)) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(metrics["distill"], np.mean((1 - t_d) * per_sample), rtol=1e-3)
    np.testing.assert_allclose(metrics["g_total"], metrics["g_loss"] + 2.5 * metrics["distill"], rtol=1e-5)
    assert metrics["r1"] >= 0 and metrics["d_grad_norm"] > 0
    assert len(setup.models.disc.config.feature_layers) == 2  # stride 2 over the 3 Dinov2 blocks: 0 and 2


def test_guided_distillation_by_hand(world):
    """LADD's latent distillation term toward the teacher's CFG-guided x0 estimate (`distill_cfg` 3): the guided
    target by hand, from the step's own draws; a scale below 1 is refused."""
    c = tiny_config(world, "ladd", distill_weight=2.0, distill_cfg=3.0)
    setup, state, _, metrics, batch, key = one_step(c)
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    draws = jax.device_get(step_draws(c, jnp.zeros((), jnp.int32), key, x0.shape))
    col = lambda a: a[:, None, None, None]
    apply = jax.jit(lambda p, x, t, c_, p_: setup.models.student.apply({"params": p}, x, t, c_, p_))
    x_t = (1 - col(draws["t"])) * x0 + col(draws["t"]) * draws["eps"]
    x0_hat = x_t - col(draws["t"]) * apply(state.student, x_t, draws["t"], ctx, pooled)
    t_d = draws["t_distill"]
    x_d = (1 - col(t_d)) * x0_hat + col(t_d) * draws["eps_fake"]
    empty = [np.broadcast_to(setup.frozen[k], a.shape) for k, a in (("empty_context", ctx), ("empty_pooled", pooled))]
    v_cond = apply(setup.frozen["teacher"], x_d, t_d, ctx, pooled)
    v_empty = apply(setup.frozen["teacher"], x_d, t_d, *empty)
    target = x_d - col(t_d) * (v_empty + 3.0 * (v_cond - v_empty))
    np.testing.assert_allclose(metrics["distill"], np.mean((x0_hat - target) ** 2), rtol=1e-3)
    np.testing.assert_allclose(metrics["g_total"], metrics["g_loss"] + 2.0 * metrics["distill"], rtol=1e-5)
    with pytest.raises(LaddError, match="distill_cfg"):
        methods.method(tiny_config(world, "ladd", distill_cfg=0.5))


@pytest.mark.parametrize("at_one", [1.0, pytest.param(None, marks=pytest.mark.slow)])
def test_guided_features_by_hand(world, at_one):
    """Heads reading CFG-guided teacher features (`disc.feature_cfg` 3; `feature_cfg_t1` 1: unguided for the pairs
    whose student time is 1): the real logits of the first D step by hand, from features f_empty + s (f_text -
    f_empty) of each block (random output layers, so the logits are not 0); a scale below 1 is refused."""
    overrides = {"disc.feature_cfg": 3.0, "disc.feature_cfg_t1": at_one, "disc.output_init": "normal"}
    overrides["student.warmup_steps"] = 0  # t = 1 among the first step's student times
    c = tiny_config(world, "ladd", **overrides)
    setup, state, _, metrics, batch, key = one_step(c)
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    draws = jax.device_get(step_draws(c, jnp.zeros((), jnp.int32), key, x0.shape))
    t_hat, col = draws["t_hat"], lambda a: a[:, None, None, None]
    scale = np.full(len(x0), 3.0) if at_one is None else np.where(draws["t"] >= 1.0, at_one, 3.0)
    assert len(set(scale)) == (1 if at_one is None else 2)  # both kinds of pair in the batch
    x = (1 - col(t_hat)) * x0 + col(t_hat) * draws["eps_real"]
    apply = lambda c_, p_: setup.models.teacher.apply(
        {"params": setup.frozen["teacher"]}, x, t_hat, c_, p_, feature_layers=setup.models.feature_layers
    )
    feats = lambda c_, p_: apply(c_, p_)[1]
    empty = [np.broadcast_to(setup.frozen[k], a.shape) for k, a in (("empty_context", ctx), ("empty_pooled", pooled))]
    s = lambda f: scale.reshape((-1,) + (1,) * (f.ndim - 1))
    guided = [e + s(f) * (f - e) for f, e in zip(feats(ctx, pooled), feats(*empty), strict=True)]
    logits = setup.models.disc.apply({"params": state.disc}, guided, t_hat, pooled)
    np.testing.assert_allclose(metrics["logits_real"], np.mean([np.mean(z) for z in logits]), rtol=1e-4, atol=1e-6)
    for key in ("disc.feature_cfg", "disc.feature_cfg_t1"):
        with pytest.raises(LaddError, match=key):
            methods.method(tiny_config(world, "ladd", **{key: 0.0}))
        with pytest.raises(LaddError, match="pixel feature network"):  # ADD's heads read no teacher features
            methods.method(tiny_config(world, "add", **{key: 3.0}))


def test_unconditional_discriminator_by_hand(world):
    """`disc.text` "empty" (the unconditional-discriminator control): the first D step's real logits by hand from the
    teacher's features under the empty prompt and heads conditioned on its pooled embedding, which differ from the
    logits under the captions; the settings that need a caption are refused."""
    c = tiny_config(world, "ladd", **{"disc.text": "empty", "disc.output_init": "normal"})
    setup, state, _, metrics, batch, key = one_step(c)
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    draws = jax.device_get(step_draws(c, jnp.zeros((), jnp.int32), key, x0.shape))
    t_hat = draws["t_hat"]
    x = (1 - t_hat[:, None, None, None]) * x0 + t_hat[:, None, None, None] * draws["eps_real"]
    empty = [np.broadcast_to(setup.frozen[k], a.shape) for k, a in (("empty_context", ctx), ("empty_pooled", pooled))]

    def real_logits(c_, p_):
        feats = setup.models.teacher.apply(
            {"params": setup.frozen["teacher"]}, x, t_hat, c_, p_, feature_layers=setup.models.feature_layers
        )[1]
        return np.mean([np.mean(z) for z in setup.models.disc.apply({"params": state.disc}, feats, t_hat, p_)])

    np.testing.assert_allclose(metrics["logits_real"], real_logits(*empty), rtol=1e-4, atol=1e-6)
    assert abs(real_logits(ctx, pooled) - real_logits(*empty)) > 1e-3  # the captions would have changed them
    with pytest.raises(LaddError, match="disc.text='shuffled'"):
        methods.method(tiny_config(world, "ladd", **{"disc.text": "shuffled"}))
    for key, value in (("misaligned_weight", 1.0), ("disc.feature_cfg", 3.0)):
        with pytest.raises(LaddError, match="gives the heads no caption"):
            methods.method(tiny_config(world, "ladd", **{"disc.text": "empty", key: value}))


def two_steps(config):
    """(setup, state before, after one step, after two, the first step's metrics, its batch, key): the first
    step's rates are 0 (the warm-up), the second's are not."""
    mesh = sharding.make_mesh()
    loader = make_loader(config, mesh)
    setup, student, second_network = build(config, loader.element_spec, mesh)
    state = init_state(setup.models, student, second_network)
    step, key = jax.jit(methods.make_step(config, setup.models, mesh)), jax.random.key(config.seed)
    batch = next(loader)
    first, metrics = step(jax.tree.map(jnp.copy, state), setup.frozen, batch, key)
    # `first` as host arrays, as `state` came in: the step's mesh-placed outputs would make jit compile it again.
    second, _ = step(jax.tree.map(jnp.copy, jax.device_get(first)), setup.frozen, next(loader), key)
    loader.close()
    return setup, state, first, second, jax.device_get(metrics), batch, key


def moved(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_dmd_by_hand_and_its_fake_score_learns(world):
    """DMD's two losses at step 0 from the step's own draws: the fake score (the teacher's copy, not yet moved: the
    warm-up's rate is 0) by flow matching on the student's sample, and the distribution-matching loss from the
    guided teacher's and the fake score's x0 estimates with DMD's per-sample normalisation; at step 1 the fake
    score and the student move."""
    c = tiny_config(world, "dmd", d_steps=1, lr_warmup_steps=1)
    setup, state, first, second, metrics, batch, key = two_steps(c)
    teacher = setup.frozen["teacher"]
    fake_score = lambda st: st.disc["fake_score"]
    assert moved(fake_score(state), teacher) == 0 and moved(fake_score(first), teacher) == 0
    assert moved(fake_score(second), fake_score(first)) > 0 and moved(second.student, first.student) > 0
    x0, ctx, pooled = (np.asarray(batch[k]) for k in ("latent", "context", "pooled"))
    draws = jax.device_get(DMDGame.step_draws(c, jnp.zeros((), jnp.int32), key, x0.shape))
    assert (draws["t_distill"] >= 0.02).all() and (draws["t_distill"] <= 0.98).all()
    col = lambda a: a[:, None, None, None]
    apply = jax.jit(lambda p, x, t, c_, p_: setup.models.student.apply({"params": p}, x, t, c_, p_))
    x_t = (1 - col(draws["t"])) * x0 + col(draws["t"]) * draws["eps"]
    x0_hat = x_t - col(draws["t"]) * apply(state.student, x_t, draws["t"], ctx, pooled)
    s, eps = draws["t_score"], draws["eps_real"]
    v = apply(teacher, (1 - col(s)) * x0_hat + col(s) * eps, s, ctx, pooled)
    np.testing.assert_allclose(metrics["fake_score_loss"], np.mean((v - (eps - x0_hat)) ** 2), rtol=1e-3)
    s = draws["t_distill"]
    x_s = (1 - col(s)) * x0_hat + col(s) * draws["eps_fake"]
    empty = [np.broadcast_to(setup.frozen[k], a.shape) for k, a in (("empty_context", ctx), ("empty_pooled", pooled))]
    v_cond, v_empty = apply(teacher, x_s, s, ctx, pooled), apply(teacher, x_s, s, *empty)
    real = x_s - col(s) * (v_empty + c.distill_cfg * (v_cond - v_empty))
    fake = x_s - col(s) * v_cond  # the fake score is still the teacher, unguided
    grad = (fake - real) / np.mean(np.abs(x0_hat - real), axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(metrics["dmd"], 0.5 * np.mean(grad**2), rtol=1e-3)
    np.testing.assert_allclose(metrics["g_total"], c.distill_weight * metrics["dmd"], rtol=1e-6)


def test_dmd_with_heads_adds_ladds_term(world):
    """adv_weight > 0: LADD's heads play beside the fake score (each with its own rate), and the student's loss is
    DMD's plus LADD's."""
    c = tiny_config(world, "dmd", d_steps=1, lr_warmup_steps=1, adv_weight=0.5)
    _, state, _, second, metrics, *_ = two_steps(c)
    assert set(state.disc) == {"fake_score", "heads"} and moved(second.disc["heads"], state.disc["heads"]) > 0
    assert 0 <= metrics["d_acc"] <= 1 and metrics["fake_score_loss"] > 0
    np.testing.assert_allclose(metrics["g_total"], metrics["dmd"] + 0.5 * metrics["g_loss"], rtol=1e-5)
    # LADD's control (disc.train=False): the heads stay at their initialisation, the fake score still learns.
    _, state, _, second, *_ = two_steps(
        tiny_config(world, "dmd", d_steps=1, lr_warmup_steps=1, adv_weight=0.5, **{"disc.train": False})
    )
    assert moved(second.disc["heads"], state.disc["heads"]) == 0
    assert moved(second.disc["fake_score"], state.disc["fake_score"]) > 0


def test_dmd_control_frozen_at_the_teacher_and_unguided_has_no_gradient(world):
    """Frozen at the teacher with an unguided real score, the fake and real x0 estimates are one function: DMD's
    gradient is zero and the student does not move (a guided real score alone is what such a control trains)."""
    c = tiny_config(world, "dmd", d_steps=1, lr_warmup_steps=1, distill_cfg=1.0, **{"dmd.fake_score_lr": 0.0})
    _, state, _, second, metrics, *_ = two_steps(c)
    assert metrics["dmd"] == 0 and moved(second.student, state.student) == 0 and moved(second.disc, state.disc) == 0


# Slow for the suite's time (60 s each): CI checks exact resume on LADD's game (tests/test_train.py) and each
# method's step by hand above.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHOD_CONFIGS))
def test_resume_equals_uninterrupted_and_export_loads(world, features, name, tmp_path):
    from diffusers import SD3Transformer2DModel

    from ladd_jax.train.export import export_workdir

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_and_evaluate(method_config(world, features, name), straight)
    train_and_evaluate(method_config(world, features, name, total_steps=2), resumed)
    train_and_evaluate(method_config(world, features, name), resumed)
    assert_trees_equal(saved_params(resumed, 4), saved_params(straight, 4))
    assert_trees_equal(saved_params(resumed, 4, "ema"), saved_params(straight, 4, "ema"))
    timing = ("step_time_s", "img_per_s", "mfu")
    losses = lambda w: [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(w)]
    assert losses(resumed) == losses(straight)
    out = export_workdir(straight, tmp_path / "export", ema=True)
    model = SD3Transformer2DModel.from_pretrained(out / "transformer")
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow  # CI runs LADD's 8-device test (tests/test_train.py); this one adds the regression game
def test_regression_on_eight_devices_equals_one(world, tmp_path):
    over = {"adv_weight": 0.1}  # MSE plus the adversarial term: the student's and the heads' paths both sharded
    run_mesh(world, tmp_path / "one", devices=1, data_axis=1, fsdp=1, method="d2g", **over)
    run_mesh(world, tmp_path / "eight", devices=8, data_axis=2, fsdp=4, method="d2g", **over)
    one, eight = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "eight")
    for a, b in zip(one, eight, strict=True):
        for k in ("mse", "g_loss", "d_loss"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert_trees_equal(saved_params(tmp_path / "eight", 2), saved_params(tmp_path / "one", 2), atol=1e-5)


def test_method_errors(world, features, tmp_path):
    unknown = tiny_config(world)
    unknown.method = "gan"
    with pytest.raises(LaddError, match="config.method"):
        train_and_evaluate(unknown, tmp_path)
    with pytest.raises(LaddError, match="config.features"):
        train_and_evaluate(tiny_config(world, "add"), tmp_path)
    with pytest.raises(LaddError, match="lcm.skip"):
        train_and_evaluate(method_config(world, features, "lcm", **{"lcm.skip": 99}), tmp_path)
    with pytest.raises(LaddError, match="distill_weight"):
        methods.method(tiny_config(world, "dmd", distill_weight=0.0))
    with pytest.raises(LaddError, match="d_steps"):
        methods.method(tiny_config(world, "dmd", d_steps=0, **{"disc.train": False}))
    for name in methods.RENOISE_FREE:
        with pytest.raises(LaddError, match=f"d_renoise False with method {name}"):
            methods.method(tiny_config(world, name, d_renoise=True))


def test_misaligned_pairs_text_comes_from_the_batch_or_the_records(world):
    config = tiny_config(world, misaligned_weight=1.0)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    batch = {k: jnp.arange(6.0).reshape(3, 2) + i for i, k in enumerate(("latent", "context", "pooled"))}
    batch |= {"mismatch_context": -batch["context"], "mismatch_pooled": -batch["pooled"]}
    game = lambda c: Game(c, None, mesh, {}, batch, {})
    assert methods.batch_fields(config) == ("latent", "context", "pooled")
    rolled = game(config).misaligned_text  # random pairs: the next sample's text
    np.testing.assert_array_equal(rolled[1], jnp.roll(batch["pooled"], 1, axis=0))
    config.misaligned_source = "records"  # hard negatives: each record's own mismatched caption
    assert methods.batch_fields(config) == ("latent", "context", "pooled", "mismatch_context", "mismatch_pooled")
    np.testing.assert_array_equal(game(config).misaligned_text[0], -batch["context"])
    config.misaligned_source = "shuffled"
    with pytest.raises(LaddError, match="misaligned_source='shuffled'"):
        methods.batch_fields(config)


def test_misaligned_pairs_under_the_hinge_are_warned_about_once_per_run(world):
    """The hinge's kink holds the heads at logit -1 once the pairs outweigh the real side (alignment notes): such a
    run gets one warning naming the loss that plays; the pairs under the non-saturating loss, or with no heads to
    play, get none."""
    (warning,) = methods.stalled_game_warnings(tiny_config(world, misaligned_weight=1.0, loss="hinge"))
    assert "misaligned_weight=1.0 with loss='hinge'" in warning and "--config.loss=non_saturating" in warning
    assert not methods.stalled_game_warnings(tiny_config(world, misaligned_weight=1.0, loss="non_saturating"))
    assert not methods.stalled_game_warnings(tiny_config(world, "dmd", misaligned_weight=1.0, adv_weight=0.0))
    assert not methods.stalled_game_warnings(tiny_config(world, loss="hinge"))
