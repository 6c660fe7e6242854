"""`ladd-jax train`, `pretrain`, `dpo`, `aot` and `export`: thin mains over the trainers.

    ladd-jax train --config configs/ladd.py:VARIANT --workdir W [--config.key=value ...]
               [--coordinator_address host:port --num_processes N --process_id I]   (else auto-detected)
    ladd-jax pretrain --config configs/pretrain.py:toy --workdir W --config.model=DIR --config.data=DIR
    ladd-jax dpo --config configs/dpo.py:toy --workdir W --config.model=DIR --config.data=PAIRS
    ladd-jax aot --config configs/ladd.py:sd3-medium --preset sd3-medium --devices 8 [--resolution 1024]
               [--device-memory 80GB] [--json] [--config.key=value ...]
    ladd-jax export --workdir W --out DIR [--ema] [--step N] [--dtype bfloat16] [--overwrite] [--lora]

`--config` and its `--config.key=value` overrides are ml_collections config flags (absl), so they are parsed
from the arguments argparse leaves over.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from ladd_jax.errors import LaddError


def _config_flags(argv: Sequence[str], extra: dict[str, tuple]) -> object:
    """Parses --config (an ml_collections config file with its overrides) plus `extra` absl flags."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "configs/ladd.py:VARIANT", flag_values=values)
    for name, (kind, default, help_) in extra.items():
        getattr(flags, f"DEFINE_{kind}")(name, default, help_, flag_values=values)
    try:
        values(["ladd-jax", *argv])
    except flags.Error as e:
        raise LaddError(f"{e}; usage: {__doc__.split(chr(10))[2].strip()}") from None
    if values.config is None:
        raise LaddError("--config is required, e.g. --config configs/ladd.py:tiny")
    return values


DISTRIBUTED_FLAGS = {
    "coordinator_address": ("string", None, "host:port of process 0 (multi-process without a known launcher)"),
    "num_processes": ("integer", None, "number of processes"),
    "process_id": ("integer", None, "this process's index"),
}


def _run_trainer(rest: Sequence[str], trainer: str) -> None:
    values = _config_flags(rest, {"workdir": ("string", None, "where checkpoints and logs go"), **DISTRIBUTED_FLAGS})
    if not values.workdir:
        raise LaddError("--workdir is required: the folder for checkpoints, logs and samples (resumed if present)")
    from ladd_jax import distributed

    distributed.initialize(values)
    if trainer == "dpo" and values.config.get("objective") != "dpo":
        raise LaddError("`ladd-jax dpo` needs a DPO config (objective 'dpo'), e.g. --config configs/dpo.py:toy")
    if trainer in ("pretrain", "dpo"):
        from ladd_jax.train.pretrain import pretrain as fn
    else:
        from ladd_jax.train.loop import train_and_evaluate as fn
    metrics = fn(values.config, values.workdir)
    print({k: round(v, 4) for k, v in metrics.items()})


def run_train(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "ladd")


def run_pretrain(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "pretrain")


def run_dpo(args: argparse.Namespace, rest: Sequence[str]) -> None:
    _run_trainer(rest, "dpo")


def run_aot(args: argparse.Namespace, rest: Sequence[str]) -> None:
    # absl flag names cannot hold a dash; accept the dashed spelling the other commands use.
    rest = [a.replace("--device-memory", "--device_memory", 1) if a.startswith("--device-memory") else a for a in rest]
    values = _config_flags(
        rest,
        {
            "preset": ("string", "sd3-medium", "the teacher architecture: an MMDiT preset"),
            "devices": ("integer", 8, "simulated CPU devices of the abstract mesh"),
            "resolution": ("integer", 1024, "image side in pixels"),
            "device_memory": ("string", None, "e.g. 80GB: say whether the step fits and search the largest batch"),
            "json": ("boolean", False, "print the report as one JSON line"),
        },
    )
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


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="LADD distillation: --config configs/ladd.py:VARIANT --workdir W")
    p.set_defaults(fn=run_train, takes_rest=True)
    p = sub.add_parser("pretrain", help="rectified-flow pretraining: --config configs/pretrain.py:toy --workdir W")
    p.set_defaults(fn=run_pretrain, takes_rest=True)
    p = sub.add_parser("dpo", help="Diffusion-DPO (LoRA) of a teacher: --config configs/dpo.py:toy --workdir W")
    p.set_defaults(fn=run_dpo, takes_rest=True)
    p = sub.add_parser("aot", help="compile the LADD step ahead of time on an abstract mesh; print memory")
    p.set_defaults(fn=run_aot, takes_rest=True)
    p = sub.add_parser("export", help="write a trained student as a diffusers SD3 pipeline folder")
    p.add_argument("--workdir", required=True, help="the training workdir")
    p.add_argument("--out", required=True, help="the pipeline folder to write")
    p.add_argument("--ema", action="store_true", help="export the EMA of the student's params")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--lora", action="store_true", help="a LoRA run: write only its adapters, as a diffusers LoRA file")
    p.set_defaults(fn=run_export, takes_rest=True)
