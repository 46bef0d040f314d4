"""``oniwm`` subcommands that belong to the message layer. Each module defines ``register(subparsers)``.

:func:`on_stop_signals` is the one place a long-running command turns SIGINT/SIGTERM into a clean stop.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Callable, Iterator

__all__ = ["on_stop_signals"]


@contextmanager
def on_stop_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``request_stop()`` (instead of raising KeyboardInterrupt), so
    a node ends its loop and closes cleanly; the previous handlers come back afterwards. ``request_stop`` may run
    while the main thread holds any lock: it must only set a flag."""

    def handler(_signum: int, _frame: Any) -> None:
        request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
