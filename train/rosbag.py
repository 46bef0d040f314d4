"""``oniwm import-bag`` and ``oniwm export-bag``: rosbag2 recordings to ONI logs that ``oniwm train`` reads, and back.

::

    oniwm import-bag recordings/run1 recordings/run2.mcap --map robot_bags.yaml --out data/robot
    oniwm train --config configs/hallway.yaml --data data/robot --out runs/robot
    oniwm export-bag data/hallway/episode_00000.mcap --out bags/episode_00000

**Import.** Each PATH (a rosbag2 directory, or one ``.mcap`` / ``.db3`` storage file: MCAP or sqlite3 storage)
becomes one ONI log, ``DIR/<name>.mcap``, written under a temporary name and renamed once complete. The mapping
file (:class:`BagMapping`, :func:`load_mapping`) says which ROS topic becomes which ONI topic through which
conversion (:mod:`robots.ros2.convert`), and names the robot description whose sensors the messages must fit.
The log carries what the dataset builder (:mod:`train.dataset`) needs: a ``robot`` record (the description),
an ``import`` record (the mapping) and, last, an ``episode`` record (the bag, ``control_hz`` when the mapping
gives one, and ``pose_topic``: the ONI topic whose pose is the training target, by default the odometry, since
a real robot has no simulator ground truth). A log without a seed is split by its file name.

Each message gets ``stamp_ns`` = its header stamp (the bag's receive time for a type without a header, or for
an entry with ``stamp: bag``), ``pub_ns`` and MCAP log time = the bag's receive time, ``seq`` per ONI topic from
0, ``source`` ``rosbag2`` and a fresh trace id, and is validated as a receiver would validate it.

**Bad input** never ends an import: a message that cannot be imported is skipped and counted per ROS topic and
reason: ``unknown_type`` (no conversion for its type), ``unmapped_topic`` (a convertible type on a topic the
mapping leaves out), ``type_mismatch`` (a mapped topic carrying another type), ``undecodable`` (CDR that does
not decode), ``refused`` (the conversion refused it: a scan with another beam count than the robot's LiDAR, an
image of another size, ...), ``unstamped`` (header stamp 0), ``clock_backwards`` (stamped before the previous
message of its ONI topic: the rest of a bag whose clock jumped back is skipped until it passes that point
again), ``rejected`` (fails ONI validation, e.g. non-finite values). ``missing`` lists mapped topics the bag
lacks and robot sensors nothing feeds. The report is written to ``DIR/import_report.json`` (atomically) and
printed as a table. Exit status: 0 when every bag gave a log, 1 when some gave none, 2 for a bad command line
or mapping.

**Export.** An ONI log becomes a rosbag2 directory (MCAP storage) that ROS tools read: each ONI topic goes to
the ROS topic of the mapping entry that names it (``oni_topic``) or, failing that, of the first entry whose
type converts its schema; a depth entry with ``camera_info`` also gets a ``sensor_msgs/CameraInfo`` per image.
Bag times are the ONI log times, header stamps the ONI stamps, so a bag imported and exported again has its
original times. Topics without a ROS type (``sim.ground_truth``, gym topics) are skipped and reported.
Exit status: 0 when something was exported, 1 when nothing was, 2 for a bad command line or mapping.

Message definitions: bags that carry theirs (rosbag2 since Iron; MCAP files) decode with them, others with the
latest ROS 2 LTS definitions shipped by ``rosbags``, which also encode the export.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oni.errors import EncodeError
from oni.files import write_json
from oni.mcap_log import LogChannel, LogReader, LogWriter
from oni.message import Header, Message, new_trace_id
from oni.schema import SchemaRegistry
from robots import load_robot, resolve_robot
from robots.description import (
    DescriptionError,
    RobotDescription,
    SensorDescription,
    build,
    check_choice,
    check_name,
    number_field,
)
from robots.ros2.convert import CAMERA_INFO, ROS_TYPES, RosType, camera_info_to_ros
from worldmodel.backends.base import require_extra

log = logging.getLogger("train.rosbag")

__all__ = [
    "DEFAULT_TOPICS",
    "REPORT",
    "BagMapping",
    "Route",
    "TopicMap",
    "export_log",
    "export_routes",
    "format_table",
    "import_bags",
    "import_routes",
    "load_mapping",
    "register",
]

#: The import report, in the output folder.
REPORT = "import_report.json"
REPORT_FORMAT = "oniwm.bag_import/1"
#: ``source`` of every imported message's header.
SOURCE = "rosbag2"
STAMPS = ("auto", "header", "bag")
_PARTIAL_SUFFIX = ".partial"


# --------------------------------------------------------------------------------------------------------------
# The mapping file.


@dataclass(frozen=True)
class TopicMap:
    """One mapping entry: a ROS topic and type of the bag, and the ONI topic they become.

    ``oni_topic``: "" takes the robot's topic for the type's kind (its LiDAR's topic for a ``LaserScan``, the
    drive's for a ``Twist``); on export, "" matches any ONI topic of the type's schema. ``stamp``: ``header``
    (the message's stamp), ``bag`` (the receive time: for publishers that leave the stamp unset or stamp on
    another clock) or ``auto`` (the header where the type has one). ``camera_info``: for depth images, the topic
    of the ``sensor_msgs/CameraInfo`` the export writes with each image ("" for none). ``converter``:
    ``module:NAME`` of a :class:`~robots.ros2.convert.RosType`, for a type without a built-in conversion.
    """

    ros_topic: str
    ros_type: str
    oni_topic: str = ""
    stamp: str = "auto"
    camera_info: str = ""
    converter: str = ""

    def __post_init__(self) -> None:
        for name in ("ros_topic", "camera_info"):
            value = getattr(self, name)
            if (value or name == "ros_topic") and not (check_name(name, value).startswith("/")):
                raise DescriptionError(name, value, "must be an absolute ROS topic name, e.g. /scan")
        if check_name("ros_type", self.ros_type).count("/") != 2:
            raise DescriptionError("ros_type", self.ros_type, "must be a ROS 2 type name: package/msg/Name")
        if self.oni_topic:
            check_name("oni_topic", self.oni_topic)
        check_choice("stamp", self.stamp, STAMPS)
        if not self.conversion().stamped and self.stamp == "header":
            raise DescriptionError("stamp", self.stamp, f"{self.ros_type} has no header: use bag or auto")

    def conversion(self) -> RosType:
        """The conversion of :attr:`ros_type`: the ``converter`` named, else the built-in one."""
        if self.converter:
            module, _, name = self.converter.partition(":")
            try:
                found = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError, ValueError) as exc:
                raise DescriptionError("converter", self.converter, f"cannot be imported ({exc}); expected module:NAME") from None
            if not isinstance(found, RosType) or found.name != self.ros_type:
                raise DescriptionError("converter", self.converter, f"must name a robots.ros2.convert.RosType for {self.ros_type}")
            return found
        if self.ros_type not in ROS_TYPES:
            raise DescriptionError("ros_type", self.ros_type,
                                   f"has no built-in conversion (built in: {sorted(ROS_TYPES)}); name a converter: module:NAME")
        return ROS_TYPES[self.ros_type]


#: The standard topics of a ROS 2 mobile base; a mapping file's entries replace those of the same ROS or ONI topic.
DEFAULT_TOPICS: tuple[TopicMap, ...] = (
    TopicMap("/scan", "sensor_msgs/msg/LaserScan"),
    TopicMap("/imu", "sensor_msgs/msg/Imu"),
    TopicMap("/odom", "nav_msgs/msg/Odometry"),
    TopicMap("/camera/depth/image_raw", "sensor_msgs/msg/Image", camera_info="/camera/depth/camera_info"),
    TopicMap("/cmd_vel", "geometry_msgs/msg/Twist"),
)


@dataclass(frozen=True)
class BagMapping:
    """A mapping file (YAML): the robot, the topics, and what the dataset builder needs to know.

    ``robot``: a shipped robot's name or a description YAML (relative to the mapping file): the sensors the
    imported messages feed and must fit. ``topics``: :class:`TopicMap` entries, used with
    :data:`DEFAULT_TOPICS` unless ``defaults`` is false. ``control_hz``: the rate the dataset builder ticks at
    (None: its default, 50 Hz). ``pose_topic``: the ONI topic whose ``x_m``, ``y_m``, ``yaw_rad`` is the
    training pose target ("": the robot's odometry topic).
    """

    robot: str = "turtlebot4"
    topics: tuple[TopicMap, ...] = ()
    defaults: bool = True
    control_hz: float | None = None
    pose_topic: str = ""

    def __post_init__(self) -> None:
        resolve_robot(self.robot)
        if not all(isinstance(t, TopicMap) for t in self.topics):
            raise DescriptionError("topics", self.topics, "must be a list of topic entries")
        if not isinstance(self.defaults, bool):
            raise DescriptionError("defaults", self.defaults, "must be true or false")
        if self.control_hz is not None:
            number_field(self, "control_hz", 0, 10_000, lo_open=True)
        if self.pose_topic:
            check_name("pose_topic", self.pose_topic)
        for attr in ("ros_topic", "oni_topic"):
            named = [getattr(t, attr) for t in self.topics if getattr(t, attr)]
            twice = sorted({n for n in named if named.count(n) > 1})
            if twice:
                raise DescriptionError(f"topics[].{attr}", twice, "must be unique among the entries")

    def entries(self) -> list[TopicMap]:
        """The file's entries, then the defaults whose ROS topic none of them takes."""
        own = {t.ros_topic for t in self.topics}
        return [*self.topics, *(t for t in DEFAULT_TOPICS if self.defaults and t.ros_topic not in own)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, entries as a list of mappings."""
        doc = dataclasses.asdict(self)
        doc["topics"] = list(doc["topics"])
        return doc


def load_mapping(path: str | os.PathLike[str] | None) -> BagMapping:
    """The mapping file at ``path`` (None: the defaults); errors name the field (``topics[1].ros_type``)."""
    if path is None:
        return BagMapping()
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text())
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise DescriptionError(str(path), type(raw).__name__, "must be a YAML mapping (robot, topics, ...)")
    raw = dict(raw)
    topics = raw.pop("topics", None) or []
    if not isinstance(topics, list):
        raise DescriptionError("topics", topics, "must be a list of entries with ros_topic and ros_type")
    raw["topics"] = tuple(build(TopicMap, t, f"topics[{i}]") for i, t in enumerate(topics))
    raw["robot"] = str(resolve_robot(raw.get("robot", BagMapping.robot), path.parent))
    return build(BagMapping, raw, "mapping")


@dataclass(frozen=True)
class Route:
    """A mapping entry resolved for one run: its conversion, the ONI topic, and the robot sensor it feeds (whose
    sizes the messages must match; None for the drive's commands or a topic the robot does not describe)."""

    entry: TopicMap
    ros: RosType
    oni_topic: str
    sensor: SensorDescription | None


def _robot_topic(robot: RobotDescription, kind: str) -> str | None:
    """The robot's ONI topic of ``kind`` (``drive``: the command topic), or None without exactly one such sensor."""
    if kind == "drive":
        return robot.drive.topic
    sensors = robot.sensors_of_kind(kind)
    return sensors[0].topic if len(sensors) == 1 else None


def import_routes(mapping: BagMapping, robot: RobotDescription) -> dict[str, Route]:
    """The routes of an import, by ROS topic. A default entry is dropped when the robot has no sensor of its
    kind or a file entry takes its ONI topic; a file entry whose ONI topic cannot be resolved is an error."""
    routes: dict[str, Route] = {}
    taken: dict[str, str] = {}
    for i, entry in enumerate(mapping.entries()):
        ros = entry.conversion()
        oni_topic = entry.oni_topic or _robot_topic(robot, ros.kind)
        own = i < len(mapping.topics)
        if oni_topic is None or oni_topic in taken:
            if own:
                why = (f"{taken[oni_topic]} already maps to it" if oni_topic in taken
                       else f"robot {robot.name!r} has no single {ros.kind} sensor: name the ONI topic")
                raise DescriptionError(f"topics[{i}].oni_topic", entry.oni_topic, why)
            continue
        taken[oni_topic] = entry.ros_topic
        sensor = next((s for s in robot.sensors if s.topic == oni_topic), None)
        routes[entry.ros_topic] = Route(entry, ros, oni_topic, sensor)
    return routes


def export_routes(mapping: BagMapping, channels: Iterable[LogChannel]) -> tuple[dict[str, Route], dict[str, str]]:
    """The routes of an export, by ONI topic, and why each other ONI topic of ``channels`` is not exported."""
    entries = [(e, e.conversion()) for e in mapping.entries()]
    routes: dict[str, Route] = {}
    unrouted: dict[str, str] = {}
    used: dict[str, str] = {}
    for channel in channels:
        if channel.topic in routes or channel.topic in unrouted:
            continue
        found = next(((e, r) for e, r in entries if e.oni_topic == channel.topic), None)
        found = found or next(((e, r) for e, r in entries if not e.oni_topic and r.schema == channel.schema), None)
        if found is None:
            unrouted[channel.topic] = f"no mapping entry converts ONI schema {channel.schema!r}"
        elif found[0].ros_topic in used:
            unrouted[channel.topic] = (f"{found[0].ros_topic} already carries {used[found[0].ros_topic]}: "
                                       f"map {channel.topic} to a ROS topic of its own (oni_topic)")
        else:
            used[found[0].ros_topic] = channel.topic
            routes[channel.topic] = Route(found[0], found[1], channel.topic, None)
    return routes, unrouted


# --------------------------------------------------------------------------------------------------------------
# Import.


class _Skips:
    """Skipped messages counted per (topic, reason), with the first one's detail and time (ns)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, topic: str, type_name: str, reason: str, detail: str, time_ns: int | None = None, count: int = 1) -> None:
        row = self.rows.get((topic, reason))
        if row is None:
            row = self.rows[(topic, reason)] = {"topic": topic, "type": type_name, "reason": reason, "count": 0,
                                                "detail": detail, "first_ns": time_ns}
        row["count"] += count

    def of(self, topic: str) -> list[dict[str, Any]]:
        return [row for (t, _), row in self.rows.items() if t == topic]


def _storage_of(path: Path) -> str:
    """``mcap`` or ``sqlite3``: the storage of a rosbag2 directory or storage file."""
    files = [path] if path.is_file() else list(path.iterdir())
    return "sqlite3" if any(f.suffix == ".db3" for f in files) else "mcap"


def _output_name(path: Path) -> str:
    return (path.name if path.is_dir() else path.stem) + ".mcap"


def import_bags(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], mapping: BagMapping = BagMapping(),
                *, overwrite: bool = False) -> dict[str, Any]:
    """Import every rosbag2 recording of ``paths`` into ``out_dir`` (module docstring) and return the report
    (also written to ``out_dir/import_report.json``). Raises before importing anything when an output log
    exists (without ``overwrite``) or two bags would give the same log name."""
    require_extra("rosbags", "bags", "importing rosbag2 recordings")
    robot_file = resolve_robot(mapping.robot)
    robot, robot_yaml = load_robot(robot_file), robot_file.read_text()
    routes = import_routes(mapping, robot)
    out = Path(out_dir)
    bags = [Path(p) for p in paths]
    names = [_output_name(b) for b in bags]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"bags {[str(b) for b, n in zip(bags, names) if n in twice]} would all become {twice}: rename one")
    existing = [str(out / n) for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing} exist: pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    reports = [_import_one(bag, out / name, mapping, robot, robot_yaml, robot_file, routes) for bag, name in zip(bags, names)]
    report = {"format": REPORT_FORMAT, "robot": robot.name, "mapping": mapping.to_dict(), "bags": reports}
    write_json(out / REPORT, report)
    return report


def _import_one(bag: Path, out: Path, mapping: BagMapping, robot: RobotDescription, robot_yaml: str, robot_file: Path,
                routes: Mapping[str, Route]) -> dict[str, Any]:
    """One bag into the log ``out``; the bag's report (a bag that cannot be read gives status ``failed``)."""
    from rosbags.highlevel import AnyReader, AnyReaderError
    from rosbags.typesys import Stores, get_typestore

    report: dict[str, Any] = {"bag": str(bag), "out": None, "status": "failed", "error": ""}
    tmp = out.with_name(out.name + _PARTIAL_SUFFIX)
    try:
        report["storage"] = _storage_of(bag)
        with AnyReader([bag], default_typestore=get_typestore(Stores.LATEST)) as reader:
            metadata = {
                "robot": {"name": robot.name, "description_yaml": robot_yaml, "path": str(robot_file)},
                "import": {"mapping": json.dumps(mapping.to_dict(), sort_keys=True), "bag": str(bag.resolve())},
            }
            with LogWriter(tmp, metadata, overwrite=True) as writer:
                result = _convert(reader, writer, routes, robot)
                if writer.stats.total:
                    pose_topic = mapping.pose_topic or (_robot_topic(robot, "odom") or "")
                    episode = {"source": SOURCE, "bag": str(bag.resolve()), "storage": report["storage"],
                               "clock": "ros: stamp_ns is each message's header stamp (or the bag's receive time)",
                               "duration_s": repr(result["duration_s"])}
                    if pose_topic in result["written"]:
                        episode["pose_topic"] = pose_topic
                    if mapping.control_hz is not None:
                        episode["control_hz"] = repr(mapping.control_hz)
                    writer.add_metadata("episode", episode)
    except (AnyReaderError, OSError) as exc:  # rosbags reports a bag it cannot open with these
        tmp.unlink(missing_ok=True)
        report["error"] = f"cannot read the bag: {type(exc).__name__}: {exc}"
        log.error("%s: %s", bag, report["error"])
        return report
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.update(result)
    if not report["written"]:
        tmp.unlink(missing_ok=True)
        report["error"] = report["error"] or "no message could be imported (see skipped and missing)"
        log.error("%s: %s", bag, report["error"])
        return report
    os.replace(tmp, out)
    report["out"] = str(out)
    report["status"] = "partial" if report["skipped"] or report["missing"] or report["error"] else "ok"
    return report


def _convert(reader: Any, writer: LogWriter, routes: Mapping[str, Route], robot: RobotDescription) -> dict[str, Any]:
    """Every message of ``reader`` (an open rosbags ``AnyReader``) through its route into ``writer``: the
    figures of the bag's report (topics, written, skipped, missing, time span)."""
    registry = SchemaRegistry.default()
    skips = _Skips()
    in_bag: dict[str, dict[str, Any]] = {}
    for conn in reader.connections:
        row = in_bag.setdefault(conn.topic, {"ros_topic": conn.topic, "ros_type": conn.msgtype, "messages": 0})
        row["messages"] += conn.msgcount
    wanted = []
    for conn in reader.connections:
        route = routes.get(conn.topic)
        if route is None:
            reason, why = (("unmapped_topic", "the mapping names no such topic") if conn.msgtype in ROS_TYPES
                           else ("unknown_type", "no conversion for this type: add a mapping entry with a converter"))
            skips.add(conn.topic, conn.msgtype, reason, why, count=conn.msgcount)
        elif conn.msgtype != route.ros.name:
            skips.add(conn.topic, conn.msgtype, "type_mismatch", f"the mapping expects {route.ros.name}", count=conn.msgcount)
        else:
            wanted.append(conn)
    missing = [{"ros_topic": r.entry.ros_topic, "oni_topic": r.oni_topic,
                "reason": "not in the bag" + (f": robot sensor {r.sensor.name!r} gets no data" if r.sensor else "")}
               for r in routes.values() if r.entry.ros_topic not in in_bag]
    versions = {r.oni_topic: registry.latest(r.ros.schema).version for r in routes.values()}
    seq = {r.oni_topic: 0 for r in routes.values()}
    last_ns: dict[str, int] = {}
    written_by_ros: dict[str, int] = {}
    rejected = dict(writer.stats.rejected)
    first_ns = last_bag_ns = None
    read_error = ""
    stream = iter(reader.messages(connections=wanted) if wanted else ())
    while True:
        try:
            conn, bag_ns, raw = next(stream)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - storage readers raise their own types on a damaged file: keep what was read
            read_error = f"reading stopped early: {type(exc).__name__}: {exc}"
            break
        route = routes[conn.topic]
        topic, kind = conn.topic, conn.msgtype
        try:
            ros_msg = reader.deserialize(raw, kind)
        except Exception as exc:  # noqa: BLE001 - the CDR decoder raises its own types on bad bytes; one message must not end the import
            skips.add(topic, kind, "undecodable", f"{type(exc).__name__}: {exc}", bag_ns)
            continue
        try:
            converted = route.ros.to_oni(ros_msg, route.sensor)
        except Exception as exc:  # noqa: BLE001 - a converter (possibly the robot's own) refusing or failing on one message
            skips.add(topic, kind, "refused", f"{type(exc).__name__}: {exc}", bag_ns)
            continue
        use_header = route.entry.stamp != "bag" and route.ros.stamped
        stamp_ns = converted.stamp_ns if use_header else bag_ns
        if use_header and stamp_ns == 0:
            skips.add(topic, kind, "unstamped", "header stamp is 0 (never set by the publisher): map it with stamp: bag", bag_ns)
            continue
        previous = last_ns.get(route.oni_topic)
        if previous is not None and stamp_ns < previous:
            skips.add(topic, kind, "clock_backwards",
                      f"stamped {(previous - stamp_ns) / 1e9:.6f} s before the previous {route.oni_topic} message", bag_ns)
            continue
        header = Header(route.ros.schema, versions[route.oni_topic], seq[route.oni_topic], SOURCE, stamp_ns, bag_ns,
                        converted.frame_id, new_trace_id())
        try:
            ok = writer.write(Message(route.oni_topic, header, converted.data), log_time_ns=bag_ns)
        except EncodeError as exc:  # data ONI cannot carry at all (from a robot's own converter)
            skips.add(topic, kind, "rejected", f"{type(exc).__name__}: {exc}", bag_ns)
            continue
        if not ok:
            now = writer.stats.rejected
            kinds = sorted(k for k in now if now[k] != rejected.get(k, 0))
            rejected = dict(now)
            skips.add(topic, kind, "rejected", f"fails ONI validation: {', '.join(kinds)}", bag_ns)
            continue
        seq[route.oni_topic] += 1
        last_ns[route.oni_topic] = stamp_ns
        written_by_ros[topic] = written_by_ros.get(topic, 0) + 1
        first_ns = bag_ns if first_ns is None else first_ns
        last_bag_ns = bag_ns
    listed = {m["oni_topic"] for m in missing}
    for sensor in robot.sensors:
        if sensor.topic not in writer.stats.written and sensor.topic not in listed:
            fed = any(r.oni_topic == sensor.topic for r in routes.values())
            missing.append({"ros_topic": None, "oni_topic": sensor.topic, "reason": f"robot sensor {sensor.name!r} got no "
                            f"message: {'every one was skipped' if fed else 'no mapping entry feeds it'}"})
    oni_of = {r.entry.ros_topic: r.oni_topic for r in routes.values()}
    topics = [{**row, "oni_topic": oni_of.get(t), "written": written_by_ros.get(t, 0),
               "skipped": sum(s["count"] for s in skips.of(t))} for t, row in sorted(in_bag.items())]
    return {
        "error": read_error,
        "topics": topics,
        "written": dict(writer.stats.written),
        "skipped": list(skips.rows.values()),
        "missing": missing,
        "start_ns": first_ns,
        "end_ns": last_bag_ns,
        "duration_s": (last_bag_ns - first_ns) / 1e9 if first_ns is not None else 0.0,
    }


# --------------------------------------------------------------------------------------------------------------
# Export.


def export_log(log_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], mapping: BagMapping = BagMapping()) -> dict[str, Any]:
    """Export the ONI log ``log_path`` to a new rosbag2 directory ``out_dir`` (MCAP storage; module docstring);
    returns the report: ROS messages written per ROS topic, and what was skipped and why. A failed export
    leaves no directory behind."""
    require_extra("rosbags", "bags", "writing rosbag2 recordings")
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"{out} exists: the export writes a new rosbag2 directory")
    reader = LogReader(log_path)
    routes, unrouted = export_routes(mapping, [c for c in reader.info().channels if c.is_oni])
    typestore = get_typestore(Stores.LATEST)
    skips = _Skips()
    written: dict[str, int] = {}
    try:
        with Writer(out, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as writer:
            connections: dict[str, Any] = {}
            for msg in reader.messages():
                route = routes.get(msg.topic)
                if route is None:
                    skips.add(msg.topic, msg.header.schema, "no_ros_type", unrouted.get(msg.topic, "not in the log's summary"))
                    continue
                out_msgs = [(route.entry.ros_topic, route.ros.name, route.ros.to_ros)]
                if route.entry.camera_info:
                    out_msgs.append((route.entry.camera_info, CAMERA_INFO, camera_info_to_ros))
                try:
                    raws = [(topic, kind, typestore.serialize_cdr(fn(msg.header.stamp_ns, msg.header.frame_id, msg.data,
                                                                     typestore.types), kind))
                            for topic, kind, fn in out_msgs]
                except Exception as exc:  # noqa: BLE001 - converters and the CDR encoder raise their own types; skip the one message
                    skips.add(msg.topic, msg.header.schema, "refused", f"{type(exc).__name__}: {exc}", msg.recv_ns)
                    continue
                for topic, kind, raw in raws:
                    if topic not in connections:
                        connections[topic] = writer.add_connection(topic, kind, typestore=typestore)
                    writer.write(connections[topic], msg.recv_ns, raw)
                    written[topic] = written.get(topic, 0) + 1
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"log": str(log_path), "out": str(out), "written": written, "skipped": list(skips.rows.values()),
            "log_rejected": dict(reader.rejected)}


# --------------------------------------------------------------------------------------------------------------
# Command line.


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def format_table(report: Mapping[str, Any]) -> str:
    """An import report (or one bag's, or an export's) as text tables: per topic, what was written and skipped."""
    if "bags" in report:
        return "\n\n".join(format_table(bag) for bag in report["bags"])
    if "log" in report:  # an export
        rows = [[t, n, "", ""] for t, n in sorted(report["written"].items())]
        rows += [[s["topic"], 0, s["count"], f"{s['reason']}: {s['detail']}"] for s in report["skipped"]]
        return f"{report['log']} -> {report['out']}\n" + _table(["ROS/ONI topic", "written", "skipped", "why"], rows)
    title = f"{report['bag']} -> {report['out'] or 'no log'}: {report['status']}"
    if report["error"]:
        title += f" ({report['error']})"
    rows = []
    for topic in report.get("topics", []):
        reasons = "; ".join(f"{s['count']} {s['reason']}: {s['detail']}" for s in report["skipped"] if s["topic"] == topic["ros_topic"])
        rows.append([topic["ros_topic"], topic["ros_type"], topic["oni_topic"], topic["messages"], topic["written"],
                     topic["skipped"], reasons])
    rows += [[m["ros_topic"], None, m["oni_topic"], 0, 0, 0, f"missing: {m['reason']}"] for m in report.get("missing", [])]
    if not rows:
        return title
    return title + "\n" + _table(["ROS topic", "type", "ONI topic", "in bag", "written", "skipped", "why"], rows)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-bag`` and ``export-bag`` to ``oniwm``."""
    summary = __doc__.split("\n\n")[0]
    imp = subparsers.add_parser("import-bag", help="rosbag2 recordings (MCAP or sqlite3) to ONI logs for oniwm train",
                                description=summary)
    imp.add_argument("paths", nargs="+", metavar="PATH", help="a rosbag2 directory, or one .mcap / .db3 storage file")
    imp.add_argument("--map", metavar="FILE", help="mapping file (YAML); default: the standard topics and turtlebot4")
    imp.add_argument("--out", required=True, metavar="DIR", help="output folder: one log per bag, plus import_report.json")
    imp.add_argument("--overwrite", action="store_true", help="replace logs of the same names")
    imp.set_defaults(func=run_import)
    exp = subparsers.add_parser("export-bag", help="an ONI log to a rosbag2 directory (MCAP storage) for ROS tools",
                                description=summary)
    exp.add_argument("log", metavar="LOG", help="ONI MCAP log")
    exp.add_argument("--out", required=True, metavar="DIR", help="rosbag2 directory to create")
    exp.add_argument("--map", metavar="FILE", help="mapping file (YAML); default: the standard topics")
    exp.set_defaults(func=run_export)


def run_import(args: argparse.Namespace) -> int:
    """``oniwm import-bag``; see the module docstring for the exit status."""
    try:
        report = import_bags(args.paths, args.out, load_mapping(args.map), overwrite=args.overwrite)
    except (OSError, ValueError, ImportError) as exc:  # a bad mapping (DescriptionError), existing output, no rosbags
        log.error("%s", exc)
        return 2
    sys.stdout.write(format_table(report) + f"\n\nreport: {Path(args.out) / REPORT}\n")
    return 1 if any(bag["status"] == "failed" for bag in report["bags"]) else 0


def run_export(args: argparse.Namespace) -> int:
    """``oniwm export-bag``; see the module docstring for the exit status."""
    try:
        report = export_log(args.log, args.out, load_mapping(args.map))
    except (OSError, ValueError, ImportError) as exc:
        log.error("%s", exc)
        return 2
    sys.stdout.write(format_table(report) + "\n")
    return 0 if report["written"] else 1
