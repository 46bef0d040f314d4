"""ONI v1, the Open Neural Interface message standard: typed, timestamped messages over ZeroMQ + msgpack.

``import oni`` needs only numpy, pyzmq, msgpack, fastjsonschema and mcap; it never loads torch or mujoco.
The specification is docs/oni-v1.md.
"""

from oni import qos
from oni.message import Header, Message, new_trace_id, now_ns
from oni.qos import QosProfile
from oni.tensor import Png, Quantized
from oni.transport import Publisher, Subscriber, TopicSpec

__all__ = [
    "Header",
    "Message",
    "Png",
    "Publisher",
    "QosProfile",
    "Quantized",
    "Subscriber",
    "TopicSpec",
    "new_trace_id",
    "qos",
    "now_ns",
]
