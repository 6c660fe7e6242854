"""Toy-world metrics in the evaluator's terms: a Frechet distance of its features (FD, in the spirit of FID)
and prompt alignment (the share of images that show every attribute their caption requests, as in GenEval).

Images are uint8 [N, S, S, 3] or floats in [0, 1] (what pipelines return).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.toy.evaluator import Evaluator
from ladd_jax.toy.world import parse_caption, render_dataset


class FeatureStats(NamedTuple):
    mean: np.ndarray  # [D]
    cov: np.ndarray  # [D, D]


def features(evaluator: Evaluator, images: np.ndarray) -> np.ndarray:
    """The evaluator's penultimate features, float64 [N, D]."""
    return evaluator.run(images)[0].astype(np.float64)


def feature_stats(feats: np.ndarray) -> FeatureStats:
    if feats.ndim != 2 or len(feats) < 2:
        raise LaddError(f"feature statistics need at least 2 feature vectors [N, D], got shape {feats.shape}")
    return FeatureStats(feats.mean(axis=0), np.cov(feats, rowvar=False))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues from rounding -> 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """|mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^1/2).

    tr((C_a C_b)^1/2) is computed as tr((C_a^1/2 C_b C_a^1/2)^1/2): the same eigenvalues, but of a symmetric
    matrix, so it needs only `eigh` (stable, no complex parts, no scipy)."""
    root_a = _sqrt_psd(a.cov)
    inner = root_a @ b.cov @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = a.mean - b.mean
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_sqrt)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FD between two sets of feature vectors [N, D], [M, D]."""
    return frechet_distance_from_stats(feature_stats(feats_a), feature_stats(feats_b))


def reference_stats(evaluator: Evaluator, num: int, seed: int, split: str = "test") -> FeatureStats:
    """Feature statistics of `num` real renders of the split: what generated images' FD is measured against."""
    images, _, _ = render_dataset(evaluator.world, split, num, seed)
    return feature_stats(features(evaluator, images))


def aligned(evaluator: Evaluator, images: np.ndarray, captions: list[str]) -> np.ndarray:
    """bool [N]: whether each image shows exactly the scene its caption describes (objects, attributes, relation)."""
    if len(images) != len(captions):
        raise LaddError(f"{len(images)} images but {len(captions)} captions: give one caption per image")
    wanted = [parse_caption(evaluator.world, c).canonical() for c in captions]
    return np.array([p == w for p, w in zip(evaluator.predict(images), wanted, strict=True)], bool)


def alignment(evaluator: Evaluator, images: np.ndarray, captions: list[str]) -> float:
    """The share of images that show every attribute their caption requests."""
    return float(aligned(evaluator, images, captions).mean())
