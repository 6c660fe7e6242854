"""Trains the toy world's pixel feature network: the frozen network ADD's discriminator reads, DINOv2's stand-in.

ADD's discriminator heads read the tokens of a frozen pixel-space feature network, DINOv2 at real scale. The
toy world gets its own: a tiny Dinov2 trained here and saved as a plain transformers Dinov2 folder, so the same
code path (`load_dinov2` -> `Dinov2`) serves DINOv2 and the toy network. It learns to read a scene: the
evaluator's labels (object count, relation axis, shape / colour / size per slot, `scene_labels`) through a linear
head on the CLS token and the mean patch token of its last hidden state. The head only serves training and is
not saved. It is deliberately not the evaluator: another architecture (a ViT, not a CNN), seed and training set
(train-split scenes only, like the student's data, so the held-out colour-shape pairs stay unseen), so a student
trained against it is not graded by the instrument it was fitted to.

Its input is what ADD's game feeds it (`ladd_jax.train.add`, configs/add.py's pixel_mean / pixel_std): pixels
in [0, 1] normalised with ImageNet's mean and std, as DINOv2's. Training adds pixel noise as the evaluator's
does (`add_pixel_noise`), since decoded generated images are noisy. Accuracy is measured on fresh renders of
train-split scenes (new scene draws and jitter). The report is written beside the transformers files, as
`REPORT_FILE`, which transformers and `load_dinov2` ignore.

    python -m ladd_jax.toy.pixel_features --teacher ladd_jax/toy/assets/teacher --out DIR [--steps N]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.atomic import atomic_path, check_writable_destination
from ladd_jax.convert.dinov2 import save_dinov2
from ladd_jax.errors import LaddError
from ladd_jax.models.dinov2 import Dinov2, Dinov2Config
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.evaluator import accuracy, add_pixel_noise
from ladd_jax.toy.latent_features import (
    ClassifierTrainConfig,
    fit_label_classifier,
    head_outputs,
    in_batches,
    labels_of_logits,
    run_trainer_cli,
    train_split_renders,
)
from ladd_jax.toy.world import ToyWorld

REPORT_FILE = "toy_pixel_features.json"
# DINOv2's input normalisation, which ADD's game applies to every feature network (configs/add.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# 64 px in 8 px patches -> 8 x 8 tokens; image_size is set from the world. No mask token: nothing masks patches
# here, and transformers loads a folder without one when the config says so.
DEFAULT_NET = Dinov2Config(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    image_size=64,
    patch_size=8,
    layerscale_value=1.0,
    use_mask_token=False,
)


@dataclasses.dataclass(frozen=True)
class PixelTrainConfig(ClassifierTrainConfig):
    """How the toy pixel feature net is trained (measured accuracies: ladd_jax/toy/assets/README.md).

    1200 steps with a CLS + mean-token head read 52.5% of fresh renders all-correct (relation axis 57%); the
    flattened-token head 67.7% at 1200 steps, its loss still falling fast, hence 2400."""

    steps: int = 2400  # batches of 32 cost under half of 64 on a CPU: more, smaller steps learn faster here
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    noise_std: float = 0.05  # the largest pixel noise std (in [0, 1] units), as the evaluator trains with
    seed: int = 11  # the evaluator trains with seed 0, the latent feature net with 7


class PixelClassifier(nn.Module):
    """The Dinov2 backbone (what is saved) and a linear head (training only) on its flattened patch tokens:
    normalised pixels [B, S, S, 3] -> the labels' flat logits [B, outputs]. Flattened, not pooled: the reading
    order of two objects depends on where they are (a CLS + mean-token head left the relation axis at 57%), and
    the patch tokens are what ADD's heads read."""

    config: Dinov2Config
    outputs: int

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        tokens = Dinov2(self.config, name="backbone")(pixels)
        patches = tokens[:, 1:]
        return nn.Dense(self.outputs, name="head")(patches.reshape(patches.shape[0], -1))


def to_feature_input(pixels: jax.Array) -> jax.Array:
    """Pixels in [0, 1] [B, S, S, 3] -> the network's input, normalised as ADD's game does it."""
    return (pixels - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def _uint8_to_unit(images: jax.Array) -> jax.Array:
    return images.astype(jnp.float32) / 255.0


def predict_pixel_labels(world: ToyWorld, config: Dinov2Config, params: Any, images: np.ndarray) -> dict[str, Any]:
    """The classifier head's labels (argmax) of uint8 renders [N, S, S, 3], in `scene_labels`' layout; `params`
    holds "backbone" and "head"."""
    net = PixelClassifier(config, head_outputs(world))

    @jax.jit
    def predict(params: Any, images: jax.Array) -> dict[str, jax.Array]:
        flat = net.apply({"params": params}, to_feature_input(_uint8_to_unit(images)))
        return labels_of_logits(world, flat)

    return in_batches(lambda x: predict(params, x), images, "classify renders")


def train_pixel_features(
    teacher_folder: str | Path,
    out_dir: str | Path,
    train_config: PixelTrainConfig = PixelTrainConfig(),
    net_config: Dinov2Config = DEFAULT_NET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains the pixel feature net on the world of `teacher_folder` (a toy SD3 folder; only its toy_world.json is
    read), measures it, writes the backbone to `out_dir` as a transformers Dinov2 folder (`load_dinov2` reads it)
    with the report in `REPORT_FILE`; returns the report. `net_config`'s image_size is set from the world."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_writable_destination(out_dir, overwrite)  # before minutes of work
    cfg = train_config
    world = read_toy_world(teacher_folder)
    if world.image_size % net_config.patch_size:
        raise LaddError(
            f"the world's {world.image_size} px images are not a multiple of patch_size {net_config.patch_size}"
        )
    net_config = dataclasses.replace(net_config, image_size=world.image_size)
    pool, pool_labels = train_split_renders(world, cfg.pool_size, cfg.seed, "render training images")

    net = PixelClassifier(net_config, head_outputs(world))
    init_key, noise_key = jax.random.split(jax.random.key(cfg.seed))
    params = net.init(init_key, jnp.zeros((1, world.image_size, world.image_size, 3)))["params"]

    def logits_fn(params: Any, x: jax.Array) -> jax.Array:
        return net.apply({"params": params}, x)

    def augment(images: jax.Array, key: jax.Array) -> jax.Array:
        # add_pixel_noise works on [-1, 1] images with its std in [0, 1] units.
        noisy = add_pixel_noise(_uint8_to_unit(images) * 2.0 - 1.0, key, cfg.noise_std)
        return to_feature_input((noisy + 1.0) / 2.0)

    params, loss_stats = fit_label_classifier(
        world, logits_fn, params, pool, pool_labels, augment, cfg, noise_key, "train pixel features"
    )
    train_seconds = time.perf_counter() - start

    eval_images, eval_labels = train_split_renders(world, cfg.eval_size, cfg.seed + 1, "render check images")
    report = {
        "accuracy": accuracy(predict_pixel_labels(world, net_config, params, eval_images), eval_labels),
        **loss_stats,
        "train_seconds": train_seconds,  # rendering the pool included
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(params["backbone"]))),  # the saved ones
    }
    meta = {"teacher": str(teacher_folder), "world": world.to_dict(), "train": dataclasses.asdict(cfg)}
    with atomic_path(out_dir, overwrite) as tmp:  # the folder appears whole, report included
        save_dinov2(net_config, params["backbone"], tmp, overwrite=True)  # tmp exists, empty
        (tmp / REPORT_FILE).write_text(json.dumps({**meta, "report": report}, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ladd_jax.toy.pixel_features --teacher DIR --out DIR [--steps N]`; returns the exit status (2
    with a one-line message on a LaddError, as `ladd-jax` does)."""
    out_help = "the transformers Dinov2 folder to write"
    module, description = "ladd_jax.toy.pixel_features", __doc__.split("\n")[0]
    result = run_trainer_cli(argv, module, description, out_help, PixelTrainConfig, train_pixel_features)
    if result is None:
        return 2
    out, report = result
    print("fresh train-split renders: " + ", ".join(f"{k} {v:.2%}" for k, v in report["accuracy"].items()))
    print(f"wrote {out} ({report['num_params']:,} params, trained in {report['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
