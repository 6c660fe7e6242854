"""Reading the JSON files of model folders (config.json, model_index.json, ...) with one clear error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ladd_jax.errors import LaddError


def read_json(path: str | Path, missing: str) -> Any:
    """The parsed file; `missing` is the message when it does not exist (name the fix)."""
    path = Path(path)
    if not path.is_file():
        raise LaddError(missing)
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LaddError(f"{path} is not valid JSON ({e}); re-download or re-save it") from e
