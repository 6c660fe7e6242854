"""Value types of the commands' arguments, shared so that every command reads a value the same way."""

from __future__ import annotations

import argparse


def seed(text: str) -> int:
    """A `--seed`: a non-negative integer. numpy's generators, which draw the toy world's prompts, the buckets and
    the loader's order, take no negative seed; one rule for every command keeps a seed valid wherever it goes."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, got {value}: pass 0 or more")
    return value
