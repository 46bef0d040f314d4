"""Shared-memory tensor slots for large tensors between processes on one host.

A producer owns a *ring*: one memory-mapped file (under /dev/shm) with ``slots`` fixed-size slots and one
generation counter per slot. It *loans* a slot as a writable numpy array, fills it in place and publishes;
the message then carries a descriptor ``{"shm": {"segment", "slot", "gen", "offset"}}`` instead of bytes,
and the consumer gets a read-only numpy view of the same memory: no copy on either side.

Slots are reused round-robin. A reused slot's generation changes first, so a reader can always tell whether
its view still holds what was published: :meth:`Lease.valid` (and :meth:`oni.message.Message.valid`) compare
the generation in the descriptor with the live one. A reader that must keep data past ``slots`` publishes
copies it. Generations follow a seqlock: odd while the producer writes, even once published.
See docs/oni-v1.md, "Shared memory".
"""

from __future__ import annotations

import mmap
import os
import secrets
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from oni.errors import StaleView, TensorMismatch
from oni.tensor import DTYPES, dtype_name

SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_MAGIC = b"ONISHM01"
_HEADER = struct.Struct("<8sIIQ")  # magic, version, slots, slot_bytes
_ALIGN = 64


def _layout(slots: int, slot_bytes: int) -> tuple[int, int, int]:
    """(offset of the generation array, offset of slot 0, slot stride) in bytes."""
    gens_at = _ALIGN
    data_at = -(-(gens_at + 8 * slots) // _ALIGN) * _ALIGN
    stride = -(-slot_bytes // _ALIGN) * _ALIGN
    return gens_at, data_at, stride


@dataclass(frozen=True)
class ShmConfig:
    """A producer's shared-memory ring: ``slots`` slots of ``slot_bytes`` each.

    Arrays of at least ``min_bytes`` published on a topic with shared memory enabled go through a slot
    (copied in, unless they were loaned); smaller ones travel in the message.
    """

    slots: int = 16
    slot_bytes: int = 8 * 1024 * 1024
    min_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.slots < 2:
            raise ValueError(f"shm slots must be >= 2, got {self.slots}")
        if self.slot_bytes < 1:
            raise ValueError(f"shm slot_bytes must be >= 1, got {self.slot_bytes}")


class ShmDescriptor(dict):
    """A published slot's tensor descriptor (``dtype``, ``shape``, ``encoding``, ``shm``).

    Its own type, so the encoder passes exactly these through into a message and nothing else that
    happens to be a dict.
    """


class ShmRing:
    """The producer side: creates the segment, loans slots, and turns loaned arrays into descriptors."""

    def __init__(self, config: ShmConfig, prefix: str = "oni") -> None:
        self.config = config
        safe = "".join(c if c.isalnum() or c in "_.-" else "_" for c in prefix)[:100]
        self.name = f"{safe}-{os.getpid()}-{secrets.token_hex(4)}"
        self._path = os.path.join(SHM_DIR, self.name)
        gens_at, self._data_at, self._stride = _layout(config.slots, config.slot_bytes)
        size = self._data_at + self._stride * config.slots
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        _HEADER.pack_into(self._map, 0, _MAGIC, 1, config.slots, config.slot_bytes)
        self._gens = np.frombuffer(self._map, dtype="<u8", count=config.slots, offset=gens_at)
        self._next = 0
        self._loans: dict[int, tuple[int, np.ndarray]] = {}  # id(array) -> (slot, array)

    def loan(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable array in the next slot. Publish it (or let it go) before ``slots`` more loans."""
        dt = DTYPES[dtype_name(np.dtype(dtype))]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes > self.config.slot_bytes:
            raise ValueError(f"a loan of {nbytes} bytes exceeds the shm slot size {self.config.slot_bytes}")
        slot = self._next
        self._next = (slot + 1) % self.config.slots
        gen = int(self._gens[slot])
        self._gens[slot] = gen + 1 if gen % 2 == 0 else gen + 2  # odd: being written; old views turn stale
        # Drop any earlier loan of this slot that was never published.
        for key in [k for k, (s, _) in self._loans.items() if s == slot]:
            del self._loans[key]
        array = np.frombuffer(self._map, dtype=dt, count=nbytes // dt.itemsize, offset=self._data_at + slot * self._stride)
        array = array.reshape(shape)
        self._loans[id(array)] = (slot, array)
        return array

    def is_loaned(self, array: np.ndarray) -> bool:
        entry = self._loans.get(id(array))
        return entry is not None and entry[1] is array

    def commit(self, array: np.ndarray) -> ShmDescriptor:
        """Publish a loaned array: returns its descriptor. Raises ``KeyError`` if it is not an open loan."""
        slot, loaned = self._loans.pop(id(array))
        if loaned is not array:
            raise KeyError("array is not an open loan of this ring")
        self._gens[slot] += 1  # even: published
        return ShmDescriptor(
            dtype=dtype_name(array.dtype),
            shape=list(array.shape),
            encoding="raw",
            shm={"segment": self.name, "slot": slot, "gen": int(self._gens[slot]), "offset": self._data_at + slot * self._stride},
        )

    def copy_in(self, array: np.ndarray) -> ShmDescriptor:
        """Copy an ordinary array into the next slot and return its descriptor (one copy instead of two)."""
        target = self.loan(array.shape, array.dtype)
        np.copyto(target, array)
        return self.commit(target)

    def close(self) -> None:
        """Unmap and unlink the segment; readers that mapped it keep their mapping until they drop it."""
        self._loans.clear()
        self._gens = None  # release the buffer export before closing the map
        try:
            self._map.close()
        except BufferError:
            pass  # a loaned array is still alive; the map closes when it is collected
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Lease:
    """A reader's claim on one published slot; :meth:`valid` is False once the producer reused it."""

    gens: np.ndarray
    slot: int
    gen: int

    def valid(self) -> bool:
        return int(self.gens[self.slot]) == self.gen

    def require_valid(self) -> None:
        if not self.valid():
            raise StaleView(f"shared-memory slot {self.slot} was reused (generation {self.gen} -> {int(self.gens[self.slot])})")


class ShmReader:
    """The consumer side: maps producers' segments (read-only, cached by name) and resolves descriptors."""

    def __init__(self, max_segments: int = 64) -> None:
        self._segments: dict[str, tuple[mmap.mmap, np.ndarray, int, int, int, int]] = {}
        self._max = max_segments

    def _segment(self, name: str) -> tuple[mmap.mmap, np.ndarray, int, int, int, int]:
        seg = self._segments.get(name)
        if seg is not None:
            return seg
        if len(self._segments) >= self._max:
            # Forget segments whose producer is gone (its file unlinked); views of them stay mapped.
            for gone in [n for n in self._segments if not os.path.exists(os.path.join(SHM_DIR, n))]:
                del self._segments[gone]
        if len(self._segments) >= self._max:
            raise TensorMismatch(f"shared memory: more than {self._max} segments mapped; refusing {name!r}")
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # non-blocking: a FIFO must not hang the reader
        except OSError as exc:
            raise TensorMismatch(f"shared memory segment {name!r} cannot be opened: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            size = info.st_size
            if not stat.S_ISREG(info.st_mode) or size < _HEADER.size:
                raise TensorMismatch(f"shared memory segment {name!r} is not an ONI ring (not a regular file, or too small)")
            mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        magic, version, slots, slot_bytes = _HEADER.unpack_from(mapped, 0)
        gens_at, data_at, stride = _layout(slots, slot_bytes)
        if magic != _MAGIC or version != 1 or data_at + stride * slots > size:
            mapped.close()
            raise TensorMismatch(f"shared memory segment {name!r} is not an ONI ring")
        gens = np.frombuffer(mapped, dtype="<u8", count=slots, offset=gens_at)
        seg = (mapped, gens, slots, slot_bytes, data_at, stride)
        self._segments[name] = seg
        return seg

    def resolve(self, desc: Mapping[str, Any], where: Mapping[str, Any], field: str) -> tuple[np.ndarray, Lease]:
        """A read-only view of a published slot and its lease. Raises TensorMismatch or StaleView."""
        mapped, gens, slots, slot_bytes, data_at, stride = self._segment(where["segment"])
        slot, gen = where["slot"], where["gen"]
        if not 0 <= slot < slots or where["offset"] != data_at + slot * stride:
            raise TensorMismatch(f"field {field!r}: shm slot {slot} / offset {where['offset']} is outside the ring")
        dt = DTYPES[desc["dtype"]]
        count = int(np.prod(desc["shape"], dtype=np.int64))
        if desc["encoding"] != "raw" or count * dt.itemsize > slot_bytes:
            raise TensorMismatch(f"field {field!r}: shm tensors are raw and fit one slot ({slot_bytes} bytes)")
        lease = Lease(gens, slot, gen)
        lease.require_valid()
        array = np.frombuffer(mapped, dtype=dt, count=count, offset=where["offset"]).reshape(desc["shape"])
        return array, lease

    def close(self) -> None:
        self._segments.clear()
