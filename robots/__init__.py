"""Robot descriptions: sensors with rates, frames and noise, actuator limits, and the MJCF generated from them.

Shipped robots live in ``robots/<name>/robot.yaml``; :func:`robot_path` finds one by name, and
:func:`resolve_robot` resolves what a preset or mapping file names (a shipped name or a path).
"""

from pathlib import Path

from robots.description import (
    DescriptionError,
    RobotDescription,
    SensorDescription,
    load_robot,
    robot_mjcf,
)

#: Folder holding the shipped robots, one sub-folder per robot.
ROBOTS_DIR = Path(__file__).resolve().parent


def robot_path(name: str) -> Path:
    """Path of the shipped robot description ``robots/<name>/robot.yaml``; ``FileNotFoundError`` naming the shipped ones."""
    path = ROBOTS_DIR / name / "robot.yaml"
    if not path.is_file():
        shipped = sorted(p.parent.name for p in ROBOTS_DIR.glob("*/robot.yaml"))
        raise FileNotFoundError(f"no shipped robot {name!r}; shipped: {shipped}")
    return path


def resolve_robot(ref: object, base_dir: str | Path = ".", field: str = "robot") -> Path:
    """The description file ``ref`` names: a shipped robot's name (``turtlebot4``), or a path to a description
    YAML (it contains ``/`` or ends in ``.yaml``/``.yml``), relative to ``base_dir``. Errors are
    :class:`DescriptionError` naming ``field``."""
    if not isinstance(ref, str) or not ref:
        raise DescriptionError(field, ref, "must be a shipped robot's name (e.g. 'turtlebot4') or a path to a description YAML")
    if "/" in ref or ref.endswith((".yaml", ".yml")):
        path = (Path(base_dir) / ref).resolve()
        if not path.is_file():
            raise DescriptionError(field, ref, f"no such file: {path}")
        return path
    try:
        return robot_path(ref)
    except FileNotFoundError as exc:
        raise DescriptionError(field, ref, str(exc)) from None


__all__ = [
    "DescriptionError",
    "ROBOTS_DIR",
    "RobotDescription",
    "SensorDescription",
    "load_robot",
    "resolve_robot",
    "robot_mjcf",
    "robot_path",
]
