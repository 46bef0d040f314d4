"""ONI logs: MCAP files of ONI messages, written crash-safe and read back as :class:`~oni.message.Message`.

The layout (docs/oni-v1.md, "Logs"), readable by any MCAP tool:

- header profile ``oni``;
- one *schema* record per ONI type and major version: name = the type name (``sensor.lidar``), encoding
  ``jsonschema``, data = the registry's self-contained (bundled) JSON Schema document as UTF-8 JSON;
- one *channel* per topic (a second only if one topic carries two major versions): message encoding
  ``oni.msgpack``, metadata ``oni.schema``, ``oni.schema_version`` and ``oni.source`` (of the first message);
- each *message*'s data is the packed single-buffer form of the ONI message (:func:`oni.codec.pack`: the
  msgpack body with every tensor inline; decode it with :func:`oni.codec.unpack`). ``log_time`` is the
  receive time, ``publish_time`` the header's ``pub_ns`` (both ns since the Unix epoch) and ``sequence``
  the header's ``seq`` modulo 2**32;
- a *metadata* record ``oni`` (``{"oni_version": "1", ...}``) and any records the writer's user adds
  (episode seed, world parameters, robot description, ...).

Tensors are stored as decoded: a quantized or PNG tensor received from the bus is written raw with the
values the receiver saw, so reading a log gives exactly what a live subscriber got.
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Metadata, Schema
from mcap.records import Message as McapMessage
from mcap.stream_reader import breakup_chunk
from mcap.writer import CompressionType, Writer

from oni.codec import pack, unpack
from oni.errors import OniError, RejectedMessage
from oni.message import WIRE_VERSION, Message, now_ns
from oni.schema import SchemaRegistry, parse_version

log = logging.getLogger("oni.mcap_log")

#: MCAP header profile of ONI logs.
PROFILE = "oni"
#: MCAP message encoding of ONI messages: the packed msgpack body (:func:`oni.codec.pack`).
MESSAGE_ENCODING = "oni.msgpack"
#: MCAP schema encoding of ONI schemas.
SCHEMA_ENCODING = "jsonschema"
#: Name of the metadata record every ONI log carries; user records may not take it.
ONI_METADATA = "oni"
#: Default bound on a chunk's uncompressed size (bytes); a chunk is written when it is exceeded.
DEFAULT_CHUNK_BYTES = 1 << 20
#: Default longest wall time (ms) a message may wait in an unwritten chunk: what a crash can lose.
DEFAULT_FLUSH_MS = 500.0

_MAGIC = b"\x89MCAP0\r\n"
_RECORD_HEAD = struct.Struct("<BQ")  # opcode, record length
_COMPRESSION = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
_LIBRARY = "oni.mcap_log"


class LogError(OniError):
    """A file is not a readable MCAP log, or a log writer was misused."""


@dataclass
class WriterStats:
    """What a :class:`LogWriter` did. ``stale``: shared-memory messages whose slot was reused before they
    could be written (skipped); ``rejected``: messages that failed validation, per reject kind (skipped)."""

    written: dict[str, int] = field(default_factory=dict)  # per topic
    data_bytes: int = 0  # message data, before chunk compression
    stale: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.written.values())


class LogWriter:
    """Writes ONI messages to an MCAP file, crash-safe.

    ``metadata`` maps record names to ``{key: value}`` string maps, written at once after the ``oni``
    record; :meth:`add_metadata` adds more at any time. ``validate`` decodes every packed message as a
    receiver would (schema, tensors, finiteness) and skips, counting, those that fail; a recorder whose
    messages a :class:`~oni.transport.Subscriber` already validated turns it off.

    Crash safety: unlike the project's other outputs, the log is written in place, not to a temporary file
    renamed at the end, because an MCAP file is valid up to its last complete record: a writer killed
    with SIGKILL leaves a file whose complete chunks any MCAP stream reader (and :class:`LogReader`) can
    read. Messages are grouped into compressed chunks of at most ``chunk_bytes`` (uncompressed, plus one
    message) and a chunk is also written once its oldest message has waited ``flush_ms`` of wall time, so a
    crash loses at most that much. The writer checks this on every :meth:`write`; a caller that may go
    quiet calls :meth:`flush_if_due` periodically. Data reach the OS at each chunk (they survive the
    process) and the disk at :meth:`close` (fsync), which also writes the summary and footer.

    Not thread-safe: one thread writes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Mapping[str, str]] | None = None,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        flush_ms: float = DEFAULT_FLUSH_MS,
        compression: str = "zstd",
        validate: bool = True,
        overwrite: bool = False,
        registry: SchemaRegistry | None = None,
    ) -> None:
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, got {compression!r}")
        if chunk_bytes < 1 or not flush_ms > 0:
            raise ValueError(f"chunk_bytes must be >= 1 and flush_ms > 0, got {chunk_bytes} and {flush_ms}")
        if not hasattr(Writer, "flush"):  # the bounded crash-loss window needs it; pyproject allows older mcap
            raise LogError("oni.mcap_log needs an mcap release with Writer.flush() (1.6 has it): pip install -U mcap")
        if metadata and ONI_METADATA in metadata:
            raise ValueError(f"metadata record name {ONI_METADATA!r} is reserved for the log's own record")
        self.path = os.fspath(path)
        self.stats = WriterStats()
        self._registry = registry or SchemaRegistry.default()
        self._validate = validate
        self._flush_s = flush_ms / 1000.0
        self._schemas: dict[tuple[str, int], int] = {}
        self._channels: dict[tuple[str, str, int], int] = {}
        self._file = open(self.path, "wb" if overwrite else "xb")
        self._writer = Writer(self._file, chunk_size=chunk_bytes, compression=_COMPRESSION[compression])
        self._writer.start(profile=PROFILE, library=_LIBRARY)
        self._closed = False
        self.add_metadata(
            ONI_METADATA,
            {
                "oni_version": str(WIRE_VERSION),
                "message_encoding": MESSAGE_ENCODING,
                "writer": _LIBRARY,
                "created_ns": str(now_ns()),
            },
        )
        for name, record in (metadata or {}).items():
            self.add_metadata(name, record)
        self._last_flush = time.monotonic()

    def add_metadata(self, name: str, data: Mapping[str, str]) -> None:
        """Add a metadata record ``name`` (string keys and values); it reaches the file at once."""
        self._check_open()
        if not isinstance(name, str) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise TypeError(f"metadata record {name!r}: name, keys and values must all be str")
        self._writer.add_metadata(name, dict(data))
        self._file.flush()

    def write(self, msg: Message, log_time_ns: int | None = None) -> bool:
        """Append ``msg``; True if written, False if skipped and counted in :attr:`stats`.

        Skipped: a message whose shared-memory tensors were overwritten before or while they were copied
        (``stale``), and with ``validate`` one a receiver would reject (``rejected``, per kind). Without
        ``validate``, a type the registry lacks raises :class:`~oni.errors.UnknownSchema` (a log carries
        the schema of every message in it). Data ONI cannot carry raise :class:`~oni.errors.EncodeError`.
        ``log_time_ns`` defaults to ``msg.recv_ns`` (its receive time), else now.
        """
        self._check_open()
        header = msg.header
        if not msg.valid():
            self.stats.stale += 1
            return False
        data = pack(header, msg.data)
        # Shared-memory views follow a seqlock: a copy is consistent only if the slot is unchanged after it.
        if not msg.valid():
            self.stats.stale += 1
            return False
        if self._validate:
            try:
                unpack(data, msg.topic, self._registry)
            except RejectedMessage as exc:
                self.stats.rejected[exc.kind] = self.stats.rejected.get(exc.kind, 0) + 1
                log.warning("not logged: %s", exc)
                return False
        channel_id = self._channel(msg)
        if log_time_ns is None:
            log_time_ns = msg.recv_ns or now_ns()
        # MCAP times are uint64; ONI's int64 pub_ns is wall-clock time, negative only if a clock is broken.
        self._writer.add_message(
            channel_id,
            log_time=max(log_time_ns, 0),
            data=data,
            publish_time=max(header.pub_ns, 0),
            sequence=header.seq & 0xFFFFFFFF,
        )
        self.stats.written[msg.topic] = self.stats.written.get(msg.topic, 0) + 1
        self.stats.data_bytes += len(data)
        self.flush_if_due()
        return True

    def _channel(self, msg: Message) -> int:
        header = msg.header
        major, _minor = parse_version(header.schema_version)
        key = (msg.topic, header.schema, major)
        channel_id = self._channels.get(key)
        if channel_id is None:
            schema = self._registry.get(header.schema, major, topic=msg.topic)
            schema_id = self._schemas.get((schema.name, major))
            if schema_id is None:
                document = json.dumps(schema.document, sort_keys=True).encode()
                schema_id = self._writer.register_schema(schema.name, SCHEMA_ENCODING, document)
                self._schemas[(schema.name, major)] = schema_id
            channel_id = self._writer.register_channel(
                msg.topic,
                MESSAGE_ENCODING,
                schema_id,
                {"oni.schema": header.schema, "oni.schema_version": header.schema_version, "oni.source": header.source},
            )
            self._channels[key] = channel_id
        return channel_id

    def flush(self) -> None:
        """Write the chunk in progress (if it holds messages) and hand everything to the OS."""
        self._check_open()
        self._writer.flush()
        self._last_flush = time.monotonic()

    def flush_if_due(self) -> None:
        """:meth:`flush` if ``flush_ms`` have passed since the last one (cheap; call it often)."""
        if time.monotonic() - self._last_flush >= self._flush_s:
            self.flush()

    def close(self) -> None:
        """Write the last chunk, the summary and the footer, fsync and close. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.finish()
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def _check_open(self) -> None:
        if self._closed:
            raise LogError(f"{self.path}: the log writer is closed")

    def __enter__(self) -> "LogWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class LogChannel:
    """One channel of a log: its topic, ONI type and version, and the publisher it was first seen from."""

    id: int
    topic: str
    schema: str
    schema_version: str
    source: str
    message_encoding: str

    @property
    def is_oni(self) -> bool:
        return self.message_encoding == MESSAGE_ENCODING


@dataclass(frozen=True)
class LogRecord:
    """One message as stored: times in ns since the Unix epoch, ``data`` the packed ONI message."""

    channel: LogChannel
    log_time_ns: int
    publish_time_ns: int
    sequence: int
    data: bytes


@dataclass(frozen=True)
class LogInfo:
    """A log at a glance. ``complete``: closed cleanly (summary and footer present)."""

    channels: list[LogChannel]
    metadata: dict[str, dict[str, str]]
    message_count: int
    start_ns: int
    end_ns: int
    complete: bool
    unreadable_bytes: int

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9 if self.message_count else 0.0


def _channel_info(channel: Channel, schemas: Mapping[int, Schema]) -> LogChannel:
    meta = channel.metadata
    schema = schemas.get(channel.schema_id)
    return LogChannel(
        channel.id,
        channel.topic,
        meta.get("oni.schema") or (schema.name if schema is not None else ""),
        meta.get("oni.schema_version", ""),
        meta.get("oni.source", ""),
        channel.message_encoding,
    )


class LogReader:
    """Reads an ONI log front to back, in the order it was written (receive order).

    Works on logs that were never closed (a crashed recorder): reading stops cleanly after the last complete
    record, and once a pass is over :attr:`unreadable_bytes` says how much of the end could not be read (0
    for a clean log) and :attr:`complete` whether the log was closed cleanly.
    A chunk that fails to decompress or its CRC check (a damaged file) also ends reading, with
    :attr:`error` saying why. Messages that fail ONI validation are skipped and counted in :attr:`rejected`
    per kind; channels of other encodings are ignored by :meth:`messages`.
    """

    def __init__(self, path: str | os.PathLike[str], *, registry: SchemaRegistry | None = None) -> None:
        self.path = os.fspath(path)
        self._registry = registry or SchemaRegistry.default()
        self.complete = False
        self.unreadable_bytes = 0
        self.error = ""
        self.rejected: dict[str, int] = {}
        self.metadata: dict[str, dict[str, str]] = {}

    def records(self, topics: Iterable[str] | None = None) -> Iterator[LogRecord]:
        """Every stored message (of ``topics``, default all), undecoded. Also fills :attr:`metadata`."""
        wanted = None if topics is None else frozenset(topics)
        schemas: dict[int, Schema] = {}
        channels: dict[int, LogChannel] = {}
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            magic = f.read(len(_MAGIC))
            if magic != _MAGIC:
                if _MAGIC.startswith(magic):  # a writer stopped before its first bytes reached the file
                    self.complete, self.unreadable_bytes = False, size
                    return
                raise LogError(f"{self.path} is not an MCAP file")
            self.complete = self._ends_with_magic(f, size)
            pos = len(_MAGIC)
            while True:
                head = f.read(_RECORD_HEAD.size)
                if len(head) < _RECORD_HEAD.size:
                    break
                opcode, length = _RECORD_HEAD.unpack(head)
                end = pos + _RECORD_HEAD.size + length
                if end > size:
                    break  # the record a crashed writer was writing
                body = f.read(length)
                if opcode in (Opcode.DATA_END, Opcode.FOOTER):
                    pos = size  # everything after is the summary: nothing unread
                    break
                if opcode == Opcode.CHUNK:
                    try:
                        inner = breakup_chunk(Chunk.read(_stream(body)), validate_crc=True)
                    except Exception as exc:  # decompressors and the CRC check raise their own error types
                        self.error = f"chunk at byte {pos}: {type(exc).__name__}: {exc}"
                        log.warning("%s: %s; reading stops there", self.path, self.error)
                        break
                elif opcode == Opcode.MESSAGE:
                    inner = [McapMessage.read(_stream(body), length)]
                elif opcode == Opcode.SCHEMA:
                    inner = [Schema.read(_stream(body))]
                elif opcode == Opcode.CHANNEL:
                    inner = [Channel.read(_stream(body))]
                elif opcode == Opcode.METADATA:
                    meta = Metadata.read(_stream(body))
                    self.metadata[meta.name] = dict(meta.metadata)
                    inner = []
                else:
                    inner = []  # header, indexes, attachments: nothing a reader of messages needs
                pos = end
                for record in inner:
                    if isinstance(record, McapMessage):
                        channel = channels.get(record.channel_id)
                        if channel is not None and (wanted is None or channel.topic in wanted):
                            yield LogRecord(channel, record.log_time, record.publish_time, record.sequence, record.data)
                    elif isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = _channel_info(record, schemas)
            self.unreadable_bytes = size - pos

    def messages(self, topics: Iterable[str] | None = None) -> Iterator[Message]:
        """The decoded, validated ONI messages (of ``topics``); ``recv_ns`` is each one's ``log_time``."""
        for record in self.records(topics):
            if not record.channel.is_oni:
                continue
            try:
                msg = unpack(record.data, record.channel.topic, self._registry)
            except RejectedMessage as exc:
                self.rejected[exc.kind] = self.rejected.get(exc.kind, 0) + 1
                log.warning("%s: skipping a stored message: %s", self.path, exc)
                continue
            msg.recv_ns = record.log_time_ns
            yield msg

    def info(self) -> LogInfo:
        """Channels, metadata, message count and time span: from the summary of a complete log, else by a
        scan (which decompresses every chunk but decodes no message)."""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if self._ends_with_magic(f, size):
                f.seek(0)
                reader = make_reader(f)
                summary = reader.get_summary()
                if summary is not None and summary.statistics is not None:
                    stats = summary.statistics
                    return LogInfo(
                        [_channel_info(c, summary.schemas) for c in summary.channels.values()],
                        {m.name: dict(m.metadata) for m in reader.iter_metadata()},
                        stats.message_count,
                        stats.message_start_time,
                        stats.message_end_time,
                        True,
                        0,
                    )
        count, start, end = 0, 0, 0
        seen: dict[int, LogChannel] = {}
        for record in self.records():
            seen.setdefault(record.channel.id, record.channel)
            start = record.log_time_ns if count == 0 else min(start, record.log_time_ns)
            end = max(end, record.log_time_ns)
            count += 1
        return LogInfo(list(seen.values()), dict(self.metadata), count, start, end, self.complete, self.unreadable_bytes)

    @staticmethod
    def _ends_with_magic(f: Any, size: int) -> bool:
        if size < 2 * len(_MAGIC):
            return False
        here = f.tell()
        f.seek(size - len(_MAGIC))
        tail = f.read(len(_MAGIC))
        f.seek(here)
        return tail == _MAGIC


def _stream(body: bytes) -> ReadDataStream:
    return ReadDataStream(io.BytesIO(body))


def read_messages(
    path: str | os.PathLike[str], topics: Iterable[str] | None = None, *, registry: SchemaRegistry | None = None
) -> Iterator[Message]:
    """The ONI messages of a log (optionally only ``topics``), in file order; see :class:`LogReader`.

    Stops cleanly at the last complete chunk of a log that was never closed, and logs a warning with how
    many bytes at the end could not be read. Use :class:`LogReader` to get those figures as numbers.
    """
    reader = LogReader(path, registry=registry)
    yield from reader.messages(topics)
    if reader.unreadable_bytes:
        log.warning(
            "%s was not closed cleanly: read up to its last complete chunk, %d bytes at the end are unreadable",
            reader.path,
            reader.unreadable_bytes,
        )


def paced(
    messages: Iterable[Message],
    rate: float | None = 1.0,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Any] = time.sleep,
) -> Iterator[Message]:
    """Yield ``messages`` at their recorded timing, ``rate`` times as fast (None: as fast as possible).

    Deadline-scheduled on the messages' ``recv_ns`` (log time): message i is due at
    ``start + (t_i - t_0) / rate`` seconds on ``clock``, so time spent by the consumer (publishing) and sleep
    overshoot never accumulate; a late message is yielded at once. ``sleep(seconds)`` waits; a caller that
    must stop early passes one that returns early and stops iterating.
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 (or None for as fast as possible), got {rate!r}")
    start = t0 = None
    for msg in messages:
        if rate is not None:
            if start is None:
                start, t0 = clock(), msg.recv_ns
            delay = start + (msg.recv_ns - t0) / 1e9 / rate - clock()
            if delay > 0:
                sleep(delay)
        yield msg
