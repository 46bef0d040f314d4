"""Procedural hallway worlds: seeded corridors with turns, cluttered with boxes and cylinders, checked passable.

:func:`generate_hallway` lays out a corridor of axis-aligned segments (random lengths, widths and left/right
90-degree turns, never overlapping itself), builds its walls from an occupancy grid, scatters obstacles,
and checks on the grid, inflated by the robot's radius plus a margin, that a route from the start to the
goal exists: obstacles are placed one at a time and an obstacle that would close the last route is redrawn,
at most ``max_attempts`` times, after which :class:`ImpossibleWorld` is raised (as it is when the corridor
itself is too narrow for the robot).

World frame: x, y on the floor, z up; the floor is z = 0. A :class:`World` is static geometry plus a start
pose, a goal and an occupancy grid; :meth:`World.to_mjcf` turns it into MJCF (static geoms on the
worldbody, in geom group 0, which is the group the simulated LiDAR and depth camera see).

The check is conservative by construction: a grid cell counts as free only if its centre is farther than
``robot_radius + margin + resolution / sqrt(2)`` from every wall and obstacle, so every point of a free cell
is clear by ``robot_radius + margin``, and a 4-connected chain of free cells is a route the robot can drive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

import numpy as np

from robots.description import DescriptionError, build, check_int, number_field

__all__ = [
    "Box",
    "Cylinder",
    "HallwayParams",
    "ImpossibleWorld",
    "OccupancyGrid",
    "Pose2",
    "World",
    "generate_hallway",
    "hallway_params_from_dict",
    "passable",
    "square_room",
]


class ImpossibleWorld(ValueError):
    """World parameters admit no passable world: the corridor is too narrow for the robot, or no obstacle
    placement within the attempt budget leaves a route from the start to the goal."""


# --------------------------------------------------------------------------------------------------------------
# Geometry.


@dataclass(frozen=True)
class Pose2:
    """A planar pose: position (m) and heading (rad, counter-clockwise from +x)."""

    x_m: float
    y_m: float
    yaw_rad: float


@dataclass(frozen=True)
class Box:
    """A box standing on the floor: centre (x, y) in m, half extents (x, y, z) in m, rotated by ``yaw_rad``.

    It spans z in ``[0, 2 * half_size_m[2]]``.
    """

    center_xy_m: tuple[float, float]
    half_size_m: tuple[float, float, float]
    yaw_rad: float = 0.0


@dataclass(frozen=True)
class Cylinder:
    """A vertical cylinder standing on the floor: centre (x, y) in m, radius and height in m."""

    center_xy_m: tuple[float, float]
    radius_m: float
    height_m: float


Shape = Union[Box, Cylinder]


@dataclass(frozen=True, eq=False)
class OccupancyGrid:
    """A 2-D occupancy grid of the world.

    ``occupied``: (H, W) bool, read-only; row ``i`` covers y in ``[oy + i*res, oy + (i+1)*res)``, column ``j``
    covers x in ``[ox + j*res, ox + (j+1)*res)``, where ``(ox, oy) = origin_xy_m``. A cell is occupied when its
    centre is inside a wall or obstacle (or outside the corridor, for hallways).
    """

    occupied: np.ndarray
    origin_xy_m: tuple[float, float]
    resolution_m: float

    def cell_of(self, x_m: float, y_m: float) -> tuple[int, int]:
        """The (row, col) containing the point (may lie outside the grid)."""
        return (
            int(math.floor((y_m - self.origin_xy_m[1]) / self.resolution_m)),
            int(math.floor((x_m - self.origin_xy_m[0]) / self.resolution_m)),
        )

    def contains(self, row: int, col: int) -> bool:
        return 0 <= row < self.occupied.shape[0] and 0 <= col < self.occupied.shape[1]

    def cell_centers(self) -> tuple[np.ndarray, np.ndarray]:
        """``(xs, ys)``: the x of each column's centre, shape (W,), and the y of each row's centre, shape (H,)."""
        h, w = self.occupied.shape
        res = self.resolution_m
        return (
            self.origin_xy_m[0] + (np.arange(w) + 0.5) * res,
            self.origin_xy_m[1] + (np.arange(h) + 0.5) * res,
        )


@dataclass(frozen=True, eq=False)
class World:
    """A static world: walls, obstacles, the robot's start pose, the goal, and the occupancy grid.

    ``centerline_xy_m`` (K, 2) is the corridor's centre polyline from start to goal (for progress metrics),
    and ``length_m`` its length. ``seed`` is the generator seed, ``None`` for hand-built worlds.
    """

    walls: tuple[Box, ...]
    obstacles: tuple[Shape, ...]
    start: Pose2
    goal_xy_m: tuple[float, float]
    grid: OccupancyGrid
    centerline_xy_m: np.ndarray
    length_m: float
    seed: int | None = None

    def to_mjcf(self) -> str:
        """MJCF of the world alone: floor, walls and obstacles as static geoms on the worldbody.

        The floor takes part in no contacts (the robot is planar) but is in geom group 0 like the walls, so
        depth rays see it. Shadows and reflections are off: nothing here needs them and they slow rendering.
        """
        parts = [
            '<mujoco model="world">',
            '<compiler angle="radian"/>',
            '<visual><quality shadowsize="0"/><headlight ambient="0.5 0.5 0.5" diffuse="0.4 0.4 0.4"/></visual>',
            '<asset><texture name="floor" type="2d" builtin="checker" rgb1="0.55 0.55 0.55" rgb2="0.6 0.6 0.6" '
            'width="64" height="64"/><material name="floor" texture="floor" texrepeat="1 1" texuniform="true" '
            'reflectance="0"/></asset>',
            "<worldbody>",
            '<geom name="floor" type="plane" size="0 0 0.05" material="floor" contype="0" conaffinity="0" group="0"/>',
        ]
        for i, wall in enumerate(self.walls):
            parts.append(_box_xml(f"wall_{i}", wall, "0.75 0.72 0.68 1"))
        for i, shape in enumerate(self.obstacles):
            if isinstance(shape, Box):
                parts.append(_box_xml(f"obstacle_{i}", shape, "0.35 0.5 0.75 1"))
            else:
                x, y = shape.center_xy_m
                parts.append(
                    f'<geom name="obstacle_{i}" type="cylinder" pos="{x:.6g} {y:.6g} {shape.height_m / 2:.6g}" '
                    f'size="{shape.radius_m:.6g} {shape.height_m / 2:.6g}" group="0" rgba="0.75 0.45 0.3 1"/>'
                )
        gx, gy = self.goal_xy_m
        # The goal is a site, which rays and contacts ignore: it marks the goal for people, not for sensors.
        parts.append(f'<site name="goal" pos="{gx:.6g} {gy:.6g} 0.01" size="0.15" type="sphere" rgba="0.1 0.8 0.2 0.6"/>')
        parts.append("</worldbody></mujoco>")
        return "".join(parts)


def _box_xml(name: str, box: Box, rgba: str) -> str:
    (x, y), (hx, hy, hz) = box.center_xy_m, box.half_size_m
    return (
        f'<geom name="{name}" type="box" pos="{x:.6g} {y:.6g} {hz:.6g}" size="{hx:.6g} {hy:.6g} {hz:.6g}" '
        f'euler="0 0 {box.yaw_rad:.9g}" group="0" rgba="{rgba}"/>'
    )


# --------------------------------------------------------------------------------------------------------------
# Parameters.


@dataclass(frozen=True)
class HallwayParams:
    """Parameters of :func:`generate_hallway`. Every ``*_min``/``*_max`` pair is a range sampled per world.

    Lengths are the centreline length from start to goal; widths are per segment; a segment is the
    straight stretch between turns. Obstacle count is ``round(obstacle_density_per_m * length)``; a fraction
    ``cylinder_fraction`` of them are cylinders, the rest boxes with random yaw. No obstacle comes within
    ``clear_radius_m`` of the start or the goal. The route must be clear by ``robot radius +
    clearance_margin_m``. Geometry is quantised to ``resolution_m``, the occupancy grid's cell size.
    """

    seed: int = 0
    length_min_m: float = 20.0
    length_max_m: float = 40.0
    width_min_m: float = 1.4
    width_max_m: float = 2.4
    turns_min: int = 1
    turns_max: int = 3
    segment_min_m: float = 3.0
    obstacle_density_per_m: float = 0.6
    cylinder_fraction: float = 0.5
    box_size_min_m: float = 0.2
    box_size_max_m: float = 0.6
    cylinder_radius_min_m: float = 0.1
    cylinder_radius_max_m: float = 0.3
    obstacle_height_min_m: float = 0.3
    obstacle_height_max_m: float = 1.0
    wall_thickness_m: float = 0.1
    wall_height_m: float = 1.0
    end_margin_m: float = 1.0
    clear_radius_m: float = 1.0
    clearance_margin_m: float = 0.05
    resolution_m: float = 0.05
    max_attempts: int = 30

    def __post_init__(self) -> None:
        check_int("seed", self.seed, 0, 2**63 - 1)
        number_field(self, "length_min_m", 2, 200)
        number_field(self, "length_max_m", self.length_min_m, 200)
        number_field(self, "width_min_m", 0.1, 20)
        number_field(self, "width_max_m", self.width_min_m, 20)
        check_int("turns_min", self.turns_min, 0, 20)
        check_int("turns_max", self.turns_max, self.turns_min, 20)
        number_field(self, "segment_min_m", 0.5, self.length_min_m / (self.turns_max + 1))
        number_field(self, "obstacle_density_per_m", 0, 10)
        number_field(self, "cylinder_fraction", 0, 1)
        number_field(self, "box_size_min_m", 0.02, 10)
        number_field(self, "box_size_max_m", self.box_size_min_m, 10)
        number_field(self, "cylinder_radius_min_m", 0.01, 5)
        number_field(self, "cylinder_radius_max_m", self.cylinder_radius_min_m, 5)
        number_field(self, "obstacle_height_min_m", 0.02, 10)
        number_field(self, "obstacle_height_max_m", self.obstacle_height_min_m, 10)
        number_field(self, "wall_thickness_m", 0.02, 2)
        number_field(self, "wall_height_m", 0.1, 10)
        number_field(self, "end_margin_m", 0, 10)
        number_field(self, "clear_radius_m", 0, 10)
        number_field(self, "clearance_margin_m", 0, 1)
        number_field(self, "resolution_m", 0.01, 0.5)
        check_int("max_attempts", self.max_attempts, 1, 1000)


def hallway_params_from_dict(raw: Mapping[str, Any] | None, path: str = "world") -> HallwayParams:
    """:class:`HallwayParams` from a YAML mapping; errors name the field under ``path`` (``world.width_min_m``)."""
    return build(HallwayParams, raw, path)


# --------------------------------------------------------------------------------------------------------------
# Generation.


@dataclass
class _Layout:
    points: np.ndarray  # (S + 1, 2) centreline vertices
    widths: np.ndarray  # (S,)
    headings: np.ndarray  # (S,) index into _DIRS
    rects: list[tuple[float, float, float, float]]  # per segment (xmin, ymin, xmax, ymax), ends extended
    length_m: float


def generate_hallway(params: HallwayParams, robot_radius_m: float) -> World:
    """A seeded hallway world that a robot of ``robot_radius_m`` can drive from start to goal.

    Deterministic in ``params`` (same parameters, same world). Raises :class:`ImpossibleWorld` when the
    corridor is narrower than the robot needs, or when an obstacle cannot be placed in ``params.max_attempts``
    draws without closing the last route; the message says which and what to change.
    """
    robot_radius_m = float(robot_radius_m)
    if not 0 < robot_radius_m < 10:
        raise DescriptionError("robot_radius_m", robot_radius_m, "must be in (0, 10)")
    res = params.resolution_m
    clearance = robot_radius_m + params.clearance_margin_m
    need = 2 * clearance + 2 * res
    if params.width_min_m < need:
        raise ImpossibleWorld(
            f"world.width_min_m = {params.width_min_m:g}: corridors narrower than {need:.3f} m "
            f"(2 x (robot radius {robot_radius_m:g} + clearance margin {params.clearance_margin_m:g}) + grid slack "
            f"{2 * res:g}) cannot be passed; raise width_min_m or lower clearance_margin_m"
        )
    rng = np.random.default_rng(params.seed)
    layout = _draw_layout(params, rng)
    free, origin = _corridor_grid(layout, params)
    walls = _wall_boxes(free, origin, params)
    inflate_m = clearance + res / math.sqrt(2)
    blocked = _dilate_disc(~free, inflate_m / res)
    start, goal = _start_goal(layout)
    start_cell = _cell(origin, res, start.x_m, start.y_m)
    goal_cell = _cell(origin, res, *goal)
    if not _route_exists(~blocked, start_cell, goal_cell):
        raise ImpossibleWorld(
            f"the empty corridor (seed {params.seed}) has no route clear by {clearance:.3f} m; raise width_min_m"
        )
    count = int(round(params.obstacle_density_per_m * layout.length_m))
    obstacles: list[Shape] = []
    # Obstacles are placed one at a time and each is kept only if a route survives it, so a dense world is
    # built up rather than redrawn whole (a whole redraw almost never succeeds at high density).
    for k in range(count):
        for _ in range(params.max_attempts):
            shape = _draw_obstacle(params, layout, start, goal, rng)
            if shape is None:
                continue
            trial = blocked | _rasterize((shape,), free.shape, origin, res, inflate_m)
            if _route_exists(~trial, start_cell, goal_cell):
                blocked = trial
                obstacles.append(shape)
                break
        else:
            raise ImpossibleWorld(
                f"obstacle {k + 1} of {count} (obstacle_density_per_m = {params.obstacle_density_per_m:g}) could not be "
                f"placed in {params.max_attempts} draws without blocking every route clear by {clearance:.3f} m "
                f"(seed {params.seed}); lower obstacle_density_per_m or the obstacle sizes, or widen the corridor"
            )
    occupied = ~free | _rasterize(obstacles, free.shape, origin, res, 0.0)
    occupied.flags.writeable = False
    centerline = layout.points.copy()
    centerline.flags.writeable = False
    return World(
        walls=walls,
        obstacles=tuple(obstacles),
        start=start,
        goal_xy_m=goal,
        grid=OccupancyGrid(occupied, origin, res),
        centerline_xy_m=centerline,
        length_m=layout.length_m,
        seed=params.seed,
    )


def passable(world: World, clearance_m: float) -> bool:
    """Whether a disc of radius ``clearance_m`` can travel from the world's start to its goal.

    Checked on the world's occupancy grid with the conservative inflation described in the module docstring.
    """
    grid = world.grid
    res = grid.resolution_m
    blocked = _dilate_disc(grid.occupied, (clearance_m + res / math.sqrt(2)) / res)
    start = grid.cell_of(world.start.x_m, world.start.y_m)
    goal = grid.cell_of(*world.goal_xy_m)
    return _route_exists(~blocked, start, goal)


def square_room(
    side_m: float, *, wall_thickness_m: float = 0.1, wall_height_m: float = 1.0, resolution_m: float = 0.05,
    start: Pose2 = Pose2(0.0, 0.0, 0.0), obstacles: Iterable[Shape] = (),
) -> World:
    """A closed square room with inner side ``side_m`` centred on the origin: walls with known inner faces at
    ``x = +-side_m/2`` and ``y = +-side_m/2`` (for analytic sensor tests). The goal is the start position."""
    half, t = side_m / 2, wall_thickness_m
    hz = wall_height_m / 2
    walls = (
        Box((half + t / 2, 0.0), (t / 2, half + t, hz)),
        Box((-half - t / 2, 0.0), (t / 2, half + t, hz)),
        Box((0.0, half + t / 2), (half + t, t / 2, hz)),
        Box((0.0, -half - t / 2), (half + t, t / 2, hz)),
    )
    obstacles = tuple(obstacles)
    n = int(math.ceil((half + t) / resolution_m)) + 1
    origin = (-n * resolution_m, -n * resolution_m)
    occupied = _rasterize(walls + obstacles, (2 * n, 2 * n), origin, resolution_m, 0.0)
    occupied.flags.writeable = False
    centerline = np.array([[start.x_m, start.y_m]])
    centerline.flags.writeable = False
    return World(
        walls=walls, obstacles=obstacles, start=start, goal_xy_m=(start.x_m, start.y_m),
        grid=OccupancyGrid(occupied, origin, resolution_m), centerline_xy_m=centerline, length_m=0.0,
    )


def _q(x: float, step: float) -> float:
    """``x`` rounded to a multiple of ``step`` (keeps corridor edges on grid lines)."""
    return round(x / step) * step


_DIRS = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def _draw_layout(params: HallwayParams, rng: np.random.Generator) -> _Layout:
    """Segment lengths, widths and turns; redrawn until non-adjacent segments keep apart (walls included)."""
    res = params.resolution_m
    gap = 2 * params.wall_thickness_m + 2 * res
    for _ in range(params.max_attempts):
        turns = int(rng.integers(params.turns_min, params.turns_max + 1))
        n_seg = turns + 1
        total = _q(rng.uniform(params.length_min_m, params.length_max_m), res)
        total = min(max(total, params.length_min_m), params.length_max_m)
        spare = total - n_seg * params.segment_min_m
        lengths = np.array([_q(params.segment_min_m + spare * f, res) for f in rng.dirichlet(np.ones(n_seg))])
        lengths[-1] = total - lengths[:-1].sum()  # exact total; rounding moved it by less than n_seg * res
        widths = np.array([_q(rng.uniform(params.width_min_m, params.width_max_m), 2 * res) for _ in range(n_seg)])
        widths = np.clip(widths, params.width_min_m, None)
        heading = int(rng.integers(4))
        headings = [heading]
        for _ in range(turns):
            heading = (heading + (1 if rng.random() < 0.5 else -1)) % 4
            headings.append(heading)
        points = np.zeros((n_seg + 1, 2))
        for i, (h, length) in enumerate(zip(headings, lengths)):
            points[i + 1] = points[i] + _DIRS[h] * length
        points = np.round(points / res) * res
        rects = []
        for i in range(n_seg):
            d = _DIRS[headings[i]]
            back = widths[i - 1] / 2 if i > 0 else params.end_margin_m
            fwd = widths[i + 1] / 2 if i < n_seg - 1 else params.end_margin_m
            a, b = points[i] - d * back, points[i + 1] + d * fwd
            half = widths[i] / 2
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            perp = np.abs(d[::-1]) * half
            rects.append((lo[0] - perp[0], lo[1] - perp[1], hi[0] + perp[0], hi[1] + perp[1]))
        if all(
            not _overlap(rects[i], rects[j], gap) for i in range(n_seg) for j in range(i + 2, n_seg)
        ):
            return _Layout(points, widths, np.array(headings), rects, float(total))
    raise ImpossibleWorld(
        f"no non-overlapping corridor layout in {params.max_attempts} attempts (seed {params.seed}); "
        f"raise segment_min_m or lower width_max_m"
    )


def _overlap(a: tuple[float, ...], b: tuple[float, ...], gap: float) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def _corridor_grid(layout: _Layout, params: HallwayParams) -> tuple[np.ndarray, tuple[float, float]]:
    """The corridor's free cells (H, W) bool and the grid origin; the grid leaves room for the walls."""
    res = params.resolution_m
    rects = np.array(layout.rects)
    pad = params.wall_thickness_m + 2 * res
    x0 = math.floor((rects[:, 0].min() - pad) / res) * res
    y0 = math.floor((rects[:, 1].min() - pad) / res) * res
    w = int(math.ceil((rects[:, 2].max() + pad - x0) / res))
    h = int(math.ceil((rects[:, 3].max() + pad - y0) / res))
    free = np.zeros((h, w), dtype=bool)
    for xmin, ymin, xmax, ymax in layout.rects:
        c0, c1 = round((xmin - x0) / res), round((xmax - x0) / res)
        r0, r1 = round((ymin - y0) / res), round((ymax - y0) / res)
        free[r0:r1, c0:c1] = True
    return free, (x0, y0)


def _wall_boxes(free: np.ndarray, origin: tuple[float, float], params: HallwayParams) -> tuple[Box, ...]:
    """Walls: the ring of cells within ``wall_thickness_m`` of the corridor, merged greedily into boxes."""
    res = params.resolution_m
    k = max(1, int(round(params.wall_thickness_m / res)))
    grown = free.copy()
    for axis in (0, 1):
        acc = grown.copy()
        for s in range(1, k + 1):
            acc |= _shift(grown, s, axis) | _shift(grown, -s, axis)
        grown = acc
    wall = grown & ~free
    # Greedy rectangle cover: horizontal runs per row, extended down over identical runs in following rows.
    used = np.zeros_like(wall)
    boxes = []
    hz = params.wall_height_m / 2
    width = wall.shape[1]
    for r in range(wall.shape[0]):
        for c0, c1 in _runs(wall[r] & ~used[r]):
            r1 = r + 1
            while r1 < wall.shape[0]:
                free_run = wall[r1] & ~used[r1]
                same = free_run[c0:c1].all() and (c0 == 0 or not free_run[c0 - 1]) and (c1 == width or not free_run[c1])
                if not same:
                    break
                r1 += 1
            used[r:r1, c0:c1] = True
            cx = origin[0] + (c0 + c1) / 2 * res
            cy = origin[1] + (r + r1) / 2 * res
            boxes.append(Box((cx, cy), ((c1 - c0) * res / 2, (r1 - r) * res / 2, hz)))
    return tuple(boxes)


def _runs(row: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool array as half-open (start, stop) pairs."""
    padded = np.concatenate(([False], row, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _shift(a: np.ndarray, s: int, axis: int) -> np.ndarray:
    """``a`` shifted by ``s`` cells along ``axis``, filling with False."""
    out = np.zeros_like(a)
    if axis == 0:
        if s > 0:
            out[s:] = a[:-s]
        else:
            out[:s] = a[-s:]
    elif s > 0:
        out[:, s:] = a[:, :-s]
    else:
        out[:, :s] = a[:, -s:]
    return out


def _dilate_disc(mask: np.ndarray, radius_cells: float) -> np.ndarray:
    """Cells whose centre lies within ``radius_cells`` of the centre of a True cell of ``mask``."""
    k = int(math.floor(radius_cells))
    out = mask.copy()
    h, w = mask.shape
    for di in range(-k, k + 1):
        for dj in range(-k, k + 1):
            if (di or dj) and di * di + dj * dj <= radius_cells * radius_cells:
                src = mask[max(0, -di): h - max(0, di), max(0, -dj): w - max(0, dj)]
                out[max(0, di): h - max(0, -di), max(0, dj): w - max(0, -dj)] |= src
    return out


def _cell(origin: tuple[float, float], res: float, x: float, y: float) -> tuple[int, int]:
    return int(math.floor((y - origin[1]) / res)), int(math.floor((x - origin[0]) / res))


def _start_goal(layout: _Layout) -> tuple[Pose2, tuple[float, float]]:
    d = _DIRS[int(layout.headings[0])]
    start = Pose2(float(layout.points[0, 0]), float(layout.points[0, 1]), math.atan2(d[1], d[0]))
    return start, (float(layout.points[-1, 0]), float(layout.points[-1, 1]))


def _draw_obstacle(
    params: HallwayParams, layout: _Layout, start: Pose2, goal: tuple[float, float], rng: np.random.Generator,
) -> Shape | None:
    """One obstacle at a random point along the centreline, random lateral offset, size and yaw; ``None`` when
    it would come within ``clear_radius_m`` of the start or the goal."""
    seg_len = np.abs(np.diff(layout.points, axis=0)).sum(axis=1)
    cum = np.concatenate(([0.0], np.cumsum(seg_len)))
    s = rng.uniform(0, layout.length_m)
    i = min(int(np.searchsorted(cum, s, side="right")) - 1, len(seg_len) - 1)
    d = _DIRS[int(layout.headings[i])]
    lateral = rng.uniform(-0.5, 0.5) * layout.widths[i]
    x, y = (layout.points[i] + d * (s - cum[i]) + np.array([-d[1], d[0]]) * lateral).tolist()
    height = float(rng.uniform(params.obstacle_height_min_m, params.obstacle_height_max_m))
    shape: Shape
    if rng.random() < params.cylinder_fraction:
        shape = Cylinder((x, y), float(rng.uniform(params.cylinder_radius_min_m, params.cylinder_radius_max_m)), height)
        reach = shape.radius_m
    else:
        sx, sy = rng.uniform(params.box_size_min_m, params.box_size_max_m, size=2).tolist()
        shape = Box((x, y), (sx / 2, sy / 2, height / 2), float(rng.uniform(0, math.pi)))
        reach = math.hypot(sx, sy) / 2
    near_start = math.hypot(x - start.x_m, y - start.y_m) < params.clear_radius_m + reach
    near_goal = math.hypot(x - goal[0], y - goal[1]) < params.clear_radius_m + reach
    return None if near_start or near_goal else shape


def _rasterize(
    shapes: Iterable[Shape], shape_hw: tuple[int, int], origin: tuple[float, float], res: float, inflate_m: float,
) -> np.ndarray:
    """(H, W) bool: cells whose centre lies within ``inflate_m`` of any shape (inside it when ``inflate_m`` is 0)."""
    h, w = shape_hw
    out = np.zeros((h, w), dtype=bool)
    for shape in shapes:
        cx, cy = shape.center_xy_m
        reach = (shape.radius_m if isinstance(shape, Cylinder) else math.hypot(*shape.half_size_m[:2])) + inflate_m
        c0 = max(0, int(math.floor((cx - reach - origin[0]) / res)))
        c1 = min(w, int(math.ceil((cx + reach - origin[0]) / res)) + 1)
        r0 = max(0, int(math.floor((cy - reach - origin[1]) / res)))
        r1 = min(h, int(math.ceil((cy + reach - origin[1]) / res)) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = origin[0] + (np.arange(c0, c1) + 0.5) * res - cx
        ys = origin[1] + (np.arange(r0, r1) + 0.5) * res - cy
        dx, dy = np.meshgrid(xs, ys)
        if isinstance(shape, Cylinder):
            hit = np.hypot(dx, dy) <= shape.radius_m + inflate_m
        else:
            c, s = math.cos(shape.yaw_rad), math.sin(shape.yaw_rad)
            ex = np.maximum(np.abs(c * dx + s * dy) - shape.half_size_m[0], 0.0)
            ey = np.maximum(np.abs(-s * dx + c * dy) - shape.half_size_m[1], 0.0)
            hit = np.hypot(ex, ey) <= inflate_m
        out[r0:r1, c0:c1] |= hit
    return out


def _route_exists(free: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> bool:
    """Whether ``goal`` is 4-connected to ``start`` through True cells of ``free`` (H, W).

    Flood fill by runs: reachability spreads along whole row runs, then whole column runs, until nothing
    changes. Each pass is a few vectorised operations, and a corridor needs about as many passes as its
    route has bends, so this is much faster than a cell-by-cell search in Python.
    """
    h, w = free.shape
    if not (0 <= start[0] < h and 0 <= start[1] < w and 0 <= goal[0] < h and 0 <= goal[1] < w):
        return False
    if not (free[start] and free[goal]):
        return False
    row_labels = _run_labels(free)
    col_labels = _run_labels(free.T).T
    reach = np.zeros_like(free)
    reach[start] = True
    count = 1
    while True:
        for labels in (row_labels, col_labels):
            hit = np.zeros(int(labels.max()) + 1, dtype=bool)
            hit[labels[reach]] = True
            hit[0] = False
            reach = hit[labels]
        if reach[goal]:
            return True
        new_count = int(reach.sum())
        if new_count == count:
            return False
        count = new_count


def _run_labels(free: np.ndarray) -> np.ndarray:
    """Label each maximal horizontal run of True cells with a distinct positive integer; 0 where False."""
    starts = free.copy()
    starts[:, 1:] &= ~free[:, :-1]
    labels = np.cumsum(starts.ravel()).reshape(free.shape)
    labels[~free] = 0
    return labels
