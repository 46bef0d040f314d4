"""Atomic file writes: readers see the old content or the new, never a part, even after a crash.

Every file the project writes for others to read (reports, manifests, caches, keys, schemas, golden files)
goes through here. (``worldmodel`` may not import ``oni``, so ``worldmodel.checkpoint`` keeps its own.)
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Mapping

Content = bytes | str | Callable[[IO[bytes]], None]


def atomic_write(
    path: str | os.PathLike[str], content: Content, *, mode: int = 0o644, exclusive: bool = False, fsync: bool = True
) -> Path:
    """Write ``content`` (bytes, text as UTF-8, or a function writing to a binary file) to ``path``.

    A temporary file beside ``path`` is written, given ``mode``, flushed to disk (``fsync``) and renamed over
    ``path``. ``exclusive`` refuses to replace an existing file (``FileExistsError``), also one created by
    someone else meanwhile. Returns the path.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, target)  # link() refuses an existing target, unlike rename()
            os.unlink(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_json(path: str | os.PathLike[str], document: Mapping[str, Any] | list[Any], *, indent: int = 2) -> Path:
    """Write ``document`` as JSON (with a final newline) to ``path``, atomically, readable by all."""
    return atomic_write(path, json.dumps(document, indent=indent) + "\n")
