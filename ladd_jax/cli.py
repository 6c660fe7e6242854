"""The `ladd-jax` command: thin argument parsing over the library's functions."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ladd_jax.errors import run_command

# Commands whose figures are compile and run times: a warm persistent compilation cache would change them.
TIMED_COMMANDS = ("bench", "aot")


def _convert(args: argparse.Namespace) -> None:
    from ladd_jax.atomic import check_writable_destination
    from ladd_jax.convert.mmdit import checkpoint_dtype, convert_checkpoint

    start = time.perf_counter()
    check_writable_destination(Path(args.dst), args.overwrite)  # before any reading
    dtype = args.dtype or checkpoint_dtype(args.src)
    convert_checkpoint(args.src, args.dst, args.to, dtype=dtype, overwrite=args.overwrite)
    extra = "" if args.to == "orbax" else f" in {dtype}"
    print(f"wrote {args.dst} ({args.to}{extra}) in {time.perf_counter() - start:.1f} s")


def _lora_merge(args: argparse.Namespace) -> None:
    from ladd_jax.atomic import check_writable_destination
    from ladd_jax.convert.lora import apply_lora_file
    from ladd_jax.convert.mmdit import load_mmdit
    from ladd_jax.export import export_student

    check_writable_destination(Path(args.out), args.overwrite)  # before any reading
    config, params = load_mmdit(args.model)
    merged = apply_lora_file(config, params, args.lora, args.weight)
    export_student(args.model, config, merged, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.out}: {args.model} with the LoRA {args.lora} merged (weight {args.weight:g})")


def _widen(args: argparse.Namespace) -> None:
    from ladd_jax.export import widen_for_conditioning

    out = widen_for_conditioning(args.model, args.cond, args.out, args.overwrite)
    print(f"wrote {out}: {args.model} taking {args.cond} conditioning latents (zero weights: samples as before)")


def _bench(args: argparse.Namespace) -> None:
    from ladd_jax import bench

    bench.run(args.what, args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ladd-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert MMDiT weights between diffusers, SD3 single-file and orbax")
    p.add_argument("src", help="a diffusers transformer (or pipeline) folder, an SD3 .safetensors file, or orbax")
    p.add_argument("dst", help="the destination folder (diffusers, orbax) or .safetensors file (sd3)")
    p.add_argument("--to", choices=("diffusers", "sd3", "orbax"), required=True)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: the source's dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    p.set_defaults(fn=_convert)

    p = sub.add_parser("widen", help="a text-to-image pipeline made an inpainting or editing model to fine-tune")
    p.add_argument("--model", required=True, help="a diffusers SD3 pipeline folder (text to image)")
    p.add_argument("--cond", choices=("inpaint", "edit"), required=True, help="the conditioning latents it will take")
    p.add_argument("--out", required=True, help="the pipeline folder to write")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_widen)

    p = sub.add_parser("lora-merge", help="a pipeline folder with a diffusers/peft LoRA merged into its transformer")
    p.add_argument("--model", required=True, help="a diffusers SD3 pipeline folder (a teacher or a distilled student)")
    p.add_argument("--lora", required=True, help="a LoRA .safetensors file, or the folder holding it")
    p.add_argument("--out", required=True, help="the pipeline folder to write")
    p.add_argument("--weight", type=float, default=1.0, help="the adapter's weight (diffusers' adapter scale)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_lora_merge)

    p = sub.add_parser("bench", help="benchmarks (figures for the README; never timed tests)")
    p.add_argument(
        "what",
        choices=("mmdit", "pipeline", "ladd", "attention"),
        help="mmdit: the Flax MMDiT; pipeline: SD3Pipeline; ladd: one LADD train step beside its PyTorch reference; "
        "attention: xla beside blockwise attention",
    )
    p.add_argument("--preset", default=None, help="an MMDiT preset (e.g. sd3-medium) instead of the small config")
    p.add_argument("--resolution", type=int, default=None, help="image side in pixels (latent = /8)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--steps", type=int, default=5, help="timed repetitions after warm-up")
    p.add_argument(
        "--model",
        default=None,
        help='pipeline: a diffusers SD3 folder (required); `python -c "from tests.tokenizer_fixtures import '
        "write_tiny_sd3_folder; write_tiny_sd3_folder('tiny_sd3')\"`, run from the repo root, writes a tiny random one",
    )
    p.add_argument("--sampling-steps", type=int, default=28, help="pipeline: sampler steps per image")
    p.add_argument("--cfg", type=float, default=7.0, help="pipeline: classifier-free guidance scale")
    p.add_argument("--no-torch", action="store_true", help="skip the diffusers PyTorch comparison")
    p.add_argument("--no-torch-compile", action="store_true", help="ladd: time the PyTorch reference eager only")
    p.add_argument(
        "--config", default="configs/ladd.py:tiny", help="ladd: the LADD config PATH:VARIANT (heads, loss, d_steps)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line only")
    p.add_argument("--remat", default="none", help="remat policy of the Flax model")
    p.add_argument("--attention", default=None, choices=("xla", "cudnn", "blockwise"), help="attention implementation")
    p.set_defaults(fn=_bench)
    from ladd_jax.data.encode_real import add_encode_real_parser
    from ladd_jax.data.records_command import add_records_parser
    from ladd_jax.data.synth import add_synth_parser
    from ladd_jax.sample import add_sample_parser
    from ladd_jax.toy.components import add_toy_components_parser, add_toy_vae_decoder_parser
    from ladd_jax.toy.demo import add_demo_parser
    from ladd_jax.toy.evaluate import add_evaluate_parser
    from ladd_jax.toy.evaluator_command import add_toy_evaluator_parser
    from ladd_jax.train.main import add_train_parsers

    add_sample_parser(sub)
    add_toy_components_parser(sub)
    add_toy_vae_decoder_parser(sub)
    add_synth_parser(sub)
    add_encode_real_parser(sub)
    add_records_parser(sub)
    add_train_parsers(sub)
    add_demo_parser(sub)
    add_evaluate_parser(sub)
    add_toy_evaluator_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "takes_rest", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command not in TIMED_COMMANDS:
        from ladd_jax.compile_cache import enable_compilation_cache

        enable_compilation_cache()
    body = (lambda: args.fn(args, rest)) if getattr(args, "takes_rest", False) else (lambda: args.fn(args))
    return run_command(body, f"ladd-jax {args.command}")


if __name__ == "__main__":
    sys.exit(main())
