"""What would a wider or finer toy teacher cost on this CPU? XLA's FLOP count (`cost_analysis`) of one pretraining
step (batch 32: forward and backward of the rectified-flow loss) and of one sampling forward pass (batch 32) for the
shipped teacher's architecture and for wider (more heads of the same size) and patch-1 variants. The counts are
the compiled programs' own, so they do not depend on the machine's load; multiplied by a measured time of the
shipped architecture they estimate the others'.

    python launch/toy_capacity_cost.py --out F.json [--teacher DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from ladd_jax.toy.demo import ASSETS

BATCH = 32


def flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def costs(config, msl: int) -> dict:
    """Size and GFLOPs of one training step and one sampling forward pass of a randomly initialised model."""
    from ladd_jax.models.mmdit import MMDiT, count_params, example_inputs, init_params

    model = MMDiT(config)
    x, t, _, pooled = example_inputs(config, batch=BATCH)
    context = jnp.zeros((BATCH, msl, config.joint_attention_dim))
    params = init_params(config, jax.random.key(0))
    forward = lambda p: model.apply({"params": p}, x, t, context, pooled)
    train = jax.value_and_grad(lambda p: jnp.mean(jnp.square(forward(p))))
    return dict(
        hidden_size=config.hidden_size,
        patch_size=config.patch_size,
        tokens=(config.sample_size // config.patch_size) ** 2,
        params=count_params(params),
        train_step_gflops=flops(train, params) / 1e9,
        forward_gflops=flops(forward, params) / 1e9,
    )


def main() -> None:
    from ladd_jax.convert.mmdit import load_mmdit
    from ladd_jax.toy.demo import load_ladd_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", default=str(ASSETS / "teacher"))
    ap.add_argument("--out", required=True, help="a .json file")
    args = ap.parse_args()
    out = Path(args.out)
    if not out.parent.is_dir():
        ap.error(f"--out {out}: its folder {out.parent} does not exist; create it or choose another file")
    base, _ = load_mmdit(Path(args.teacher) / "transformer")
    width = lambda c, heads: dataclasses.replace(
        c, num_attention_heads=heads, caption_projection_dim=heads * c.attention_head_dim
    )
    finer = dataclasses.replace(base, patch_size=1, pos_embed_max_size=base.pos_embed_max_size * base.patch_size)
    heads = base.num_attention_heads
    variants = {
        "shipped": base,
        f"width {(heads + 1) * base.attention_head_dim}": width(base, heads + 1),
        f"width {2 * heads * base.attention_head_dim}": width(base, 2 * heads),
        "patch 1": finer,
        f"patch 1, width {(heads + 1) * base.attention_head_dim}": width(finer, heads + 1),
    }
    msl = load_ladd_config("toy").max_sequence_length
    rows = {}
    for name, config in variants.items():
        rows[name] = costs(config, msl)
        for k in ("train_step", "forward"):
            rows[name][f"{k}_vs_shipped"] = rows[name][f"{k}_gflops"] / rows["shipped"][f"{k}_gflops"]
        print(name, json.dumps(rows[name]), flush=True)
    out.write_text(json.dumps(dict(batch=BATCH, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
