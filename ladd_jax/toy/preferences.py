"""The toy world's preference pairs for Diffusion-DPO: K teacher samples of each train-split prompt (`ladd-jax synth`,
the prompt written K times, so each sample has its own seed), judged by the toy judge (toy/judge.py, never the
evaluator), each prompt's best against its worst.

    python -m ladd_jax.toy.preferences --teacher DIR --out DIR [--prompts 512] [--samples 4] [--steps 20] [--cfg 3]
                                       [--scorer judge|random]

writes OUT/samples (the synth records) and OUT/pairs (the pair records `ladd-jax dpo` trains on); `--scorer random`
writes OUT/pairs_random from the same samples, the control whose preferences carry no information.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax import arguments
from ladd_jax.atomic import make_writable_folder
from ladd_jax.data.preferences import write_pairs
from ladd_jax.errors import LaddError, run_command

SCORERS = ("judge", "random")  # "random": the control, preferences that carry no information


def random_scorer(seed: int) -> Any:
    """Scores drawn at random (deterministic for a fixed order of calls): pairs that prefer nothing."""
    rng = np.random.default_rng(seed)
    return lambda prompts, latents: rng.uniform(size=len(prompts))


def judge_scorer(pipe: Any, world: Any) -> Any:
    """(prompts, latents) -> the judge's scores of the VAE-decoded images."""
    from ladd_jax.toy.judge import score

    def scorer(prompts: list[str], latents: np.ndarray) -> np.ndarray:
        images = np.round(np.clip(pipe.decode(latents), 0.0, 1.0) * 255).astype(np.uint8)
        return np.asarray([score(world, image, prompt) for image, prompt in zip(images, prompts, strict=True)])

    return scorer


def make_toy_pairs(
    teacher: str | Path,
    out: str | Path,
    num_prompts: int = 512,
    samples_per_prompt: int = 4,
    num_steps: int = 20,
    cfg: float = 3.0,
    min_margin: float = 0.1,
    seed: int = 0,
    max_sequence_length: int = 16,
    scorer: str = "judge",
) -> dict[str, Any]:
    """Writes OUT/samples (reused when present) and OUT/pairs (OUT/pairs_random for the random control); returns
    the pairs' manifest."""
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.world import sample_scenes

    if scorer not in SCORERS:
        raise LaddError(f"--scorer {scorer!r}: use one of {SCORERS}")
    if samples_per_prompt < 2:
        raise LaddError(f"--samples {samples_per_prompt}: a pair needs at least 2 samples per prompt")
    world = read_toy_world(teacher)
    out = make_writable_folder(out, "the preference data's folder")
    captions = [s.caption() for s in sample_scenes(world, "train", num_prompts, seed)]
    prompts = out / "prompts.txt"
    prompts.write_text("".join(f"{c}\n" for c in captions for _ in range(samples_per_prompt)))
    pipe = SD3Pipeline.from_pretrained(teacher)
    run_synth(
        model=str(teacher),
        prompts=str(prompts),
        out=str(out / "samples"),
        num_steps=num_steps,
        cfg=cfg,
        seed=seed,
        max_sequence_length=max_sequence_length,
        batch_size=32,
        pipeline=pipe,
    )
    if scorer == "random":
        return write_pairs(out / "samples", out / "pairs_random", random_scorer(seed), "random", min_margin)
    judge = judge_scorer(pipe, world)
    return write_pairs(out / "samples", out / "pairs", judge, "toy judge (ladd_jax/toy/judge.py)", min_margin)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", required=True, help="a toy SD3 folder (its toy_world.json names the world)")
    p.add_argument("--out", required=True)
    p.add_argument("--prompts", type=int, default=512, help="train-split prompts")
    p.add_argument("--samples", type=int, default=4, help="teacher samples per prompt")
    p.add_argument("--steps", type=int, default=20, help="the teacher's Euler steps")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--min-margin", type=float, default=0.1, help="least score gap between chosen and rejected")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--scorer", choices=SCORERS, default="judge", help="random: the control (writes OUT/pairs_random)")
    args = p.parse_args(argv)
    manifest = make_toy_pairs(
        args.teacher,
        args.out,
        args.prompts,
        args.samples,
        args.steps,
        args.cfg,
        args.min_margin,
        args.seed,
        scorer=args.scorer,
    )
    s = manifest["settings"]
    print(
        f"{manifest['num_records']} pairs of {s['num_prompts']} prompts; {args.scorer} score: all samples "
        f"{s['mean_score']:.3f}, chosen {s['mean_chosen']:.3f}, rejected {s['mean_rejected']:.3f}"
    )


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m ladd_jax.toy.preferences"))
