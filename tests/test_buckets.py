"""Multi-aspect buckets (data/buckets.py): SD3's list at a pixel budget, the toy world's three, seeded assignment and
the errors of bad buckets."""

from __future__ import annotations

import numpy as np
import pytest

from ladd_jax.data.buckets import (
    SD3_ASPECT_RATIOS,
    TOY_BUCKETS,
    aspect_buckets,
    assign_buckets,
    buckets_from_column,
    resolve_buckets,
)
from ladd_jax.errors import LaddError


def test_sd3_buckets_keep_the_ratio_and_the_budget():
    buckets = resolve_buckets("sd3", 1024, 16)
    assert len(buckets) == len(SD3_ASPECT_RATIOS) and buckets[:3] == ((1024, 1024), (768, 1360), (1360, 768))
    for (h, w), ratio in zip(buckets, SD3_ASPECT_RATIOS, strict=True):
        rw, rh = (int(x) for x in ratio.split(":"))
        assert h % 16 == 0 and w % 16 == 0
        assert abs(w / h - rw / rh) < 0.03 * rw / rh and abs(h * w / 1024**2 - 1) < 0.06
    assert aspect_buckets(("1:1", "5:3", "3:5"), 64**2, 8) == TOY_BUCKETS  # the toy world's, from the same rule


def test_assignment_is_seeded_uniform_and_prefix_stable():
    a = assign_buckets(3000, 3, seed=1)
    np.testing.assert_array_equal(a, assign_buckets(3000, 3, seed=1))
    np.testing.assert_array_equal(a[:100], assign_buckets(100, 3, seed=1))  # fewer prompts keep their buckets
    assert (a != assign_buckets(3000, 3, seed=2)).any()
    assert np.abs(np.bincount(a) / 3000 - 1 / 3).max() < 0.03


def test_buckets_from_a_column_and_bad_buckets():
    np.testing.assert_array_equal(buckets_from_column(["48x80", "64x64", " 80 x 48 "], TOY_BUCKETS, "p"), [1, 0, 2])
    with pytest.raises(LaddError, match="p, row 1: bucket '32x32' is not one of the job's buckets"):
        buckets_from_column(["48x80", "32x32"], TOY_BUCKETS, "p")
    with pytest.raises(LaddError, match="'48 by 80' is not HEIGHTxWIDTH"):
        resolve_buckets("64x64,48 by 80", 64, 8)
    with pytest.raises(LaddError, match=r"\['44x80'\] have a side that is not a positive multiple of 8"):
        resolve_buckets("64x64,44x80", 64, 8)
    with pytest.raises(LaddError, match="list a size twice"):
        resolve_buckets([(64, 64), "64x64"], 64, 8)
