"""ONI error types.

Every way a message can be refused has its own type, so a subscriber can count rejects per topic and per
kind (``type(err).kind``) and a user can tell at a glance what was wrong. All derive from :class:`OniError`;
the ones a receiver raises for a single bad message derive from :class:`RejectedMessage` and never stop a
subscriber: they are counted and the message is dropped.
"""

from __future__ import annotations


class OniError(Exception):
    """Base class of every error raised by the ``oni`` package."""


class RejectedMessage(OniError):
    """One incoming message was refused. ``kind`` is the short name used in per-topic reject counters."""

    kind = "rejected"

    def __init__(self, message: str, *, topic: str | None = None) -> None:
        super().__init__(message if topic is None else f"{topic}: {message}")
        self.topic = topic


class MalformedFrame(RejectedMessage):
    """The frames are not a well-formed ONI message (bad framing, msgpack, or field types)."""

    kind = "malformed"


class UnknownSchema(RejectedMessage):
    """The header names a schema the registry does not know."""

    kind = "unknown_schema"


class UnsupportedVersion(RejectedMessage):
    """The schema is known but not at this major version (or the wire version is not 1)."""

    kind = "unsupported_version"


class PayloadTooLarge(RejectedMessage):
    """The message is larger than the receiver's configured ``max_message_bytes``."""

    kind = "too_large"


class SchemaViolation(RejectedMessage):
    """The body does not satisfy its JSON Schema (a missing field, a wrong type, a value out of range)."""

    kind = "schema"


class TensorMismatch(RejectedMessage):
    """A tensor's dtype, shape or byte length disagrees with its descriptor or with its schema."""

    kind = "tensor_mismatch"


class NonFiniteValue(RejectedMessage):
    """A float field or tensor holds NaN or Inf where the schema requires finite values."""

    kind = "non_finite"


class WrongType(RejectedMessage):
    """The header's schema is not the type the subscription expects on this topic."""

    kind = "wrong_type"


class DuplicateSeq(RejectedMessage):
    """A publisher sent a ``seq`` this subscriber has already delivered."""

    kind = "duplicate_seq"


class OutOfOrderSeq(RejectedMessage):
    """A publisher's ``seq`` went backwards: the message is older than one already delivered."""

    kind = "out_of_order_seq"


class Expired(RejectedMessage):
    """The message is older than the subscription's QoS ``lifespan`` at delivery."""

    kind = "expired"


class IncompatibleQos(RejectedMessage):
    """Publisher and subscriber QoS profiles cannot work together; ``policy`` names the one that failed."""

    kind = "incompatible_qos"

    def __init__(self, message: str, *, policy: str, topic: str | None = None) -> None:
        super().__init__(message, topic=topic)
        self.policy = policy


class StaleView(RejectedMessage):
    """A shared-memory tensor was overwritten by its producer before (or while) it was read."""

    kind = "stale_shm"


class SecurityError(OniError):
    """Authentication or encryption failed, or a privileged topic was used without security."""


class BackpressureTimeout(OniError):
    """A ``reliable`` publish could not be delivered within the QoS ``max_blocking_ms``."""


class EncodeError(OniError):
    """A message could not be encoded: a value of a type ONI cannot carry, or a tensor the encoding refuses."""


REJECT_KINDS: tuple[str, ...] = tuple(
    cls.kind
    for cls in (
        MalformedFrame,
        UnknownSchema,
        UnsupportedVersion,
        PayloadTooLarge,
        SchemaViolation,
        TensorMismatch,
        NonFiniteValue,
        WrongType,
        DuplicateSeq,
        OutOfOrderSeq,
        Expired,
        IncompatibleQos,
        StaleView,
    )
)
