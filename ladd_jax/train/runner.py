"""The step loop shared by every trainer (LADD distillation, rectified-flow pretraining): resume or initialise,
then batch -> compiled step -> clu metrics; log, stop on NaN/Inf, checkpoint, draw samples; SIGTERM saves and
stops (preemption). The trainers differ only in their state, their step and what they log."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
from clu import metrics as clu_metrics
from tqdm.auto import tqdm

from ladd_jax.bench import peak_tflops
from ladd_jax.data.loader import Loader
from ladd_jax.errors import LaddError
from ladd_jax.train.checkpoint import Checkpointer
from ladd_jax.train.writer import MetricWriter

logger = logging.getLogger(__name__)


def check_run_config(config: ml_collections.ConfigDict) -> None:
    """One clear error for step counts, rates and an EMA that no run can use, before anything is loaded or written
    (a negative rate would train uphill without a word; a zero interval would divide by zero at the first step)."""
    for name in ("total_steps", "log_every", "checkpoint_every"):
        if config[name] < 1:
            raise LaddError(f"config.{name} must be at least 1, got {config[name]}: pass --config.{name}=N, N >= 1")
    for name in ("eval_every", "sample_every"):
        if config.get(name, 0) < 0:
            raise LaddError(f"config.{name} must be 0 (never) or a number of steps, got {config[name]}")
    rates = {name: config[name] for name in ("lr", "g_lr", "d_lr") if name in config}
    if "dmd" in config:
        rates["dmd.fake_score_lr"] = config.dmd.fake_score_lr
    negative = {name: rate for name, rate in rates.items() if rate < 0}
    if negative:
        raise LaddError(f"learning rates must be 0 (frozen) or more, got {negative}")
    if config.seed < 0:
        raise LaddError(
            f"config.seed must be a non-negative integer (numpy shuffles the data with it), got {config.seed}"
        )
    if not 0 <= config.ema_decay <= 1:
        raise LaddError(f"config.ema_decay must be in [0, 1] (0: the EMA is the params), got {config.ema_decay}")


class Preemption:
    """SIGTERM (a preempted TPU VM, SLURM's time limit) asks the loop to save and stop at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


# Config keys a resume is expected to change (where the run ends, which step it resumes): no warning for them.
RESUME_KEYS = ("total_steps", "restore_step")


def json_roundtrip(x: Any) -> Any:
    """What a JSON save and restore makes of `x` (tuples become lists), to compare with a restored item."""
    return json.loads(json.dumps(x))


def resume_or_init(
    checkpoints: Checkpointer,
    restore_step: int | None,
    abstract_state: Any,
    init: Callable[[], Any],
    loader: Loader,
    meta: dict,
) -> Any:
    """The state of `restore_step` (default: the latest checkpoint; the loader resumes with it), or `init()`."""
    step = restore_step if restore_step is not None else (checkpoints.steps() or [None])[-1]
    if step is None:
        return init()
    saved = checkpoints.meta(step)  # before the state, whose restore would fail on other shapes as on damage
    changed = _differences(saved.get("architecture", {}), json_roundtrip(meta["architecture"]))
    if changed:
        raise LaddError(
            f"the checkpoint of step {step} in {checkpoints.directory} was made with other architectures than this "
            f"config's ({', '.join(changed)}; checkpoint -> config): use another --workdir, or the config it was "
            "trained with"
        )
    changed = _differences(saved.get("config", {}), json_roundtrip(meta["config"]), skip=RESUME_KEYS)
    if changed:
        logger.warning("resuming step %d with a config that differs from its run's: %s", step, ", ".join(changed))
    state, data_state = checkpoints.restore(step, abstract_state)
    loader.set_state(data_state)
    logger.info("resumed from step %d", step)
    return state


def _differences(saved: Any, now: Any, skip: tuple[str, ...] = (), prefix: str = "") -> list[str]:
    """ "KEY: saved -> now" for each leaf of two nested dicts that differs (KEY dotted), but the keys in `skip`."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now or prefix in skip else [f"{prefix}: {saved!r} -> {now!r}"]
    keys = sorted(set(saved) | set(now))
    return [
        d for k in keys for d in _differences(saved.get(k), now.get(k), skip, f"{prefix}.{k}" if prefix else str(k))
    ]


def memory_report(compiled: Any) -> dict[str, float]:
    """Per-device GiB of a compiled step (XLA's memory analysis; empty where a backend gives none)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    gib = 2.0**30
    out = dict(
        arguments_gib=m.argument_size_in_bytes / gib,
        outputs_gib=m.output_size_in_bytes / gib,
        temp_gib=m.temp_size_in_bytes / gib,
        aliased_gib=m.alias_size_in_bytes / gib,
    )
    out["peak_estimate_gib"] = out["arguments_gib"] + out["outputs_gib"] + out["temp_gib"] - out["aliased_gib"]
    return out


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one step on one device, by XLA's cost analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def report_compiled(name: str, compiled: Any, seconds: float) -> None:
    memory = memory_report(compiled)
    detail = ", ".join(f"{k} {v:.3f}" for k, v in memory.items()) or "no memory analysis on this backend"
    print(f"compiled the {name} step in {seconds:.1f} s; per device: {detail}")


def batch_key(shapes: dict[str, tuple[int, ...]]) -> tuple:
    """What tells one bucket's batches from another's: each field's per-example shape."""
    return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))


class CompiledSteps:
    """The step compiled ahead of time once per bucket of the data (a loader's `element_specs`), each printed with
    its per-device memory before the first step: `steps(state, *constants, batch, key)` runs the one compiled for
    the batch's shapes and never compiles again. `compile_for(spec)` lowers and compiles the step for one spec."""

    def __init__(self, name: str, compile_for: Callable[[dict], Any], specs: Sequence[dict]):
        self.compiled = {}
        for spec in specs:
            start = time.perf_counter()
            compiled = compile_for(spec)
            # With several buckets, each is named by its image-like (h, w, C) fields' shapes.
            images = ", ".join(f"{f} {'x'.join(map(str, s))}" for f, (s, _) in spec.items() if len(s) == 3)
            report_compiled(f"{name} ({images})" if len(specs) > 1 else name, compiled, time.perf_counter() - start)
            self.compiled[batch_key({f: shape for f, (shape, _) in spec.items()})] = compiled
        self.flops = {key: step_flops(compiled) for key, compiled in self.compiled.items()}

    def key(self, batch: dict[str, jax.Array]) -> tuple:
        key = batch_key({f: x.shape[1:] for f, x in batch.items()})
        if key not in self.compiled:
            raise LaddError(f"a batch of shapes {key} matches none of the compiled steps {list(self.compiled)}")
        return key

    def __call__(self, state: Any, *args: Any) -> tuple[Any, dict[str, jax.Array]]:
        return self.compiled[self.key(args[-2])](state, *args)  # args: (*constants, batch, key)


def _guard(metrics: dict[str, float], step: int, checkpoints: Checkpointer) -> None:
    """Stops on a non-finite metric before anything is saved, naming the last good checkpoint."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        steps = checkpoints.steps()
        where = f"the last good checkpoint is step {steps[-1]} in {checkpoints.directory}" if steps else "none saved"
        raise LaddError(
            f"non-finite {bad} by step {step}; training stopped and nothing was saved after it ({where}). Lower "
            "the learning rates, clip gradients harder, or use float32 (config.dtype) to find the cause"
        )


def run_steps(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: Path,
    steps: CompiledSteps,
    state: Any,
    constants: tuple,
    loader: Loader,
    checkpoints: Checkpointer,
    meta: dict,
    postfix: dict[str, str],
    samples: Callable[[Any, Path], Any] | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Steps `state` to config.total_steps with `steps(state, *constants, batch, key)`; returns the final state
    and the last logged metrics. `postfix`: progress-bar label -> metric; `samples(state, png_path) -> image` runs
    every sample_every steps; `evaluate(state) -> {name: value}` at the start and every eval_every steps, logged
    as "eval/name"."""
    start = time.perf_counter()
    peak = peak_tflops(jax.devices()[0])
    writer = MetricWriter(workdir)
    key = jax.random.key(config.seed)
    preemption = Preemption()
    first = int(state.step)
    pending, last, tick, since, flops = None, {}, start, 0, 0.0
    bar = tqdm(total=config.total_steps, initial=first, desc=name, unit="step", disable=jax.process_index() != 0)
    eval_every = config.eval_every if evaluate is not None else 0
    if eval_every and first == 0:
        writer.write_scalars(0, {f"eval/{k}": v for k, v in evaluate(state).items()})
    try:
        for step in range(first, config.total_steps):
            batch = next(loader)
            flops += steps.flops[steps.key(batch)] or 0.0  # buckets differ in cost
            state, metrics = steps(state, *constants, batch, key)
            collection = clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in metrics})
            update = collection.single_from_model_output(**metrics)
            pending = update if pending is None else pending.merge(update)
            done, since = step + 1, since + 1
            bar.update(1)
            is_last = done == config.total_steps or preemption.requested
            save = done % config.checkpoint_every == 0 or is_last
            if done % config.log_every == 0 or save:
                last = {k: float(v) for k, v in pending.compute().items()}
                _guard(last, done, checkpoints)
                seconds = (time.perf_counter() - tick) / since
                last.update(step_time_s=seconds, img_per_s=config.batch_size / seconds)
                if flops and peak:
                    last["mfu"] = flops / since / seconds / (peak * 1e12)
                writer.write_scalars(done, last)
                bar.set_postfix({label: f"{last[k]:.3f}" for label, k in postfix.items() if k in last})
                pending, tick, since, flops = None, time.perf_counter(), 0, 0.0
            if save:
                checkpoints.save(done, state, loader.get_state(), meta, force=True)
            if eval_every and (done % eval_every == 0 or is_last):
                writer.write_scalars(done, {f"eval/{k}": v for k, v in evaluate(state).items()})
            if samples is not None and config.sample_every and (done % config.sample_every == 0 or is_last):
                writer.write_image(done, "samples", samples(state, workdir / "samples" / f"{done:07d}.png"))
            if preemption.requested:
                print(f"SIGTERM: saved step {done} in {checkpoints.directory}; rerun the same command to resume")
                break
    finally:
        bar.close()
        preemption.restore()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        loader.close()
    return state, last
