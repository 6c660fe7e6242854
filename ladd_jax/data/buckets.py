"""Multi-aspect buckets: a bucket is an image size (height, width) in pixels; a synth job gives each prompt one.

Training at several aspect ratios needs batches of one size each: `ladd-jax synth --buckets ...` samples every
prompt at its bucket's size, the records of a data folder are grouped by bucket (records.py), the loader draws
same-bucket batches (loader.py) and the trainer compiles its step once per bucket (train/runner.py).

SD3's buckets: the aspect ratios (width:height) that Stability's SD3 API offers (its `aspect_ratio` parameter:
1:1, 16:9, 9:16, 21:9, 9:21, 3:2, 2:3, 5:4, 4:5), each at a pixel budget (the model's default size squared,
1024^2 for SD3) with sides rounded to multiples of the VAE factor x patch size (16). The LADD paper trains SD3-Turbo
"multi-aspect" without listing its buckets; this list is our choice. The toy world's three buckets (64x64, 48x80,
80x48) are ratios 1:1, 5:3 and 3:5 at 64^2 pixels, sides multiples of 8.

Assignment: each prompt's bucket is drawn uniformly with the job's seed (`assign_buckets`), or read from a column of
the prompts file ("HxW" strings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from ladd_jax.errors import LaddError

Bucket = tuple[int, int]  # (height, width) in pixels
SD3_ASPECT_RATIOS = ("1:1", "16:9", "9:16", "21:9", "9:21", "3:2", "2:3", "5:4", "4:5")  # width:height
TOY_BUCKETS: tuple[Bucket, ...] = ((64, 64), (48, 80), (80, 48))
NAMED = ("sd3",)  # bucket lists named in configs and flags, resolved against the model's size rules
_ASSIGN_STREAM = 1 << 21  # keeps the bucket draws apart from other streams of the same seed


def aspect_buckets(ratios: Sequence[str], pixels: int, multiple: int) -> tuple[Bucket, ...]:
    """(height, width) for each "W:H" ratio with about `pixels` pixels, both sides rounded to `multiple`."""
    out = []
    for ratio in ratios:
        w, h = (int(x) for x in ratio.split(":"))
        side = lambda share: max(multiple, multiple * round(math.sqrt(pixels * share) / multiple))
        out.append((side(h / w), side(w / h)))
    return tuple(out)


def format_bucket(bucket: Bucket) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def parse_bucket(text: str) -> Bucket:
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(text))
    if match is None:
        raise LaddError(f"bucket {text!r} is not HEIGHTxWIDTH in pixels, e.g. 48x80")
    return int(match.group(1)), int(match.group(2))


def resolve_buckets(spec: str | Sequence, default_size: int, multiple: int) -> tuple[Bucket, ...]:
    """The buckets of a config value: "sd3" (SD3's aspect ratios at default_size^2), "HxW,HxW,..." or a sequence
    of "HxW" strings / (h, w) pairs; each side a positive multiple of `multiple` (the VAE factor x patch size)."""
    if isinstance(spec, str) and spec.strip() == "sd3":
        buckets = aspect_buckets(SD3_ASPECT_RATIOS, default_size**2, multiple)
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        buckets = tuple(parse_bucket(b) if isinstance(b, str) else (int(b[0]), int(b[1])) for b in items)
    if not buckets:
        raise LaddError(f"no buckets in {spec!r}; give HxW,HxW,... or one of {NAMED}")
    bad = [format_bucket(b) for b in buckets if min(b) < multiple or b[0] % multiple or b[1] % multiple]
    if bad:
        raise LaddError(
            f"buckets {bad} have a side that is not a positive multiple of {multiple} (the VAE's downscale factor "
            "times the transformer's patch size); round each side to a multiple of it"
        )
    if len(set(buckets)) != len(buckets):
        raise LaddError(f"buckets {[format_bucket(b) for b in buckets]} list a size twice; list each once")
    return buckets


def assign_buckets(num: int, num_buckets: int, seed: int) -> np.ndarray:
    """Bucket index of each of `num` prompts, uniform and seeded; the first n prompts get the same buckets however
    many follow (a job over a longer prompts file keeps the shorter one's assignment)."""
    rng = np.random.default_rng([seed, _ASSIGN_STREAM])
    return rng.integers(num_buckets, size=num)


def buckets_from_column(values: Sequence[str], buckets: Sequence[Bucket], where: str) -> np.ndarray:
    """Bucket index of each prompt from its "HxW" value (a column of the prompts file)."""
    index = {b: k for k, b in enumerate(buckets)}
    out = []
    for row, value in enumerate(values):
        bucket = parse_bucket(value)
        if bucket not in index:
            raise LaddError(
                f"{where}, row {row}: bucket {value!r} is not one of the job's buckets "
                f"{[format_bucket(b) for b in buckets]}; add it to --buckets or fix the row"
            )
        out.append(index[bucket])
    return np.asarray(out, np.int64)
