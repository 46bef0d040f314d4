"""Typed, validated configuration of the simulator, and the loader of the ``robot``/``world``/``sim`` part of a
preset such as ``configs/hallway.yaml``.

A preset holds sections for several components; this loader reads only ``robot`` (a shipped robot's name,
or a path to a description YAML, relative to the preset file), ``world`` (:class:`sim.hallway.HallwayParams`)
and ``sim`` (:class:`SimSettings`), and leaves the other sections to the components that own them. Errors
name the preset field and the allowed range (``sim.physics_hz = 100: must be an integer in [500, 20000]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from robots import resolve_robot
from robots.description import (
    DescriptionError,
    RobotDescription,
    build,
    check_int,
    load_robot,
)
from sim.hallway import HallwayParams, hallway_params_from_dict

__all__ = ["SimConfig", "SimSettings", "load_sim_config", "sim_config_from_dict"]


@dataclass(frozen=True)
class SimSettings:
    """How the simulator runs.

    ``physics_hz``: physics steps per simulated second (the timestep is ``1 / physics_hz``). Every sensor
    rate must divide it, so each sensor samples on an exact step; 600 Hz suits 10, 15, 50 and 200 Hz
    sensors (and 50 Hz control). ``sensor_noise``: apply the description's noise models (off gives
    noise-free sensors, e.g. for analytic checks).
    """

    physics_hz: int = 600
    sensor_noise: bool = True

    def __post_init__(self) -> None:
        check_int("physics_hz", self.physics_hz, 500, 20000)
        if not isinstance(self.sensor_noise, bool):
            raise DescriptionError("sensor_noise", self.sensor_noise, "must be true or false")

    @property
    def timestep_s(self) -> float:
        return 1.0 / self.physics_hz


@dataclass(frozen=True)
class SimConfig:
    """The simulator's part of a preset: which robot, which worlds, and how to simulate."""

    robot_path: Path
    world: HallwayParams
    sim: SimSettings

    def load_robot(self) -> RobotDescription:
        """The robot description this preset names (read and validated now)."""
        return load_robot(self.robot_path)


def sim_config_from_dict(raw: Mapping[str, Any], base_dir: Path | str = ".") -> SimConfig:
    """:class:`SimConfig` from a parsed preset; relative robot paths resolve against ``base_dir``."""
    if not isinstance(raw, Mapping):
        raise DescriptionError("<preset>", raw, "must be a mapping with keys 'robot', 'world', 'sim'")
    return SimConfig(
        robot_path=resolve_robot(raw.get("robot"), base_dir),
        world=hallway_params_from_dict(raw.get("world"), "world"),
        sim=build(SimSettings, raw.get("sim"), "sim"),
    )


def load_sim_config(path: str | Path) -> SimConfig:
    """Read the ``robot``, ``world`` and ``sim`` sections of a preset YAML file."""
    try:
        import yaml
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError("reading presets needs PyYAML: pip install 'oni-worldmodel[sim]'") from exc
    path = Path(path)
    return sim_config_from_dict(yaml.safe_load(path.read_text()), path.parent)
