"""ONI messages: the header every message carries, and the message itself."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

WIRE_VERSION = 1
HEADER_FIELDS = ("schema", "schema_version", "seq", "source", "stamp_ns", "pub_ns", "frame_id", "trace_id")


def new_trace_id() -> str:
    """A fresh random trace id: 32 lowercase hex digits (128 bits)."""
    return os.urandom(16).hex()


def now_ns() -> int:
    """Wall-clock time in ns since the Unix epoch (the clock of ``stamp_ns`` and ``pub_ns``)."""
    return time.time_ns()


@dataclass(slots=True)
class Header:
    """The versioned header on every ONI message (docs/oni-v1.md, "Header").

    ``stamp_ns`` is when the data was acquired, ``pub_ns`` when it was published, both int64 ns since the
    Unix epoch. ``seq`` counts per publisher and topic from 0. ``trace_id`` is kept from the inputs of a
    computation to the outputs derived from them.
    """

    schema: str
    schema_version: str
    seq: int
    source: str
    stamp_ns: int
    pub_ns: int
    frame_id: str
    trace_id: str

    def to_dict(self) -> dict[str, Any]:
        # Spelled out (in HEADER_FIELDS order): it runs on every publish, and a getattr loop costs ~4x more.
        return {
            "schema": self.schema,
            "schema_version": self.schema_version,
            "seq": self.seq,
            "source": self.source,
            "stamp_ns": self.stamp_ns,
            "pub_ns": self.pub_ns,
            "frame_id": self.frame_id,
            "trace_id": self.trace_id,
        }


@dataclass(slots=True)
class Message:
    """A decoded message: its topic, header and data fields.

    ``data`` maps field names to scalars, strings, lists of scalars, or numpy arrays (tensors). Raw tensors
    are read-only views of the received buffers. ``recv_ns`` is the wall-clock receive time (0 if the message
    was not received from the bus). Tensors from shared memory stay valid until their producer reuses the
    slot; :meth:`valid` tells whether they still are.
    """

    topic: str
    header: Header
    data: dict[str, Any]
    recv_ns: int = 0
    shm_leases: list[Any] = field(default_factory=list)

    def valid(self) -> bool:
        """True while every shared-memory tensor of this message still holds what was published."""
        return all(lease.valid() for lease in self.shm_leases)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view: tensors as ``{"dtype", "shape", "values"}`` (used by golden files and tools)."""
        out: dict[str, Any] = {}
        for key, value in self.data.items():
            if isinstance(value, np.ndarray):
                out[key] = {"dtype": str(value.dtype), "shape": list(value.shape), "values": value.tolist()}
            else:
                out[key] = value
        return {"topic": self.topic, "header": self.header.to_dict(), "data": out}
