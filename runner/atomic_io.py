"""Writing run outputs atomically: a reader never sees half a file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from runner.secrets import scrub_text

def _clean(obj):
    """JSON-safe: NaN/inf become null, numpy and torch scalars become numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (secrets masked: runner.secrets) so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    text = scrub_text(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True
