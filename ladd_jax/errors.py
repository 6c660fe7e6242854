"""The project's user-facing error: one message naming the problem and the fix."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class LaddError(ValueError):
    """Bad input from the user (a checkpoint, a folder, a config value), with what to do about it."""


def run_command(fn: Callable[[], Any], prog: str) -> int:
    """Runs a command's body; returns its exit status: 0, or 2 with `PROG: error: MESSAGE` on stderr for a LaddError
    (one line naming the problem and the fix; a traceback would bury it)."""
    try:
        fn()
    except LaddError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
