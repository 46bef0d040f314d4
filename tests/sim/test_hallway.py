"""Procedural hallways: deterministic per seed, within the asked sizes, passable (checked independently), and
impossible parameter sets reported at generation."""

from __future__ import annotations

import math
from collections import deque

import mujoco
import numpy as np
import pytest

from robots.description import DescriptionError
from sim.hallway import (
    Box,
    Cylinder,
    HallwayParams,
    ImpossibleWorld,
    World,
    _dilate_disc,
    _rasterize,
    generate_hallway,
    hallway_params_from_dict,
    passable,
    square_room,
)

RADIUS = 0.171
SEEDS = range(6)


@pytest.fixture(scope="module")
def worlds() -> dict[int, World]:
    return {seed: generate_hallway(HallwayParams(seed=seed), RADIUS) for seed in SEEDS}


def _fingerprint(world: World) -> tuple:
    return (world.walls, world.obstacles, world.start, world.goal_xy_m, world.grid.occupied.tobytes(), world.grid.origin_xy_m)


def test_same_seed_same_world_and_different_seed_different_world(worlds):
    again = generate_hallway(HallwayParams(seed=3), RADIUS)
    assert _fingerprint(again) == _fingerprint(worlds[3])
    assert len({_fingerprint(w) for w in worlds.values()}) == len(worlds)


def test_worlds_have_the_asked_length_turns_and_obstacles(worlds):
    for world in worlds.values():
        assert 20.0 <= world.length_m <= 40.0
        segments = np.diff(world.centerline_xy_m, axis=0)
        assert np.isclose(np.abs(segments).sum(), world.length_m)
        assert len(segments) >= 2  # at least one turn
        # every segment is axis-aligned and each turn is 90 degrees
        assert np.all((np.abs(segments) > 1e-9).sum(axis=1) == 1)
        assert all(abs(np.dot(a, b)) < 1e-9 for a, b in zip(segments[:-1], segments[1:]))
        assert len(world.obstacles) == round(0.6 * world.length_m)
        assert any(isinstance(o, Box) for o in world.obstacles) and any(isinstance(o, Cylinder) for o in world.obstacles)
        assert 4 <= len(world.walls)


def _run_length(line: np.ndarray, idx: int) -> int:
    lo = hi = idx
    while lo > 0 and line[lo - 1]:
        lo -= 1
    while hi < len(line) - 1 and line[hi + 1]:
        hi += 1
    return hi - lo + 1


def test_widths_vary_within_the_range(worlds):
    widths = []
    for world in worlds.values():
        grid = world.grid
        corridor = ~grid.occupied | _rasterize(world.obstacles, grid.occupied.shape, grid.origin_xy_m, grid.resolution_m, 0.0)
        for (x0, y0), (x1, y1) in zip(world.centerline_xy_m[:-1], world.centerline_xy_m[1:]):
            r, c = grid.cell_of((x0 + x1) / 2 + 1e-6, (y0 + y1) / 2 + 1e-6)
            across = corridor[:, c] if abs(y1 - y0) < 1e-9 else corridor[r, :]
            widths.append(_run_length(across, r if abs(y1 - y0) < 1e-9 else c) * grid.resolution_m)
    assert min(widths) >= 1.4 - 1e-6 and max(widths) <= 2.4 + 0.1 + 1e-6
    assert len({round(w, 2) for w in widths}) > 3


def _bfs(free: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> bool:
    """A plain breadth-first search, independent of the generator's run-based flood fill."""
    seen = np.zeros_like(free)
    queue = deque([start])
    seen[start] = True
    while queue:
        r, c = queue.popleft()
        if (r, c) == goal:
            return True
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < free.shape[0] and 0 <= nc < free.shape[1] and free[nr, nc] and not seen[nr, nc]:
                seen[nr, nc] = True
                queue.append((nr, nc))
    return False


def test_every_world_is_passable_for_the_robot(worlds):
    params = HallwayParams()
    clearance = RADIUS + params.clearance_margin_m
    for world in worlds.values():
        assert passable(world, clearance)
        grid = world.grid
        # Independent check: inflate walls and obstacles exactly (not from the grid) and search with a BFS.
        res = grid.resolution_m
        inflate = clearance + res / math.sqrt(2)
        blocked = _dilate_disc(grid.occupied & ~_rasterize(world.obstacles, grid.occupied.shape, grid.origin_xy_m, res, 0.0), inflate / res)
        blocked |= _rasterize(world.obstacles, grid.occupied.shape, grid.origin_xy_m, res, inflate)
        start = grid.cell_of(world.start.x_m, world.start.y_m)
        goal = grid.cell_of(*world.goal_xy_m)
        assert _bfs(~blocked, start, goal)
        # and a robot twice as wide could not be assumed to pass: the check is a real one
        assert not passable(world, 3.0)


def test_start_and_goal_areas_are_clear(worlds):
    params = HallwayParams()
    for world in worlds.values():
        for shape in world.obstacles:
            x, y = shape.center_xy_m
            for px, py in ((world.start.x_m, world.start.y_m), world.goal_xy_m):
                assert math.hypot(x - px, y - py) >= params.clear_radius_m


def test_walls_are_on_occupied_cells_and_close_the_corridor(worlds):
    for world in worlds.values():
        grid = world.grid
        walls = _rasterize(world.walls, grid.occupied.shape, grid.origin_xy_m, grid.resolution_m, 0.0)
        assert walls.any() and np.all(grid.occupied[walls])
        # The free corridor never touches the grid border: walls enclose it.
        free = ~grid.occupied
        assert not (free[0].any() or free[-1].any() or free[:, 0].any() or free[:, -1].any())


def test_world_mjcf_compiles_with_every_geom(worlds):
    world = worlds[0]
    model = mujoco.MjModel.from_xml_string(world.to_mjcf())
    names = [model.geom(i).name for i in range(model.ngeom)]
    assert sum(n.startswith("wall_") for n in names) == len(world.walls)
    assert sum(n.startswith("obstacle_") for n in names) == len(world.obstacles)
    assert all(model.geom_group[i] == 0 for i in range(model.ngeom))
    assert model.vis.quality.shadowsize == 0


def test_too_narrow_a_corridor_is_impossible():
    with pytest.raises(ImpossibleWorld, match=r"world\.width_min_m = 0\.3: corridors narrower than"):
        generate_hallway(HallwayParams(width_min_m=0.3, width_max_m=0.4), RADIUS)


def test_obstacles_filling_the_corridor_are_impossible():
    params = HallwayParams(
        obstacle_density_per_m=5.0, box_size_min_m=0.8, box_size_max_m=1.2, cylinder_fraction=0.0, max_attempts=5,
        length_min_m=20.0, length_max_m=20.0,
    )
    with pytest.raises(ImpossibleWorld, match="could not be placed in 5 draws without blocking every route"):
        generate_hallway(params, RADIUS)


def test_params_are_validated_naming_the_field():
    with pytest.raises(DescriptionError, match=r"^length_max_m = 10\.0: must be in \[20, 200\]$"):
        HallwayParams(length_max_m=10.0)
    with pytest.raises(DescriptionError, match=r"^world\.turns_max = 0: must be an integer in \[1, 20\]$"):
        hallway_params_from_dict({"turns_max": 0})
    with pytest.raises(DescriptionError, match=r"^world\.segment_min_m = 9: must be in \[0\.5, 5\]$"):
        hallway_params_from_dict({"segment_min_m": 9})
    with pytest.raises(DescriptionError, match=r"^world\.lenght_m = 30: unknown field"):
        hallway_params_from_dict({"lenght_m": 30})
    with pytest.raises(DescriptionError, match=r"robot_radius_m = -1\.0"):
        generate_hallway(HallwayParams(), -1.0)


def test_square_room_has_known_walls():
    room = square_room(4.0)
    inner = [abs(w.center_xy_m[0]) - w.half_size_m[0] if w.half_size_m[1] > w.half_size_m[0] else abs(w.center_xy_m[1]) - w.half_size_m[1] for w in room.walls]
    assert inner == pytest.approx([2.0] * 4)
    assert passable(room, 0.2) and not passable(room, 2.5)
