"""The empty prompt's embeddings, what classifier-free guidance's unconditional branch and text dropout use, checked
against the data's embedding shapes (the data must have been encoded by the same folder with the same length)."""

from __future__ import annotations

from typing import Any

import jax

from ladd_jax.errors import LaddError


def empty_prompt(pipe: Any, max_sequence_length: int, element_spec: dict) -> tuple[jax.Array, jax.Array]:
    """(context [L, D], pooled [P]) of the prompt "" from an `SD3Pipeline`'s text encoders."""
    ctx, _, pooled, _ = pipe.encode_prompt(
        [""], max_sequence_length=max_sequence_length, do_classifier_free_guidance=False
    )
    want = {"context": ctx.shape[1:], "pooled": pooled.shape[1:]}
    got = {k: tuple(element_spec[k][0]) for k in want}
    if got != {k: tuple(v) for k, v in want.items()}:
        raise LaddError(
            f"the data's text embeddings have shapes {got}, the pipeline's encoders give {want} with "
            f"max_sequence_length={max_sequence_length}; encode the data with this pipeline folder and that length"
        )
    return ctx[0], pooled[0]
