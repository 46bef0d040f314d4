"""Quality of service: explicit profiles, named presets, and the publisher/subscriber compatibility check.

A profile has no default history depth: every user states one (as rclpy insists). Semantics are in
docs/oni-v1.md, "QoS".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Reliability = Literal["reliable", "best_effort"]


@dataclass(frozen=True)
class QosProfile:
    """One topic's QoS.

    - ``reliability``: ``reliable`` never loses silently (a publish that cannot be queued within
      ``max_blocking_ms`` raises, gaps in ``seq`` are detected and reported); ``best_effort`` never blocks the
      publisher, and what it cannot queue is dropped and counted.
    - ``depth``: messages kept per topic by a subscriber between takes (older ones are overwritten and
      counted as ``overrun``). The transport's queues are bounded separately, by the publisher's and
      subscriber's ``hwm``.
    - ``deadline_ms``: the longest expected gap between messages; a longer gap is a ``deadline_missed`` event.
    - ``lifespan_ms``: messages older than this (since ``pub_ns``) at delivery are dropped as ``expired``.
    - ``max_blocking_ms``: how long a ``reliable`` publish may wait for queue space (0: never wait, raise).
    """

    reliability: Reliability
    depth: int
    deadline_ms: float | None = None
    lifespan_ms: float | None = None
    max_blocking_ms: float = 100.0

    def __post_init__(self) -> None:
        if self.reliability not in ("reliable", "best_effort"):
            raise ValueError(f"reliability must be 'reliable' or 'best_effort', got {self.reliability!r}")
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {self.depth!r}")
        for name in ("deadline_ms", "lifespan_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")
        if not self.max_blocking_ms >= 0:
            raise ValueError(f"max_blocking_ms must be >= 0, got {self.max_blocking_ms!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "QosProfile":
        known = {k: raw[k] for k in ("reliability", "depth", "deadline_ms", "lifespan_ms", "max_blocking_ms") if k in raw}
        return cls(**known)


#: Sensor streams: keep the latest few, never block the sensor driver.
SENSOR = QosProfile("best_effort", depth=10, lifespan_ms=1000.0)
#: Commands: nothing lost silently, and a send never stalls the control loop (it raises instead).
CONTROL = QosProfile("reliable", depth=1, deadline_ms=200.0, lifespan_ms=200.0, max_blocking_ms=0.0)
#: Diagnostics and predictions for viewers and loggers.
DIAGNOSTIC = QosProfile("best_effort", depth=10)
#: Logging and dataset streams: nothing lost; the publisher waits for a slow reader.
RECORD = QosProfile("reliable", depth=1000, max_blocking_ms=1000.0)

PRESETS: dict[str, QosProfile] = {"sensor": SENSOR, "control": CONTROL, "diagnostic": DIAGNOSTIC, "record": RECORD}


def preset(name: str) -> QosProfile:
    """A named preset; raises ``KeyError`` listing the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown QoS preset {name!r}; presets: {sorted(PRESETS)}") from None


def check_compatible(publisher: QosProfile, subscriber: QosProfile) -> list[tuple[str, str]]:
    """``(policy, reason)`` for each policy on which the publisher cannot meet the subscriber; empty if none.

    As in DDS: a ``reliable`` subscriber needs a ``reliable`` publisher; a subscriber's deadline must be no
    shorter than the publisher's. Depth and lifespan are local and never incompatible.
    """
    problems: list[tuple[str, str]] = []
    if subscriber.reliability == "reliable" and publisher.reliability == "best_effort":
        problems.append(("reliability", "subscriber requires reliable, publisher offers best_effort"))
    if subscriber.deadline_ms is not None:
        if publisher.deadline_ms is None:
            problems.append(("deadline", f"subscriber requires a {subscriber.deadline_ms} ms deadline, publisher offers none"))
        elif publisher.deadline_ms > subscriber.deadline_ms:
            problems.append(
                ("deadline", f"subscriber requires {subscriber.deadline_ms} ms, publisher offers {publisher.deadline_ms} ms")
            )
    return problems
