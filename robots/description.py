"""Robot descriptions: a typed, validated format (YAML) read by the simulator and, later, the ROS 2 node.

A description holds the base (differential drive kinematics, limits and footprint), the drive actuator,
and each sensor (kind, ONI topic, rate, frame, mount pose, parameters and noise model). Every class is a
frozen dataclass validated at construction; nothing mutates a description once it is built (derive a new
one with :func:`dataclasses.replace` or :meth:`RobotDescription.without_noise`).

A bad value raises :class:`DescriptionError` naming the YAML path and the allowed range::

    robot.base.max_v_mps = -1: must be in (0, 5]

The robot's MJCF is generated from the description (:func:`robot_mjcf`), so the simulated geometry, mass,
limits and sensor mounts cannot disagree with what the rest of the system reads.

Frames: the base frame is x forward, y left, z up, origin on the floor under the centre of the footprint.
A sensor's mount pose is given in the base frame; each sensor looks along its own +x axis (ROS body
convention; the depth image is built from rays around +x).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Union
from xml.sax.saxutils import quoteattr

__all__ = [
    "ActuatorDescription",
    "BaseParams",
    "DepthNoise",
    "DepthParams",
    "DescriptionError",
    "ImuNoise",
    "ImuParams",
    "LidarNoise",
    "LidarParams",
    "MjcfNames",
    "MountPose",
    "OdomNoise",
    "OdomParams",
    "RobotDescription",
    "SENSOR_KINDS",
    "SensorDescription",
    "build",
    "check_choice",
    "check_int",
    "check_name",
    "check_number",
    "check_vector",
    "load_robot",
    "number_field",
    "robot_from_dict",
    "robot_mjcf",
]

_YAML_HINT = "reading robot descriptions needs PyYAML: pip install 'oni-worldmodel[sim]'"


class DescriptionError(ValueError):
    """An invalid field of a description or config: names the field (YAML path), its value and what is allowed.

    ``field`` is the dotted path (``robot.sensors[lidar].params.beams``), ``value`` the offending value and
    ``allowed`` a human-readable statement of the allowed range or values.
    """

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field} = {value!r}: {allowed}")

    def under(self, prefix: str) -> "DescriptionError":
        """The same error with ``prefix`` prepended to the field path."""
        return DescriptionError(f"{prefix}.{self.field}" if prefix else self.field, self.value, self.allowed)


# --------------------------------------------------------------------------------------------------------------
# Field checks, shared by every validated config in robots/ and sim/.


def check_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float if it is a finite number in the interval, else :class:`DescriptionError`."""
    interval = f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DescriptionError(name, value, f"must be a number in {interval}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        raise DescriptionError(name, value, f"must be in {interval}")
    return float(value)


def number_field(obj: Any, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Check the field ``name`` of the frozen dataclass ``obj`` with :func:`check_number` and store it as a float."""
    object.__setattr__(obj, name, check_number(name, getattr(obj, name), lo, hi, lo_open=lo_open, hi_open=hi_open))


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` if it is an integer in ``[lo, hi]``, else :class:`DescriptionError`."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise DescriptionError(name, value, f"must be an integer in [{lo}, {hi}]")
    return value


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else :class:`DescriptionError`."""
    if value not in choices:
        raise DescriptionError(name, value, f"must be one of {list(choices)}")
    return value


def check_name(name: str, value: Any) -> str:
    """``value`` if it is a non-empty string without whitespace (names, topics, frame ids)."""
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise DescriptionError(name, value, "must be a non-empty string without whitespace")
    return value


def check_vector(name: str, value: Any, n: int, bound: float) -> tuple[float, ...]:
    """``value`` as an ``n``-tuple of finite floats each in ``[-bound, bound]``."""
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise DescriptionError(name, value, f"must be a list of {n} numbers")
    return tuple(check_number(f"{name}[{i}]", v, -bound, bound) for i, v in enumerate(value))


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def build(cls: type, raw: Any, path: str) -> Any:
    """Construct the dataclass ``cls`` from a YAML mapping, naming ``path`` in every error.

    Unknown keys are rejected with the list of known ones (a typo must not silently fall back to a
    default); missing keys take the dataclass default, or are reported when the field has none.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise DescriptionError(path, raw, f"must be a mapping with keys {sorted(f.name for f in fields(cls))}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise DescriptionError(f"{path}.{unknown[0]}", raw[unknown[0]], f"unknown field; known: {sorted(known)}")
    kwargs = {}
    for name, spec in known.items():
        if name in raw:
            value = raw[name]
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        elif spec.default is MISSING and spec.default_factory is MISSING:
            raise DescriptionError(f"{path}.{name}", None, "is required")
    try:
        return cls(**kwargs)
    except DescriptionError as exc:
        raise exc.under(path) from None


# --------------------------------------------------------------------------------------------------------------
# The base and its actuator.


@dataclass(frozen=True)
class BaseParams:
    """A differential-drive base: kinematics, footprint, mass and motion limits.

    The footprint is a vertical cylinder of ``radius_m`` and ``height_m`` (the collision shape in simulation
    and the clearance used by world generation). Limits are symmetric: ``|v| <= max_v_mps``,
    ``|omega| <= max_omega_radps``; the acceleration limits are what the drive can deliver (in simulation,
    the force and torque saturation of the drive).
    """

    wheel_radius_m: float
    track_width_m: float
    radius_m: float
    height_m: float
    mass_kg: float
    max_v_mps: float
    max_omega_radps: float
    max_accel_mps2: float
    max_alpha_radps2: float
    kind: str = "diff_drive"

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ("diff_drive",))
        number_field(self, "wheel_radius_m", 0, 0.5, lo_open=True)
        number_field(self, "radius_m", 0, 2, lo_open=True)
        number_field(self, "track_width_m", 0, 2 * self.radius_m, lo_open=True)
        number_field(self, "height_m", 0, 3, lo_open=True)
        number_field(self, "mass_kg", 0, 500, lo_open=True)
        number_field(self, "max_v_mps", 0, 5, lo_open=True)
        number_field(self, "max_omega_radps", 0, 20, lo_open=True)
        number_field(self, "max_accel_mps2", 0, 20, lo_open=True)
        number_field(self, "max_alpha_radps2", 0, 100, lo_open=True)

    @property
    def inertia_z_kgm2(self) -> float:
        """Yaw moment of inertia (kg m^2), the base taken as a uniform cylinder."""
        return 0.5 * self.mass_kg * self.radius_m**2


@dataclass(frozen=True)
class ActuatorDescription:
    """The drive: it takes ``actuator.cmd`` (v, omega) and tracks it with a first-order velocity loop.

    ``response_time_s`` is the loop's time constant; ``command_timeout_s`` is how long the drive keeps the
    last command before it stops on its own (as a real base does when its command stream dies);
    ``lateral_friction`` is the tyre friction coefficient that resists sideways motion (skid in collisions).
    """

    name: str
    kind: str = "diff_drive"
    topic: str = "actuator.cmd"
    response_time_s: float = 0.05
    command_timeout_s: float = 0.5
    lateral_friction: float = 0.8

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_choice("kind", self.kind, ("diff_drive",))
        check_name("topic", self.topic)
        number_field(self, "response_time_s", 0.005, 1.0)
        number_field(self, "command_timeout_s", 0, 10, lo_open=True)
        number_field(self, "lateral_friction", 0, 2, lo_open=True)


# --------------------------------------------------------------------------------------------------------------
# Sensors: per-kind parameters and noise models.


@dataclass(frozen=True)
class MountPose:
    """Pose of a sensor frame in the base frame: position (m) and roll, pitch, yaw (rad, applied as R = Rz Ry Rx)."""

    xyz_m: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rpy_rad: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "xyz_m", check_vector("xyz_m", self.xyz_m, 3, 10.0))
        object.__setattr__(self, "rpy_rad", check_vector("rpy_rad", self.rpy_rad, 3, math.pi))


@dataclass(frozen=True)
class LidarParams:
    """A planar scanning LiDAR: ``beams`` evenly over ``fov_deg`` centred on the sensor's +x axis.

    Beam ``i`` points at ``angle_min_rad + i * angle_increment_rad`` (counter-clockwise from +x). For a full
    360-degree scan the beams span ``[-pi, pi)``; for a partial field of view both ends are included.
    """

    beams: int
    range_min_m: float
    range_max_m: float
    fov_deg: float = 360.0

    def __post_init__(self) -> None:
        check_int("beams", self.beams, 1, 8192)
        number_field(self, "fov_deg", 0, 360, lo_open=True)
        number_field(self, "range_min_m", 0, 10)
        number_field(self, "range_max_m", self.range_min_m, 200, lo_open=True)

    @property
    def angle_min_rad(self) -> float:
        return -math.radians(self.fov_deg) / 2

    @property
    def angle_increment_rad(self) -> float:
        fov = math.radians(self.fov_deg)
        return fov / self.beams if self.fov_deg == 360.0 or self.beams == 1 else fov / (self.beams - 1)


@dataclass(frozen=True)
class DepthParams:
    """A pinhole depth camera, ``width x height`` pixels, horizontal field of view ``hfov_deg``, square pixels.

    The optical axis is the sensor's +x; image rows go top to bottom, columns left to right. Depth is
    z-depth (distance along the optical axis), valid in ``[range_min_m, range_max_m]``.
    """

    width: int
    height: int
    hfov_deg: float
    range_min_m: float
    range_max_m: float

    def __post_init__(self) -> None:
        check_int("width", self.width, 8, 1024)
        check_int("height", self.height, 8, 1024)
        number_field(self, "hfov_deg", 1, 170)
        number_field(self, "range_min_m", 0, 10)
        number_field(self, "range_max_m", self.range_min_m, 100, lo_open=True)

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` in pixels; pixel centres at integer coordinates, so ``cx = (width - 1) / 2``."""
        fx = (self.width / 2) / math.tan(math.radians(self.hfov_deg) / 2)
        return fx, fx, (self.width - 1) / 2, (self.height - 1) / 2


@dataclass(frozen=True)
class ImuParams:
    """An IMU: the accelerometer (specific force, so +g on z at rest) and gyro saturate at these magnitudes."""

    accel_range_mps2: float = 160.0
    gyro_range_radps: float = 35.0

    def __post_init__(self) -> None:
        number_field(self, "accel_range_mps2", 10, 2000)
        number_field(self, "gyro_range_radps", 1, 200)


@dataclass(frozen=True)
class OdomParams:
    """Wheel odometry from quadrature encoders with ``ticks_per_rev`` counts per wheel revolution."""

    ticks_per_rev: int = 508

    def __post_init__(self) -> None:
        check_int("ticks_per_rev", self.ticks_per_rev, 1, 1_000_000)


@dataclass(frozen=True)
class LidarNoise:
    """Gaussian range noise (std, m) on every return, and the probability that a beam returns nothing."""

    range_std_m: float = 0.0
    dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        number_field(self, "range_std_m", 0, 1)
        number_field(self, "dropout_prob", 0, 1, hi_open=True)


@dataclass(frozen=True)
class DepthNoise:
    """Gaussian depth noise growing with distance like a stereo camera: std = range_std_m + range_std_per_m2 * z^2."""

    range_std_m: float = 0.0
    range_std_per_m2: float = 0.0
    dropout_prob: float = 0.0

    def __post_init__(self) -> None:
        number_field(self, "range_std_m", 0, 1)
        number_field(self, "range_std_per_m2", 0, 1)
        number_field(self, "dropout_prob", 0, 1, hi_open=True)


@dataclass(frozen=True)
class ImuNoise:
    """IMU noise: white noise per sample (std), a constant bias drawn per episode (std), and a bias random walk
    (std growth per sqrt(second)), for the accelerometer (m/s^2) and the gyro (rad/s)."""

    accel_std_mps2: float = 0.0
    accel_bias_std_mps2: float = 0.0
    accel_bias_walk_mps2: float = 0.0
    gyro_std_radps: float = 0.0
    gyro_bias_std_radps: float = 0.0
    gyro_bias_walk_radps: float = 0.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            number_field(self, spec.name, 0, 10)


@dataclass(frozen=True)
class OdomNoise:
    """Wheel odometry errors: each wheel's true radius differs from nominal by a factor drawn per episode
    (``1 + wheel_scale_std * N(0, 1)``), and each wheel increment slips by ``wheel_slip_std * N(0, 1)`` of itself."""

    wheel_scale_std: float = 0.0
    wheel_slip_std: float = 0.0

    def __post_init__(self) -> None:
        number_field(self, "wheel_scale_std", 0, 0.2)
        number_field(self, "wheel_slip_std", 0, 1)


SensorParams = Union[LidarParams, DepthParams, ImuParams, OdomParams]
SensorNoise = Union[LidarNoise, DepthNoise, ImuNoise, OdomNoise]

#: kind -> (parameter class, noise class, ONI schema name).
SENSOR_KINDS: dict[str, tuple[type, type, str]] = {
    "lidar": (LidarParams, LidarNoise, "sensor.lidar"),
    "depth": (DepthParams, DepthNoise, "sensor.depth"),
    "imu": (ImuParams, ImuNoise, "sensor.imu"),
    "odom": (OdomParams, OdomNoise, "sensor.odom"),
}


@dataclass(frozen=True)
class SensorDescription:
    """One sensor: its kind, the ONI topic it publishes, its rate (Hz), frame id, mount pose, parameters and noise.

    ``params`` and ``noise`` are the classes of ``SENSOR_KINDS[kind]``; ``noise`` defaults to noise-free.
    """

    name: str
    kind: str
    topic: str
    rate_hz: float
    frame_id: str
    params: SensorParams
    mount: MountPose = field(default_factory=MountPose)
    noise: SensorNoise | None = None

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_choice("kind", self.kind, tuple(SENSOR_KINDS))
        check_name("topic", self.topic)
        number_field(self, "rate_hz", 0, 1000, lo_open=True)
        check_name("frame_id", self.frame_id)
        params_cls, noise_cls, _ = SENSOR_KINDS[self.kind]
        if not isinstance(self.params, params_cls):
            raise DescriptionError("params", self.params, f"must be {params_cls.__name__} for kind {self.kind!r}")
        if self.noise is None:
            object.__setattr__(self, "noise", noise_cls())
        elif not isinstance(self.noise, noise_cls):
            raise DescriptionError("noise", self.noise, f"must be {noise_cls.__name__} for kind {self.kind!r}")
        if not isinstance(self.mount, MountPose):
            raise DescriptionError("mount", self.mount, "must be a MountPose")

    @property
    def schema(self) -> str:
        """The ONI schema of the messages this sensor produces (``sensor.lidar`` ...)."""
        return SENSOR_KINDS[self.kind][2]

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz


@dataclass(frozen=True)
class RobotDescription:
    """A whole robot: base, drive actuator and sensors. Build with :func:`load_robot` or :func:`robot_from_dict`."""

    name: str
    base: BaseParams
    actuators: tuple[ActuatorDescription, ...]
    sensors: tuple[SensorDescription, ...]

    def __post_init__(self) -> None:
        check_name("name", self.name)
        object.__setattr__(self, "actuators", tuple(self.actuators))
        object.__setattr__(self, "sensors", tuple(self.sensors))
        drives = [a for a in self.actuators if a.kind == "diff_drive"]
        if len(drives) != 1:
            raise DescriptionError("actuators", [a.name for a in self.actuators], "need exactly one diff_drive actuator")
        for attr, label in (("name", "name"), ("topic", "topic")):
            seen: set[str] = set()
            for sensor in self.sensors:
                value = getattr(sensor, attr)
                if value in seen:
                    raise DescriptionError(f"sensors[{sensor.name}].{label}", value, "must be unique among sensors")
                seen.add(value)

    @property
    def drive(self) -> ActuatorDescription:
        """The diff-drive actuator."""
        return next(a for a in self.actuators if a.kind == "diff_drive")

    def sensor(self, name: str) -> SensorDescription:
        """The sensor called ``name``; ``KeyError`` listing the known names otherwise."""
        for sensor in self.sensors:
            if sensor.name == name:
                return sensor
        raise KeyError(f"no sensor {name!r}; known: {[s.name for s in self.sensors]}")

    def sensors_of_kind(self, kind: str) -> tuple[SensorDescription, ...]:
        return tuple(s for s in self.sensors if s.kind == kind)

    def without_noise(self) -> "RobotDescription":
        """A copy with every sensor's noise model set to noise-free (for analytic tests and ground-truth data)."""
        return replace(self, sensors=tuple(replace(s, noise=SENSOR_KINDS[s.kind][1]()) for s in self.sensors))


# --------------------------------------------------------------------------------------------------------------
# Loading.


def robot_from_dict(raw: Any, path: str = "robot") -> RobotDescription:
    """Build a description from a parsed YAML mapping; errors name the field under ``path``."""
    if not isinstance(raw, Mapping):
        raise DescriptionError(path, raw, "must be a mapping with keys ['actuators', 'base', 'name', 'sensors']")
    unknown = sorted(set(raw) - {"name", "base", "actuators", "sensors"})
    if unknown:
        raise DescriptionError(f"{path}.{unknown[0]}", raw[unknown[0]], "unknown field; known: ['actuators', 'base', 'name', 'sensors']")
    base = build(BaseParams, raw.get("base"), f"{path}.base")
    actuators = tuple(build(ActuatorDescription, a, f"{path}.actuators[{i}]") for i, a in enumerate(_seq(raw, "actuators", path)))
    sensors = tuple(_sensor_from_dict(s, f"{path}.sensors[{i}]") for i, s in enumerate(_seq(raw, "sensors", path)))
    try:
        return RobotDescription(name=raw.get("name"), base=base, actuators=actuators, sensors=sensors)
    except DescriptionError as exc:
        raise exc.under(path) from None


def _seq(raw: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list) or not value:
        raise DescriptionError(f"{path}.{key}", value, "must be a non-empty list")
    return value


def _sensor_from_dict(raw: Any, path: str) -> SensorDescription:
    if not isinstance(raw, Mapping):
        raise DescriptionError(path, raw, "must be a mapping")
    if "name" in raw and isinstance(raw["name"], str):
        path = f"{path.rsplit('[', 1)[0]}[{raw['name']}]"
    kind = raw.get("kind")
    if kind not in SENSOR_KINDS:
        raise DescriptionError(f"{path}.kind", kind, f"must be one of {list(SENSOR_KINDS)}")
    params_cls, noise_cls, _ = SENSOR_KINDS[kind]
    known = {"name", "kind", "topic", "rate_hz", "frame_id", "params", "mount", "noise"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DescriptionError(f"{path}.{unknown[0]}", raw[unknown[0]], f"unknown field; known: {sorted(known)}")
    for key in ("name", "topic", "rate_hz", "frame_id", "params"):
        if key not in raw:
            raise DescriptionError(f"{path}.{key}", None, "is required")
    params = build(params_cls, raw["params"], f"{path}.params")
    noise = build(noise_cls, raw.get("noise"), f"{path}.noise")
    mount = build(MountPose, raw.get("mount"), f"{path}.mount")
    try:
        return SensorDescription(
            name=raw["name"], kind=kind, topic=raw["topic"], rate_hz=raw["rate_hz"], frame_id=raw["frame_id"],
            params=params, mount=mount, noise=noise,
        )
    except DescriptionError as exc:
        raise exc.under(path) from None


def load_robot(path: str | Path) -> RobotDescription:
    """Read and validate a robot description YAML file (top-level key ``robot``)."""
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(_YAML_HINT) from exc
    text = Path(path).read_text()
    doc = yaml.safe_load(text)
    if not isinstance(doc, Mapping) or "robot" not in doc:
        raise DescriptionError(str(path), type(doc).__name__, "must be a YAML mapping with a top-level 'robot' key")
    return robot_from_dict(doc["robot"])


# --------------------------------------------------------------------------------------------------------------
# MJCF.


@dataclass(frozen=True)
class MjcfNames:
    """Element names in the generated MJCF, so the simulator resolves them to ids without guessing."""

    body: str = "base"
    joint_x: str = "base_x"
    joint_y: str = "base_y"
    joint_yaw: str = "base_yaw"
    collision_geom: str = "base_collision"
    drive_site: str = "drive"
    act_forward: str = "drive_forward"
    act_yaw: str = "drive_yaw"
    act_lateral: str = "drive_lateral"

    @staticmethod
    def site(sensor: SensorDescription) -> str:
        """The site at the sensor's mount pose."""
        return f"sensor_{sensor.name}"

    @staticmethod
    def imu_sensors(sensor: SensorDescription) -> tuple[str, str]:
        """MuJoCo sensor names of an IMU: (accelerometer, gyro)."""
        return f"{sensor.name}_accel", f"{sensor.name}_gyro"


#: Geom group of the robot's own geoms. World geoms stay in group 0, so ray casts can see only the world.
ROBOT_GEOM_GROUP = 1
_GRAVITY_MPS2 = 9.81


def robot_mjcf(robot: RobotDescription, names: MjcfNames = MjcfNames()) -> str:
    """A standalone MJCF model of the robot on a planar base (no floor, no world).

    The base body sits at the world origin with joints slide-x, slide-y, hinge-yaw, so ``qpos`` is the
    planar pose ``(x_m, y_m, yaw_rad)`` in the world frame. The collision shape is a vertical capsule of the
    footprint radius (MuJoCo's capsule colliders are the most robust, and walls and obstacles, all taller than
    the capsule's centre, meet it at its full radius; an obstacle lower than about ``height_m / 2`` would
    meet its rounded cap instead). Three velocity servos act at the ``drive`` site in the body frame: forward
    (ctrl = v in m/s), yaw (ctrl = omega in rad/s) and lateral (ctrl kept at 0: tyre grip). Their gains give
    the drive's response time and their force limits give the acceleration limits, so the limits hold in
    physics without a Python command filter on the step path. Each sensor gets a site at its mount pose;
    IMUs get MuJoCo accelerometer and gyro sensors at theirs.
    """
    base, drive = robot.base, robot.drive
    r, h, m = base.radius_m, base.height_m, base.mass_kg
    izz = base.inertia_z_kgm2
    # A capsule's flat-contact middle must span most of the height; keep its caps above the floor.
    half_len = max(h / 2 - r, 0.01)
    z_mid = max(h / 2, half_len + r + 0.005)
    sites = "".join(
        f'<site name={quoteattr(names.site(s))} pos="{_v(s.mount.xyz_m)}" euler="{_v(s.mount.rpy_rad)}" size="0.01"/>'
        for s in robot.sensors
    )
    imus = "".join(
        f'<accelerometer name="{names.imu_sensors(s)[0]}" site={quoteattr(names.site(s))}/>'
        f'<gyro name="{names.imu_sensors(s)[1]}" site={quoteattr(names.site(s))}/>'
        for s in robot.sensors_of_kind("imu")
    )
    lateral_force = drive.lateral_friction * m * _GRAVITY_MPS2
    return (
        f'<mujoco model={quoteattr(robot.name)}>'
        '<compiler angle="radian" eulerseq="XYZ"/>'
        "<worldbody>"
        f'<body name="{names.body}" pos="0 0 0">'
        f'<joint name="{names.joint_x}" type="slide" axis="1 0 0" damping="0"/>'
        f'<joint name="{names.joint_y}" type="slide" axis="0 1 0" damping="0"/>'
        f'<joint name="{names.joint_yaw}" type="hinge" axis="0 0 1" damping="0"/>'
        f'<inertial pos="0 0 {_g(h / 2)}" mass="{_g(m)}" diaginertia="{_g(izz / 2 + m * h * h / 12)} {_g(izz / 2 + m * h * h / 12)} {_g(izz)}"/>'
        f'<geom name="{names.collision_geom}" type="capsule" pos="0 0 {_g(z_mid)}" size="{_g(r)} {_g(half_len)}" '
        f'group="{ROBOT_GEOM_GROUP}" friction="0.3 0.005 0.0001" rgba="0.2 0.2 0.25 1"/>'
        f'<geom type="box" pos="{_g(r * 0.7)} 0 {_g(h)}" size="0.03 0.03 0.01" contype="0" conaffinity="0" '
        f'group="{ROBOT_GEOM_GROUP}" rgba="0.9 0.3 0.1 1"/>'
        f'<site name="{names.drive_site}" pos="0 0 {_g(h / 2)}" size="0.01"/>'
        f"{sites}"
        "</body>"
        "</worldbody>"
        "<actuator>"
        f'<velocity name="{names.act_forward}" site="{names.drive_site}" gear="1 0 0 0 0 0" '
        f'kv="{_g(m / drive.response_time_s)}" forcelimited="true" forcerange="{_g(-m * base.max_accel_mps2)} {_g(m * base.max_accel_mps2)}"/>'
        f'<velocity name="{names.act_yaw}" site="{names.drive_site}" gear="0 0 0 0 0 1" '
        f'kv="{_g(izz / drive.response_time_s)}" forcelimited="true" forcerange="{_g(-izz * base.max_alpha_radps2)} {_g(izz * base.max_alpha_radps2)}"/>'
        # Tyre grip: a stiff servo on lateral velocity, saturating at the friction force (the base skids beyond it).
        f'<velocity name="{names.act_lateral}" site="{names.drive_site}" gear="0 1 0 0 0 0" '
        f'kv="{_g(m / 0.01)}" forcelimited="true" forcerange="{_g(-lateral_force)} {_g(lateral_force)}"/>'
        "</actuator>"
        f"<sensor>{imus}</sensor>"
        "</mujoco>"
    )


def _g(x: float) -> str:
    return f"{x:.9g}"


def _v(xs: tuple[float, ...]) -> str:
    return " ".join(_g(x) for x in xs)
