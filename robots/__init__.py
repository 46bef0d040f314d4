"""Robot descriptions: sensors with rates, frames and noise, actuator limits, and the MJCF generated from them.

Shipped robots live in ``robots/<name>/robot.yaml``; :func:`robot_path` finds one by name.
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


__all__ = [
    "DescriptionError",
    "ROBOTS_DIR",
    "RobotDescription",
    "SensorDescription",
    "load_robot",
    "robot_mjcf",
    "robot_path",
]
