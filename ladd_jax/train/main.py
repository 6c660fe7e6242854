"""`ladd-jax train`, `pretrain`, `dpo`, `aot` and `export`: thin mains over the trainers.

Each command's usage is in USAGE (and its `--help`). `--config` and its `--config.key=value` overrides are
ml_collections config flags (absl), so they are parsed from the arguments argparse leaves over.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ladd_jax.errors import LaddError

if TYPE_CHECKING:
    import ml_collections

USAGE = {
    "train": "ladd-jax train --config configs/ladd.py:VARIANT --workdir W [--config.key=value ...]\n"
    "    [--coordinator_address host:port --num_processes N --process_id I]   (else auto-detected)",
    "pretrain": "ladd-jax pretrain --config configs/pretrain.py:toy --workdir W --config.model=DIR --config.data=DIR",
    "dpo": "ladd-jax dpo --config configs/dpo.py:toy --workdir W --config.model=DIR --config.data=PAIRS",
    "aot": "ladd-jax aot --config configs/ladd.py:sd3-medium --preset sd3-medium --devices 8 [--resolution 1024]\n"
    "    [--device-memory 80GB] [--json] [--config.key=value ...]",
}
CONFIG_HELP = (
    "--config FILE:VARIANT: an ml_collections config file and its variant (the file's docstring lists them);\n"
    "--config.KEY=VALUE: override any key of it (e.g. --config.batch_size=8); the file says what each key does."
)
DISTRIBUTED_FLAGS = {
    "coordinator_address": ("string", None, "host:port of process 0 (multi-process without a known launcher)"),
    "num_processes": ("integer", None, "number of processes"),
    "process_id": ("integer", None, "this process's index"),
}
TRAINER_FLAGS = {"workdir": ("string", None, "where checkpoints and logs go (resumed if present)"), **DISTRIBUTED_FLAGS}
TRAINER_CONFIGS = {  # command: (the kind of config it runs, the files that hold one)
    "train": ("distillation", "configs/ladd.py, add.py, lcm.py, d2g.py or dmd.py"),
    "pretrain": ("pretraining", "configs/pretrain.py"),
    "dpo": ("DPO", "configs/dpo.py"),
}
AOT_FLAGS = {
    "preset": ("string", "sd3-medium", "the teacher architecture: an MMDiT preset"),
    "devices": ("integer", 8, "simulated CPU devices of the abstract mesh"),
    "resolution": ("integer", 1024, "image side in pixels"),
    "device_memory": ("string", None, "e.g. 80GB: say whether the step fits and search the largest batch"),
    "json": ("boolean", False, "print the report as one JSON line"),
}


def _config_flags(argv: Sequence[str], extra: dict[str, tuple], usage: str) -> object:
    """Parses --config (an ml_collections config file with its overrides) plus `extra` absl flags; `usage` goes
    into the error a bad argument raises."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    # ml_collections finds the --config.KEY overrides in sys_argv (default: the process's sys.argv, which is not
    # `argv` when main() is called from Python).
    full_argv = ["ladd-jax", *argv]
    config_flags.DEFINE_config_file("config", None, "configs/ladd.py:VARIANT", flag_values=values, sys_argv=full_argv)
    for name, (kind, default, help_) in extra.items():
        getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=values)
    try:
        values(full_argv)
        config = values.config
        if config is not None:  # ml_collections defers a failed load to the config's first use
            config.get("method")
    except (flags.Error, AttributeError, KeyError, OSError) as e:
        _explain_config_args(argv)  # absl and ml_collections report these as tracebacks: name the argument instead
        raise LaddError(f"{e}; usage: {' '.join(usage.split())}") from None
    if config is None:
        raise LaddError("--config is required, e.g. --config configs/ladd.py:tiny")
    return values


def _explain_config_args(argv: Sequence[str]) -> None:
    """After absl failed to parse `argv`: one LaddError naming the argument and the fix when the config file is
    missing, its variant unknown or a --config.KEY override names no key (absl and ml_collections report these as
    a traceback, or an error holding one); returns when none of these is the cause."""
    import difflib

    import ml_collections

    from ladd_jax.config_files import load_config_file

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None and "--config" in argv[:-1]:
        spec = argv[list(argv).index("--config") + 1]
    if spec is None:
        return
    path, _, variant = spec.partition(":")
    config = load_config_file(path, variant or None)
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key, node = arg.removeprefix("--config.").split("=", 1)[0], config
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, ml_collections.ConfigDict):
                hint = f"{'.'.join(parts[:i])} is a value, not a group of keys"
            elif part not in node:
                close = difflib.get_close_matches(part, list(node.keys()), n=3)
                hint = f"did you mean {', '.join(close)}?" if close else f"its keys here: {', '.join(node.keys())}"
            else:
                node = node[part]
                continue
            raise LaddError(f"{arg}: {spec} has no key {key!r} ({hint}); the config file lists every key")


def _trainer_of(config: ml_collections.ConfigDict) -> str:
    """The command a trainer config is for: a distillation config names its `method`, a DPO config its objective."""
    if "method" in config:
        return "train"
    return "dpo" if config.get("objective") == "dpo" else "pretrain"


def _require_config_for(config: ml_collections.ConfigDict, command: str, trainer: str) -> None:
    """`ladd-jax COMMAND` runs configs of `trainer`: one clear error for a config of another trainer, which would
    otherwise fail deep in the wrong trainer on a key it lacks."""
    belongs = _trainer_of(config)
    if belongs != trainer:
        kind, files = TRAINER_CONFIGS[trainer]
        raise LaddError(f"`ladd-jax {command}` needs a {kind} config ({files}); this one is for `ladd-jax {belongs}`")


def _run_trainer(rest: Sequence[str], trainer: str) -> None:
    values = _config_flags(rest, TRAINER_FLAGS, USAGE[trainer])
    if not values.workdir:
        raise LaddError("--workdir is required: the folder for checkpoints, logs and samples (resumed if present)")
    _require_config_for(values.config, trainer, trainer)
    from ladd_jax import distributed

    distributed.initialize(values)
    if trainer in ("pretrain", "dpo"):
        from ladd_jax.train.pretrain import pretrain as fn
    else:
        from ladd_jax.train.loop import train_and_evaluate as fn
    metrics = fn(values.config, values.workdir)
    print({k: round(v, 4) for k, v in metrics.items()})


def run_train(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "train")


def run_pretrain(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "pretrain")


def run_dpo(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "dpo")


def run_aot(args: argparse.Namespace, rest: Sequence[str]) -> None:
    # absl flag names cannot hold a dash; accept the dashed spelling the other commands use.
    rest = [a.replace("--device-memory", "--device_memory", 1) if a.startswith("--device-memory") else a for a in rest]
    values = _config_flags(rest, AOT_FLAGS, USAGE["aot"])
    _require_config_for(values.config, "aot", "train")
    if values.devices < 1:
        raise LaddError(f"--devices must be at least 1 (the simulated CPU devices of the mesh), got {values.devices}")
    # Simulated devices exist only if XLA is told before JAX starts: `ladd-jax aot` is its own process.
    os.environ["XLA_FLAGS"] = (
        f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={values.devices}"
    )
    import json

    from ladd_jax.models.mmdit import MMDiTConfig
    from ladd_jax.train.aot import aot_report, format_report
    from ladd_jax.train.memory import parse_device_memory

    memory = parse_device_memory(values.device_memory) if values.device_memory else None
    teacher = MMDiTConfig.preset(values.preset)
    report = aot_report(values.config, teacher, values.resolution, memory, name=values.preset)
    print(json.dumps(report) if values.json else format_report(report))


def run_export(args: argparse.Namespace, rest: Sequence[str]) -> None:
    if rest:
        raise LaddError(f"unknown arguments {list(rest)}")
    from ladd_jax.train.export import export_workdir

    out = export_workdir(
        args.workdir, args.out, ema=args.ema, step=args.step, dtype=args.dtype, overwrite=args.overwrite, lora=args.lora
    )
    which = "EMA " if args.ema else ""
    if args.lora:
        print(f"wrote {out}: the {which}student's LoRA; diffusers: pipe.load_lora_weights({str(out)!r})")
    else:
        print(f"wrote {out}: a diffusers SD3 pipeline folder with the {which}student")


def _flags_help(flags: dict[str, tuple]) -> str:
    """One line per absl flag: --name: its help (its default)."""
    return "\n".join(
        f"--{name}: {help_}" + ("" if default is None else f" (default {default})")
        for name, (_, default, help_) in flags.items()
    )


def _add_config_parser(
    sub: argparse._SubParsersAction, name: str, help_: str, flags: dict[str, tuple], fn: Callable
) -> None:
    """A command whose arguments are absl flags (--config and `flags`): its --help prints USAGE and the flags,
    which argparse cannot list itself."""
    description = f"{help_}\n\n{CONFIG_HELP}\n{_flags_help(flags)}"
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(name, help=help_, usage=USAGE[name], description=description, formatter_class=formatter)
    p.set_defaults(fn=fn, takes_rest=True)


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    _add_config_parser(sub, "train", "LADD distillation, and its baselines (configs/*.py)", TRAINER_FLAGS, run_train)
    _add_config_parser(sub, "pretrain", "rectified-flow pretraining of a teacher", TRAINER_FLAGS, run_pretrain)
    _add_config_parser(sub, "dpo", "Diffusion-DPO (LoRA) of a teacher", TRAINER_FLAGS, run_dpo)
    what = "compile the LADD step ahead of time on an abstract mesh; print memory"
    _add_config_parser(sub, "aot", what, AOT_FLAGS, run_aot)
    p = sub.add_parser("export", help="write a trained student as a diffusers SD3 pipeline folder")
    p.add_argument("--workdir", required=True, help="the training workdir")
    p.add_argument("--out", required=True, help="the pipeline folder to write")
    p.add_argument("--ema", action="store_true", help="export the EMA of the student's params")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--lora", action="store_true", help="a LoRA run: write only its adapters, as a diffusers LoRA file")
    p.set_defaults(fn=run_export, takes_rest=True)
