"""File helpers of the worldmodel package: a content hash and an atomic JSON write.

``worldmodel`` may not import ``oni`` (whose ``oni.files`` holds the message layer's atomic writer) outside the
runtime, so checkpoints, exports and benchmark reports share these two.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["sha256_file", "write_json_atomic"]


def sha256_file(path: Path) -> str:
    """The SHA-256 of the file at ``path`` (hex), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
