"""Preference-pair records for Diffusion-DPO (train/dpo.py), from a `ladd-jax synth` folder holding several samples
of each prompt: each prompt's best and worst sample by a scoring function, when they differ by at least a margin.

A pair record holds `chosen` and `rejected` (latents), `context` and `pooled` (the prompt's embeddings), and the two
scores and source indices as plain numbers. The scorer belongs to the caller: a reward model for real data, the toy
world's judge in the toy world (toy/preferences.py), never the instrument that grades the tuned model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ladd_jax.data.loader import RecordSource
from ladd_jax.data.records import iter_records, make_manifest, read_manifest, record_buckets, write_shards
from ladd_jax.errors import LaddError

Scorer = Callable[[list[str], np.ndarray], np.ndarray]  # (prompts, latents [N, h, w, C]) -> scores [N]
SOURCE_FIELDS = ("latent", "context", "pooled")
_FIELD_SOURCES = {"chosen": "latent", "rejected": "latent", "context": "context", "pooled": "pooled"}


def score_samples(samples_dir: str | Path, scorer: Scorer, batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """(prompt of each record, its score), in record order."""
    prompts: list[str] = []
    scores: list[np.ndarray] = []
    batch: list[dict[str, Any]] = []
    total = read_manifest(samples_dir)["num_records"]

    def flush() -> None:
        scores.append(np.asarray(scorer([r["prompt"] for r in batch], np.stack([r["latent"] for r in batch]))))
        batch.clear()

    for record in tqdm(iter_records(samples_dir), total=total, desc="score samples", unit="sample"):
        prompts.append(record["prompt"])
        batch.append(record)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return prompts, np.concatenate(scores).astype(np.float64)


def choose_pairs(prompts: list[str], scores: np.ndarray, min_margin: float) -> list[tuple[int, int]]:
    """(best, worst) record indices of every prompt whose best and worst samples differ by at least `min_margin`
    (ties keep the earlier record), in the order the prompts first appear."""
    groups: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault(prompt, []).append(i)
    pairs = []
    for indices in groups.values():
        best = max(indices, key=lambda i: scores[i])
        worst = min(indices, key=lambda i: scores[i])
        if scores[best] - scores[worst] >= min_margin:
            pairs.append((best, worst))
    return pairs


def write_pairs(
    samples_dir: str | Path,
    out_dir: str | Path,
    scorer: Scorer,
    scorer_name: str,
    min_margin: float,
    shard_size: int = 1024,
) -> dict[str, Any]:
    """Scores every sample of `samples_dir`, pairs each prompt's best and worst, writes the pair records to
    `out_dir`; returns the manifest (its settings hold the scores' summary)."""
    source_manifest = read_manifest(samples_dir)
    if len(record_buckets(source_manifest)) > 1:
        raise LaddError(
            f"{samples_dir} holds samples of several sizes (multi-aspect buckets); pair records hold one size: make "
            "the samples for DPO at one size"
        )
    missing = [f for f in SOURCE_FIELDS if f not in source_manifest["fields"]]
    if missing:
        raise LaddError(
            f"{samples_dir} lacks the fields {missing}; pairs need the samples' latents and text embeddings "
            "(`ladd-jax synth` with text embeddings)"
        )
    prompts, scores = score_samples(samples_dir, scorer)
    pairs = choose_pairs(prompts, scores, min_margin)
    if not pairs:
        raise LaddError(
            f"no prompt of {samples_dir} has samples whose scores differ by {min_margin} or more: draw more samples "
            "per prompt, or lower the margin"
        )
    spec = source_manifest["fields"]
    fields = {name: (spec[src]["shape"], spec[src]["dtype"]) for name, src in _FIELD_SOURCES.items()}
    settings = dict(
        scorer=scorer_name,
        min_margin=min_margin,
        scores_sha256=hashlib.sha256(np.ascontiguousarray(scores).tobytes()).hexdigest(),
        num_samples=len(prompts),
        num_prompts=len(set(prompts)),
        mean_score=float(scores.mean()),
        mean_chosen=float(np.mean([scores[w] for w, _ in pairs])),
        mean_rejected=float(np.mean([scores[r] for _, r in pairs])),
    )
    manifest = make_manifest("synthetic", len(pairs), shard_size, fields, settings, {"samples": str(samples_dir)})
    records = RecordSource(samples_dir, SOURCE_FIELDS)

    def produce(start: int, stop: int):
        for k in range(start, stop):
            chosen, rejected = pairs[k]
            w, r = records[chosen], records[rejected]
            yield dict(
                prompt=prompts[chosen],
                index=k,
                chosen=w["latent"],
                rejected=r["latent"],
                context=w["context"],
                pooled=w["pooled"],
                chosen_index=chosen,
                rejected_index=rejected,
                chosen_score=float(scores[chosen]),
                rejected_score=float(scores[rejected]),
            )

    write_shards(out_dir, manifest, produce, desc="pairs")
    return manifest
